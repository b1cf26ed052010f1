"""The force-field data module: a reader chosen by the file, a fixed held-out set, nested training subsets.

**Splits.** The held-out set is fixed by :func:`equivrepro.data.heldout_split` (by molecule for SPICE
HDF5, so no molecule is in both sets) or is a separate test file (MACE-OFF); training subsets of any size
are nested (:func:`equivrepro.data.nested_subset`): the 500-conformer subset lies inside the 5k one.

**Statistics.** :meth:`ForceFieldDataModule.statistics` gives the normalisers of the training split
(energy mean / std in eV after reference subtraction, per-component force RMS in eV/Å) from the reader's
cached index: a 950k-conformer file is walked once, at its first indexing, never again for them.

**Embedded data.** ``generate`` (an :class:`equivrepro.data.EmbeddedFile`, ``configs/data/spice_embedded.yaml``)
makes the embedded file only at its own default location; any other missing ``data.path`` is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from collections.abc import Mapping as MappingABC
from pathlib import Path
from typing import Any

import numpy as np
import torch

from equivrepro.data import (
    MIN_INTERATOMIC_DISTANCE,
    DataConfigError,
    DataError,
    DataModule,
    EmbeddedFile,
    SubsetDataset,
    check_choice,
    check_number,
    check_size,
    ensure_data_file,
    heldout_split,
    nested_subset,
    pad_collate,
)
from equivrepro.task import Batch
from tasks.forcefield.data.extxyz import ExtXYZDataset
from tasks.forcefield.data.formats import FORMATS, resolve_format
from tasks.forcefield.data.references import REFERENCE_CHOICES
from tasks.forcefield.data.spice import SpiceHDF5Dataset
from tasks.forcefield.units import SPICE_ELEMENTS

log = logging.getLogger("tasks.forcefield.data")

__all__ = ["ForceFieldDataModule"]

_MAKE_HINT = ("The embedded data is made by `make data` (`python -m tasks.forcefield.generate --out data/spice_embedded.h5 --seed 0`); "
              "real data: data=spice data.path=<SPICE .hdf5> or data=maceoff (MACE-OFF extended XYZ).")


def _check_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise DataConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _check_path(value: Any, key: str, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise DataConfigError(f"{key} must be a file path{' or null' if allow_none else ''}, got {value!r}")
    return str(value)


class ForceFieldDataModule(DataModule):
    """SPICE HDF5 or extended-XYZ conformers with a fixed held-out set and nested training subsets.

    Args:
        path: the data file. ``format='auto'`` (default) picks the reader from its first bytes (HDF5 →
            SPICE reader, extended-XYZ text → extxyz reader); ``'spice_hdf5'`` / ``'extxyz'`` insist (a file
            that disagrees is an error naming both).
        train_size: conformers in the training subset (count, fraction ≤ 1, or ``None`` for all).
        heldout_size: held-out size — molecules (``split_by='molecule'``) or conformers — as a count or a
            fraction; with ``test_path`` the held-out set is that file, optionally capped to this many
            conformers (``None``: all of it).
        seed: seeds the held-out split and the subset permutation (keep it fixed across training seeds
            so replicates see the same data).
        test_path: a separate held-out file in the same format (MACE-OFF's ``test_large_neut_all.xyz``).
        max_atoms: drop conformers with more atoms (counted in ``describe()['skipped']``).
        split_by: ``'molecule'`` (HDF5 groups never straddle the split; an XYZ frame is its own molecule)
            or ``'conformer'``.
        elements: the model's element table; records with other elements are an error or skipped
            (``unknown_elements``).
        element_references: see :func:`tasks.forcefield.data.references.resolve_references`.
        bad_records / unknown_elements: ``'error'`` (DataError naming file and record) or ``'skip'``.
        neutral_only: drop charged molecules (SPICE ``smiles`` formal charges / XYZ ``total_charge``).
        accept_fallback_labels: keep conformers the embedded generator labelled with MMFF94.
        min_distance: shortest plausible interatomic distance [Å] (``0`` or ``None``: no check).
        generate: the embedded file (``path`` + generator, built by Hydra from ``configs/data/spice_embedded.yaml``),
            generated when ``path`` *is* its location and missing; ``None`` → a missing file is an error.
    """

    def __init__(self, path: str, format: str = "auto", train_size: int | float | None = None, heldout_size: int | float | None = 0.1,
                 seed: int = 0, test_path: str | None = None, max_atoms: int | None = None, split_by: str = "molecule",
                 elements: Sequence[int] = SPICE_ELEMENTS, element_references: Any = "auto", bad_records: str = "error",
                 unknown_elements: str = "error", neutral_only: bool = False, accept_fallback_labels: bool = False,
                 cache_index: bool = True, min_distance: float | None = MIN_INTERATOMIC_DISTANCE, generate: EmbeddedFile | None = None):
        self.path = _check_path(path, "data.path")
        self.format = check_choice(format, "data.format", FORMATS)
        self.test_path = _check_path(test_path, "data.test_path", allow_none=True)
        self.train_size = check_size(train_size, "data.train_size", allow_none=True, allow_whole=True)
        self.heldout_size = check_size(heldout_size, "data.heldout_size", allow_none=True)
        if self.heldout_size is None and self.test_path is None:
            raise DataConfigError("data.heldout_size must be an int ≥ 1 or a fraction in (0, 1) when there is no data.test_path, got None")
        self.seed = check_number(seed, "data.seed", integer=True)
        self.max_atoms = check_number(max_atoms, "data.max_atoms", 1, integer=True, allow_none=True)
        self.split_by = check_choice(split_by, "data.split_by", ("molecule", "conformer"))
        if isinstance(elements, (str, bytes)) or not elements or not all(isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 118
                                                                         for z in elements):
            raise DataConfigError(f"data.elements must be a non-empty list of atomic numbers (1–118), got {elements!r}")
        if not (isinstance(element_references, MappingABC) or element_references in REFERENCE_CHOICES):
            raise DataConfigError(f"data.element_references must be one of {', '.join(REFERENCE_CHOICES)} or a {{Z: eV}} mapping, "
                                  f"got {element_references!r}")
        check_choice(bad_records, "data.bad_records", ("error", "skip"))
        check_choice(unknown_elements, "data.unknown_elements", ("error", "skip"))
        check_number(min_distance, "data.min_distance", 0.0, allow_none=True)
        self.reader_kwargs = dict(elements=tuple(elements), element_references=element_references, bad_records=bad_records,
                                  unknown_elements=unknown_elements, neutral_only=_check_bool(neutral_only, "data.neutral_only"),
                                  cache_index=_check_bool(cache_index, "data.cache_index"), min_distance=min_distance)
        self.accept_fallback_labels = _check_bool(accept_fallback_labels, "data.accept_fallback_labels")
        if generate is not None and not (callable(generate) and isinstance(getattr(generate, "path", None), str)):
            raise DataConfigError(f"data.generate must be null or an embedded-file node with a _target_ and a path "
                                  f"(see configs/data/spice_embedded.yaml), got {generate!r}")
        self.generate = generate
        self._ready = False

    def _reader(self, path: str, fmt: str) -> SpiceHDF5Dataset | ExtXYZDataset:
        if fmt == "spice_hdf5":
            return SpiceHDF5Dataset(path, accept_fallback_labels=self.accept_fallback_labels, **self.reader_kwargs)
        return ExtXYZDataset(path, **self.reader_kwargs)

    def _formats(self) -> tuple[str, str | None]:
        """(format of ``path``, format of ``test_path``), checked against each other and ``data.format``."""
        ensure_data_file(self.path, self.generate, "data.path", _MAKE_HINT)
        fmt = resolve_format(self.path, self.format, "data.path")
        if not self.test_path:
            return fmt, None
        if not Path(self.test_path).exists():
            hint = (" data.path is a SPICE HDF5 file: for SPICE use data=spice data.path=…, which holds out molecules of the same file"
                    if fmt == "spice_hdf5" else "")
            raise DataError(f"data.test_path={self.test_path}: no such file.{hint}")
        test_fmt = resolve_format(self.test_path, self.format, "data.test_path")
        if test_fmt != fmt:
            raise DataError(f"data.path={self.path} is {fmt} but data.test_path={self.test_path} is {test_fmt}: both must be one format "
                            "(for a SPICE HDF5 file use data=spice, which needs no test file)")
        return fmt, test_fmt

    def _usable(self, ds) -> np.ndarray:
        keep = np.ones(len(ds), dtype=bool)
        if self.max_atoms is not None:
            keep &= ds.natoms <= int(self.max_atoms)
        return keep

    def setup(self) -> None:
        if self._ready:
            return
        fmt, test_fmt = self._formats()
        self.resolved_format = fmt
        base = self._reader(self.path, fmt)
        keep = self._usable(base)
        self.skipped = dict(base.skipped)
        if (~keep).any():
            self.skipped["max_atoms"] = int((~keep).sum())
            if not keep.any():
                raise DataError(f"no usable records in {self.path}: all {len(keep)} have more than data.max_atoms={self.max_atoms} atoms")
        if self.test_path:
            test = self._reader(self.test_path, test_fmt)
            tkeep = self._usable(test)
            self.test_skipped = dict(test.skipped) | ({"max_atoms": int((~tkeep).sum())} if (~tkeep).any() else {})
            pool = torch.from_numpy(np.flatnonzero(keep))
            held_all = torch.from_numpy(np.flatnonzero(tkeep))
            held = held_all if self.heldout_size is None else nested_subset(held_all, self.heldout_size, self.seed + 1, "data.heldout_size")
            held_base = test
        else:
            self.test_skipped = {}
            records = np.flatnonzero(keep)
            if self.split_by == "molecule":
                mol_ids, inverse = np.unique(base.molecule[records], return_inverse=True)
                unit = "molecules" if fmt == "spice_hdf5" else "frames"
                _, held_mols = heldout_split(len(mol_ids), self.heldout_size, self.seed, "data.heldout_size", unit)
                is_held = np.isin(inverse, held_mols.numpy())
                pool, held = torch.from_numpy(records[~is_held]), torch.from_numpy(records[is_held])
            else:
                train_pos, held_pos = heldout_split(len(records), self.heldout_size, self.seed, "data.heldout_size", "conformers")
                pool, held = torch.from_numpy(records[train_pos.numpy()]), torch.from_numpy(records[held_pos.numpy()])
            held_base = base
        train = nested_subset(pool, self.train_size, self.seed, "data.train_size")
        self.base, self.heldout_base = base, held_base
        self.train_dataset = SubsetDataset(base, train)
        self.heldout_dataset = SubsetDataset(held_base, held)
        self._ready = True

    def statistics(self) -> dict[str, float]:
        """Normalisers of the training split, from the cached index (no pass over the file).

        ``energy_mean`` / ``energy_std`` [eV]: mean and (population) standard deviation of the reference-
        subtracted energies; ``force_rms`` [eV/Å]: root mean square of all force components (the
        definitions of the embedded file's ``energy_mean_eV`` / ``energy_std_eV`` / ``force_rms_eV_per_A``).
        """
        if not self._ready:
            raise RuntimeError("call setup() before statistics()")
        idx = self.train_dataset.indices.numpy()
        energy = self.base.energy[idx]
        components = 3 * int(self.base.natoms[idx].sum())
        return {
            "energy_mean": float(energy.mean()),
            "energy_std": float(energy.std()),
            "force_rms": float(np.sqrt(self.base.force_sq[idx].sum() / max(components, 1))),
        }

    def collate(self, items: Sequence[Mapping[str, torch.Tensor]]) -> Batch:
        return pad_collate(items, ragged=("pos", "z", "forces"))

    def describe(self) -> dict[str, Any]:
        out = {
            "train_size": len(self.train_dataset),
            "heldout_size": len(self.heldout_dataset),
            "format": self.resolved_format,
            "path": self.path,
            "records": len(self.base),
            "skipped": self.skipped,
            "element_references": self.base.references_source,
            "units": "pos Å; energy eV (element references subtracted); forces eV/Å",
        }
        if self.test_path:
            out["test_path"] = self.test_path
            out["test_records"] = len(self.heldout_base)
            out["test_skipped"] = self.test_skipped
        if isinstance(self.base, SpiceHDF5Dataset):
            out["molecules"] = len(self.base.group_names)
        return out
