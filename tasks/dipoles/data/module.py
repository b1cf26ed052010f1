"""The dipole data module: a fixed held-out set of molecules, nested training subsets, padded batches.

Batches (:func:`equivrepro.data.pad_collate`): ``pos (B, N, 3)`` Å, ``z (B, N)`` long (0 on padding),
``mask (B, N)`` bool, ``dipole (B, 3)`` Debye.

**Embedded data.** When ``path`` is the embedded location (``embedded_path``, by default
``${paths.data_dir}/dipoles_embedded.h5``) and the file does not exist, it is generated there with the
``generate:`` settings (:class:`tasks.dipoles.generate.GeneratorConfig`, under a minute on one core). Any
other path that does not exist is an error: a typo in ``data.path`` never silently produces data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from equivrepro.data import DataError, DataModule, SubsetDataset, heldout_split, nested_subset, pad_collate
from equivrepro.task import Batch
from tasks.dipoles.data.reader import DipoleHDF5Dataset

log = logging.getLogger("tasks.dipoles.data")

__all__ = ["DipoleDataModule"]


class DipoleDataModule(DataModule):
    """Conformers of a dipole HDF5 file, split by molecule.

    Args:
        path: the data file.
        train_size: conformers in the training subset (count, fraction ≤ 1, or ``None`` for the whole pool);
            subsets of one ``seed`` are nested (:func:`equivrepro.data.nested_subset`).
        heldout_size: held-out molecules (all their conformers), a count or a fraction
            (:func:`equivrepro.data.heldout_split`); it never depends on ``train_size``.
        seed: seeds the split and the subsets (keep it fixed across training seeds).
        max_atoms: drop conformers with more atoms (counted in ``describe()['skipped']``).
        embedded_path: the one location that is generated when missing (``None``: never generate).
        generate: :class:`~tasks.dipoles.generate.GeneratorConfig` settings for that generation.
        min_distance, max_neighbor_distance, max_dipole: plausibility checks of the reader (Å, Å, D).
    """

    def __init__(self, path: str, train_size: int | float | None = None, heldout_size: int | float = 0.1, seed: int = 0,
                 max_atoms: int | None = None, embedded_path: str | None = None, generate: Mapping[str, Any] | None = None,
                 min_distance: float = 0.5, max_neighbor_distance: float = 4.0, max_dipole: float = 100.0):
        self.path = str(path)
        self.train_size, self.heldout_size, self.seed, self.max_atoms = train_size, heldout_size, int(seed), max_atoms
        self.embedded_path = str(embedded_path) if embedded_path else None
        self.generate = dict(generate) if generate else None
        self.reader_kwargs = dict(min_distance=min_distance, max_neighbor_distance=max_neighbor_distance, max_dipole=max_dipole)
        self._ready = False

    def _is_embedded(self) -> bool:
        return self.embedded_path is not None and Path(self.path).resolve() == Path(self.embedded_path).resolve()

    def _ensure_file(self) -> None:
        if Path(self.path).exists():
            return
        if not self._is_embedded() or self.generate is None:
            raise DataError(f"{self.path}: no such file (data.path). Only the embedded location {self.embedded_path} is generated "
                            f"when missing; make a file with `python -m tasks.dipoles.generate --out {self.path} --seed 0`")
        from tasks.dipoles.generate import GeneratorConfig, generate

        log.warning("%s does not exist: generating the embedded dipole data (%s)", self.path, self.generate)
        s = generate(self.path, GeneratorConfig(**self.generate))
        log.warning("generated %s: %d molecules, %d conformers in %.0f s", self.path, s["molecules"], s["conformers"], s["seconds"])

    def setup(self) -> None:
        if self._ready:
            return
        self._ensure_file()
        base = DipoleHDF5Dataset(self.path, **self.reader_kwargs)
        keep = np.ones(len(base), dtype=bool)
        if self.max_atoms is not None:
            keep &= base.natoms <= int(self.max_atoms)
        self.skipped = {"max_atoms": int((~keep).sum())} if (~keep).any() else {}
        records = np.flatnonzero(keep)
        if records.size == 0:
            raise DataError(f"{self.path}: no conformer has ≤ max_atoms={self.max_atoms} atoms")
        mol_ids, inverse = np.unique(base.molecule[records], return_inverse=True)
        _, held_mols = heldout_split(len(mol_ids), self.heldout_size, self.seed)
        is_held = np.isin(inverse, held_mols.numpy())
        pool, held = torch.from_numpy(records[~is_held]), torch.from_numpy(records[is_held])
        self.base = base
        self.train_dataset = SubsetDataset(base, nested_subset(pool, self.train_size, self.seed))
        self.heldout_dataset = SubsetDataset(base, held)
        self._ready = True

    def collate(self, items: Sequence[Mapping[str, torch.Tensor]]) -> Batch:
        return pad_collate(items, ragged=("pos", "z"))

    def statistics(self) -> dict[str, float]:
        """``dipole_rms`` (D, RMS of one Cartesian component) and ``dipole_norm_mean`` (D) of the training subset."""
        d = self.base.dipoles[self.train_dataset.indices].double()
        return {"dipole_rms": float(d.pow(2).mean().sqrt()), "dipole_norm_mean": float(d.norm(dim=1).mean())}

    def describe(self) -> dict[str, Any]:
        train_mols = np.unique(self.base.molecule[self.train_dataset.indices.numpy()])
        held_mols = np.unique(self.base.molecule[self.heldout_dataset.indices.numpy()])
        return {
            "train_size": len(self.train_dataset),
            "heldout_size": len(self.heldout_dataset),
            "train_molecules": int(train_mols.size),
            "heldout_molecules": int(held_mols.size),
            "path": self.path,
            "records": len(self.base),
            "molecules": len(self.base.group_names),
            "skipped": self.skipped,
            "level_of_theory": self.base.attrs.get("level_of_theory", "unknown"),
            "units": "pos Å; dipole Debye",
        }
