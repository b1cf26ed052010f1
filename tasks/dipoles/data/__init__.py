"""Dipole data: the HDF5 reader (:mod:`.reader`) and the data module (:mod:`.module`)."""

from tasks.dipoles.data.module import DipoleDataModule
from tasks.dipoles.data.reader import DipoleHDF5Dataset

__all__ = ["DipoleDataModule", "DipoleHDF5Dataset"]
