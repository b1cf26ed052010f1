"""The voxel data module: GEOM-drugs-format conformers with a fixed held-out set and nested training subsets.

**Splits and subsets.** The held-out set is either a separate file (``heldout_path``; MiDi's
``val_data.pickle``) or a fixed fraction/count of *molecules* (:func:`equivrepro.data.heldout_split`;
all conformers of a held-out molecule are held out). Training subsets for the 100/50/25/10/1 % runs are
nested (:func:`equivrepro.data.nested_subset`) and drawn by ``subset_by``: ``'conformer'`` (default:
a fraction of VoxMol's dataset, which is a list of conformers) or ``'molecule'`` (whole molecules).
Optional filters ``max_atoms`` (VoxMol intended 80 but its filter is a no-op upstream, so the default is
off) and ``max_radius`` (Å, keep conformers that fit a box) drop conformers with a count.

**Embedded data.** ``generate`` (an :class:`equivrepro.data.EmbeddedFile`, built from
``configs/data/geom_embedded.yaml``) makes the embedded store only at its own default location; any other
missing ``data.path`` is an error. This module never imports :mod:`tasks.voxels.generate` (which depends
on :mod:`tasks.voxels.data.convert`): the generator comes in through the config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
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
from tasks.voxels.data.convert import convert_to_store
from tasks.voxels.data.elements import GEOM_DRUGS_ELEMENTS, atomic_number
from tasks.voxels.data.store import VoxelStore, store_path_for

log = logging.getLogger("tasks.voxels.data")

__all__ = ["VoxelDataModule"]

_MAKE_HINT = "The embedded data is made by `make data` (`python -m tasks.voxels.generate --out data/geom_embedded.h5 --seed 0`)."


def _check_path(value: Any, key: str, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise DataConfigError(f"{key} must be a file path{' or null' if allow_none else ''}, got {value!r}")
    return str(value)


def _check_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise DataConfigError(f"{key} must be true or false, got {value!r}")
    return value


class VoxelDataModule(DataModule):
    """GEOM-drugs-format conformers with a fixed held-out set and nested training subsets.

    Args:
        path: training data — a MiDi pickle, an SDF file, or a converted ``.h5`` store (relative paths are
            resolved against ``root``).
        heldout_path: a separate held-out file (MiDi ``val_data.pickle``); ``None`` → split ``path``.
        root: directory that relative ``path`` / ``heldout_path`` are resolved against (one setting for
            the GEOM-drugs location).
        store_dir: where converted stores are written (default: next to the raw file).
        train_size: training conformers (``subset_by='conformer'``) or molecules (``'molecule'``): a count,
            a fraction ≤ 1 (0.5 / 0.25 / 0.1 / 0.01 for the paper's runs) or ``None`` for all. Nested.
        heldout_size: without ``heldout_path``, the held-out molecules (count or fraction); with it, an
            optional cap on the held-out conformers (``None``: all).
        subset_by: ``'conformer'`` or ``'molecule'``; seed: split and subset seed (keep it fixed).
        elements: channel order; molecules with other elements are dropped (counted).
        max_conformers: conformers kept per molecule (VoxMol: 5).
        sdf_group_by: ``'name'`` or ``'record'`` (see :mod:`tasks.voxels.data.sdf`); bad_records: ``'error'`` | ``'skip'``.
        max_atoms, max_radius: optional conformer filters (atoms incl. H; Å from the centroid); counted.
        stream_pickle: stream the pickle while converting (see :mod:`tasks.voxels.data.midi_pickle`).
        min_distance: shortest plausible interatomic distance [Å] checked at conversion (``0``: off).
        generate: the embedded store (``path`` + generator, built by Hydra); generated when ``path`` *is*
            its location and missing; ``None`` → a missing file is an error.
    """

    def __init__(self, path: str, heldout_path: str | None = None, root: str | None = None, store_dir: str | None = None,
                 train_size: int | float | None = None, heldout_size: int | float | None = 0.05, subset_by: str = "conformer",
                 seed: int = 0, elements: Sequence[str] = GEOM_DRUGS_ELEMENTS, max_conformers: int = 5, sdf_group_by: str = "name",
                 bad_records: str = "error", max_atoms: int | None = None, max_radius: float | None = None,
                 stream_pickle: bool = True, min_distance: float = MIN_INTERATOMIC_DISTANCE, generate: EmbeddedFile | None = None):
        path = _check_path(path, "data.path")
        heldout_path = _check_path(heldout_path, "data.heldout_path", allow_none=True)
        self.root = _check_path(root, "data.root", allow_none=True)
        self.store_dir = _check_path(store_dir, "data.store_dir", allow_none=True)
        self.train_size = check_size(train_size, "data.train_size", allow_none=True, allow_whole=True)
        self.heldout_size = check_size(heldout_size, "data.heldout_size", allow_none=True)
        if self.heldout_size is None and heldout_path is None:
            raise DataConfigError("data.heldout_size must be an int ≥ 1 or a fraction in (0, 1) when there is no data.heldout_path, "
                                  "got None")
        self.subset_by = check_choice(subset_by, "data.subset_by", ("conformer", "molecule"))
        self.seed = check_number(seed, "data.seed", integer=True)
        if isinstance(elements, str) or not elements or not all(isinstance(e, str) for e in elements):
            raise DataConfigError(f"data.elements must be a non-empty list of element symbols, got {elements!r}")
        for sym in elements:
            try:
                atomic_number(sym)
            except ValueError:
                raise DataConfigError(f"data.elements has an unknown element symbol {sym!r}") from None
        self.elements = tuple(elements)
        self.convert_kwargs = dict(
            elements=self.elements, max_conformers=check_number(max_conformers, "data.max_conformers", 1, integer=True),
            sdf_group_by=check_choice(sdf_group_by, "data.sdf_group_by", ("name", "record")),
            bad_records=check_choice(bad_records, "data.bad_records", ("error", "skip")),
            stream_pickle=_check_bool(stream_pickle, "data.stream_pickle"),
            min_distance=check_number(min_distance, "data.min_distance", 0.0))
        self.max_atoms = check_number(max_atoms, "data.max_atoms", 1, integer=True, allow_none=True)
        self.max_radius = check_number(max_radius, "data.max_radius", 0.0, strict=True, allow_none=True)
        if generate is not None and not (callable(generate) and isinstance(getattr(generate, "path", None), str)):
            raise DataConfigError(f"data.generate must be null or an embedded-file node with a _target_ and a path "
                                  f"(see configs/data/geom_embedded.yaml), got {generate!r}")
        self.generate = generate
        resolve = lambda p: None if p is None else str(Path(self.root) / p if self.root and not os.path.isabs(p) else p)  # noqa: E731
        self.path, self.heldout_path = resolve(path), resolve(heldout_path)
        self._ready = False

    @property
    def n_channels(self) -> int:
        return len(self.elements)

    def _check_root(self) -> None:
        if self.root is None:
            return
        root = Path(self.root).expanduser()
        if root.is_file():
            raise DataError(f"data.root={self.root} is a file, not a directory: set data.path={self.root} "
                            "(and data.root=null), or data.root=<the directory holding it>")
        if not root.is_dir():
            raise DataError(f"data.root={self.root}: no such directory (it should hold {Path(self.path).name}"
                            f"{' and ' + Path(self.heldout_path).name if self.heldout_path else ''})")

    def open_store(self, path: str, key: str = "data.path") -> VoxelStore:
        """The store of ``path``: opened directly (``.h5``) or converted once from the raw file."""
        if not Path(path).exists():
            raise DataError(f"{key}={path}: no such file.{' ' + _MAKE_HINT if path.endswith('.h5') else ''}")
        if path.endswith(".h5"):
            store = VoxelStore(path)
        else:
            settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.convert_kwargs.items() if k != "stream_pickle"}
            target = store_path_for(path, settings, self.store_dir)
            if not target.exists():
                log.warning("converting %s into the voxel store %s (once)", path, target)
                convert_to_store(path, target, **self.convert_kwargs)
            store = VoxelStore(target)
        if store.channels != self.elements:
            raise DataError(f"{store.path}: store channels {store.channels} differ from data.elements {self.elements}; "
                            "convert the raw file with these elements (point data.path at the .pickle/.sdf)")
        return store

    def _usable(self, store: VoxelStore, skipped: dict[str, int]) -> np.ndarray:
        keep = np.ones(len(store), dtype=bool)
        if self.max_atoms is not None:
            bad = store.n_atoms > int(self.max_atoms)
            skipped["max_atoms"] = int(bad.sum())
            keep &= ~bad
        if self.max_radius is not None:
            bad = store.radius > float(self.max_radius)
            skipped["max_radius"] = int((bad & keep).sum())
            keep &= ~bad
        if not keep.any():
            raise DataError(f"no usable records in {store.path}: the filters dropped all {len(keep)} conformers ({skipped})")
        return keep

    def setup(self) -> None:
        if self._ready:
            return
        self._check_root()
        ensure_data_file(self.path, self.generate, "data.path", _MAKE_HINT if self.path.endswith(".h5") else "")
        base = self.open_store(self.path)
        self.skipped: dict[str, int] = {}
        records = np.flatnonzero(self._usable(base, self.skipped))
        if self.heldout_path:
            held_base = self.open_store(self.heldout_path, "data.heldout_path")
            self.heldout_skipped: dict[str, int] = {}
            held_all = torch.from_numpy(np.flatnonzero(self._usable(held_base, self.heldout_skipped)))
            held = held_all if self.heldout_size is None else nested_subset(held_all, self.heldout_size, self.seed + 1, "data.heldout_size")
            pool = records
        else:
            self.heldout_skipped = {}
            mol_ids, inverse = np.unique(base.molecule_id[records], return_inverse=True)
            _, held_mols = heldout_split(len(mol_ids), self.heldout_size, self.seed, "data.heldout_size", "molecules")
            is_held = np.isin(inverse, held_mols.numpy())
            pool, held = records[~is_held], torch.from_numpy(records[is_held])
            held_base = base
        if self.subset_by == "conformer":
            train = nested_subset(torch.from_numpy(pool), self.train_size, self.seed, "data.train_size")
        else:
            mols = np.unique(base.molecule_id[pool])
            chosen = nested_subset(torch.from_numpy(mols), self.train_size, self.seed, "data.train_size").numpy()
            train = torch.from_numpy(pool[np.isin(base.molecule_id[pool], chosen)])
        self.base, self.heldout_base = base, held_base
        self.train_dataset = SubsetDataset(base, train)
        self.heldout_dataset = SubsetDataset(held_base, held)
        self._ready = True

    def collate(self, items: Sequence[Mapping[str, torch.Tensor]]) -> Batch:
        """``coords (B, N, 3)`` Å, ``elements (B, N)`` long, ``mask (B, N)`` bool (zero padding)."""
        return pad_collate(items, ragged=("coords", "elements"))

    def describe(self) -> dict[str, Any]:
        counts = self.base.attrs.get("counts", {})
        out = {
            "train_size": len(self.train_dataset),
            "heldout_size": len(self.heldout_dataset),
            "path": self.path,
            "store": self.base.path,
            "conformers": len(self.base),
            "molecules": self.base.n_molecules,
            "channels": list(self.elements),
            "subset_by": self.subset_by,
            "dropped_molecules": counts.get("dropped_molecules", 0) if isinstance(counts, dict) else None,
            "dropped_by_element": counts.get("dropped_by_element", {}) if isinstance(counts, dict) else None,
            "conversion_skipped": counts.get("skipped", {}) if isinstance(counts, dict) else None,
            "skipped": self.skipped,
            "units": "coords Å, centred at the mean atom position; elements = channel index",
        }
        if self.heldout_path:
            out["heldout_path"] = self.heldout_path
            out["heldout_store"] = self.heldout_base.path
            out["heldout_skipped"] = self.heldout_skipped
        return out
