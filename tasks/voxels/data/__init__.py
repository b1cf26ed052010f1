"""GEOM-drugs conformers for voxel denoising: raw readers, the indexed HDF5 store, the data module.

Items are ``{"coords": (N, 3) float32 Å, centred at the mean atom position, "elements": (N,) long channel
index}``; batches (:meth:`VoxelDataModule.collate`) add ``mask (B, N)``.

One concept per module:

* :mod:`.elements` — the element channels (GEOM-drugs: C, H, O, N, F, S, Cl, Br);
* :mod:`.conformers` — atoms and coordinates of RDKit conformers and the checks every raw conformer
  passes (finite, not flat/2-D, no two atoms closer than 0.6 Å);
* :mod:`.midi_pickle` — MiDi's GEOM pickles, read by a streaming, class-restricted unpickler;
* :mod:`.sdf` — SDF files;
* :mod:`.store` — the indexed HDF5 store (writer and reader);
* :mod:`.convert` — raw file → store, once (element filter, conformer limit, counts);
* :mod:`.module` — :class:`VoxelDataModule` (splits, subsets, filters, embedded data).

A path ending in ``.h5`` is read as a store directly (the embedded data, made by
:mod:`tasks.voxels.generate`, which depends on :mod:`.convert`; nothing here imports the generator).
Bad input raises :class:`~equivrepro.data.DataError` naming the file and the record; bad settings raise
:class:`~equivrepro.data.DataConfigError` naming the key at construction.
"""

from tasks.voxels.data.convert import convert_to_store
from tasks.voxels.data.elements import GEOM_DRUGS_ELEMENTS
from tasks.voxels.data.midi_pickle import StreamingUnpickler, read_midi_pickle
from tasks.voxels.data.module import VoxelDataModule
from tasks.voxels.data.sdf import read_sdf
from tasks.voxels.data.store import STORE_FORMAT, StoreWriter, VoxelStore, store_path_for

__all__ = [
    "GEOM_DRUGS_ELEMENTS",
    "STORE_FORMAT",
    "StoreWriter",
    "StreamingUnpickler",
    "VoxelStore",
    "VoxelDataModule",
    "convert_to_store",
    "read_midi_pickle",
    "read_sdf",
    "store_path_for",
]
