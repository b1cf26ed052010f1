"""What the two force-field readers share: the validated one-pass index, its cache, and the record checks.

A reader walks its file once at construction — one HDF5 group / one XYZ frame at a time — validating every
record, and keeps only an index: per record the atom count, the molecule id, the reference-subtracted
energy [eV] and the sum of squared force components [eV²/Å²] (the last two give
:meth:`~tasks.forcefield.data.module.ForceFieldDataModule.statistics` without a second walk), plus the
reader's own locators (group + conformer, or byte offset). The index is cached next to the file
(``<file>.index-<key>.npz``, keyed by the file's path, size, mtime and the validation settings; under
``$EQUIVREPRO_INDEX_CACHE`` or ``~/.cache/equivrepro/index`` if the data directory is read-only).

**Checks on every record** (:class:`~equivrepro.data.DataError` naming the file and the record):

* elements outside the model's table (``unknown_elements``: error or skip), elements without a reference
  energy (always an error);
* non-finite energy, forces or positions (``bad_records``: error or skip);
* physical plausibility: the shortest interatomic distance of a conformer must be at least
  ``min_distance`` Å (default :data:`~equivrepro.data.MIN_INTERATOMIC_DISTANCE` = 0.6 Å; H–H in H₂ is
  0.74 Å). A conformer below it is an error (or skipped with ``bad_records='skip'``); if more than half of
  a file's conformers are below it, that is an error even when skipping — the file's unit is wrong (e.g.
  Å stored where SPICE's format says bohr).

A file with no records (no groups, an empty XYZ) or none left after skipping is an error saying so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from equivrepro.atomic import atomic_write
from equivrepro.data import MIN_INTERATOMIC_DISTANCE, DataError, check_choice, check_number
from tasks.forcefield.data.references import resolve_references

log = logging.getLogger("tasks.forcefield.data")

__all__ = ["IndexedReader", "INDEX_VERSION"]

INDEX_VERSION = 3


def _cache_path(path: Path, settings: dict) -> Path:
    """``<file>.index-<key>.npz`` next to the data, or under ``$EQUIVREPRO_INDEX_CACHE`` (default
    ``~/.cache/equivrepro/index``) when the data directory is read-only (a shared dataset)."""
    st = path.stat()
    key = json.dumps({"v": INDEX_VERSION, "path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns, **settings},
                     sort_keys=True, default=str)
    name = f"{path.name}.index-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if os.access(path.parent, os.W_OK):
        return path.with_name(name)
    cache_dir = Path(os.environ.get("EQUIVREPRO_INDEX_CACHE", Path.home() / ".cache" / "equivrepro" / "index"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir / name


def _load_cache(path: Path) -> dict[str, Any] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        out["skipped"] = json.loads(str(out["skipped"]))
        return out
    except (OSError, ValueError, KeyError):
        return None


def _save_cache(path: Path, arrays: dict[str, Any]) -> None:
    payload = {k: v for k, v in arrays.items() if k != "skipped"}
    try:
        atomic_write(path, lambda fh: np.savez(fh, **payload, skipped=np.array(json.dumps(arrays["skipped"]))))
    except PermissionError as exc:
        log.warning("cannot cache the index next to the data (%s); it will be rebuilt next time", exc)


class IndexedReader(Dataset):
    """Base of the SPICE HDF5 and extended-XYZ readers (see the module docstring).

    Items are ``{"pos": (N, 3) Å, "z": (N,) long, "energy": () eV, "forces": (N, 3) eV/Å}`` (float32).
    Subclasses implement ``_scan() -> index dict`` (calling :meth:`_check_elements`, :meth:`_check_finite`
    and :meth:`_check_geometry` per record), ``__getitem__`` and ``record_name``.
    """

    def unit_hint(self, shortest: float | None = None) -> str:
        """Appended to implausible-geometry errors: what a unit mistake looks like for this format (``shortest``:
        the offending distance in Å, ``None`` for the file-level verdict)."""
        return ""

    def __init__(self, path, elements: Sequence[int], element_references, bad_records: str, unknown_elements: str, neutral_only: bool,
                 cache_index: bool, min_distance: float | None = MIN_INTERATOMIC_DISTANCE):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise DataError(f"{self.path} is a directory, not a data file")
        check_choice(bad_records, "data.bad_records", ("error", "skip"))
        check_choice(unknown_elements, "data.unknown_elements", ("error", "skip"))
        self.min_distance = check_number(min_distance, "data.min_distance", 0.0, allow_none=True) or 0.0
        self.elements = tuple(sorted(int(z) for z in elements))
        self.element_references_spec = element_references
        self.bad_records, self.unknown_elements = bad_records, unknown_elements
        self.neutral_only, self.cache_index = bool(neutral_only), bool(cache_index)
        self.references, self.references_source = resolve_references(element_references, self._file_references())
        self._ref_table = np.zeros(max(max(self.elements, default=0), max(self.references, default=0)) + 1)
        for z, e in self.references.items():
            self._ref_table[z] = e
        self._geometry_checked = self._geometry_failed = 0
        self.index = self._build_or_load_index()
        self.skipped: dict[str, int] = self.index["skipped"]

    # subclasses implement
    def _file_references(self) -> dict[int, float] | None:
        return None

    def _settings(self) -> dict:
        refs = {str(k): v for k, v in sorted(self.references.items())}
        return {"kind": type(self).__name__, "elements": self.elements, "refs": refs, "bad": self.bad_records,
                "unknown": self.unknown_elements, "neutral": self.neutral_only, "min_distance": self.min_distance}

    def _scan(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_or_load_index(self) -> dict[str, Any]:
        cache = _cache_path(self.path, self._settings()) if self.cache_index else None
        if cache is not None and cache.exists():
            loaded = _load_cache(cache)
            if loaded is not None:
                return loaded
        log.info("indexing %s (one pass, %s)", self.path, "cached afterwards" if cache else "not cached")
        index = self._scan()
        self._finish_scan(index)
        if cache is not None:
            _save_cache(cache, index)
        return index

    def _finish_scan(self, index: dict[str, Any]) -> None:
        """File-level verdicts after the walk: a wrong unit, no records at all, nothing left after skipping."""
        checked, failed = self._geometry_checked, self._geometry_failed
        if checked and failed * 2 > checked:
            raise DataError(f"{self.path}: {failed} of {checked} conformers have atoms closer than {self.min_distance} Å, "
                            f"which no real molecule has: the file's unit is wrong{self.unit_hint()}")
        if len(index["natoms"]) == 0:
            if index["skipped"]:
                raise DataError(f"no usable records in {self.path}: every record was skipped ({index['skipped']})")
            raise DataError(f"no records in {self.path}{self._empty_hint()}")

    def _empty_hint(self) -> str:
        return ""

    # shared checks ---------------------------------------------------------------------------------
    def _count(self, skipped: dict[str, int], reason: str, n: int) -> None:
        skipped[reason] = skipped.get(reason, 0) + int(n)

    def _check_elements(self, z: np.ndarray, where: str, skipped: dict[str, int], n: int) -> bool:
        """True if the record may be used; raise or count when it has elements outside the table."""
        bad = sorted(set(int(x) for x in np.unique(z)) - set(self.elements))
        if bad:
            if self.unknown_elements == "error":
                raise DataError(f"{self.path}: {where} has element(s) Z={bad} outside the model's element table {list(self.elements)}")
            self._count(skipped, "unknown_element", n)
            return False
        missing = sorted({int(x) for x in np.unique(z)} - set(self.references)) if self.references else []
        if missing:
            raise DataError(f"{self.path}: {where} has element(s) Z={missing} with no reference energy ({self.references_source})")
        return True

    def _check_finite(self, finite: np.ndarray, where: str, skipped: dict[str, int], keep: np.ndarray) -> np.ndarray:
        """``keep & finite``; raise (naming the conformers) or count the non-finite ones."""
        if finite.all():
            return keep
        bad = np.flatnonzero(~finite).tolist()
        if self.bad_records == "error":
            which = f"conformer(s) {bad[:10]} have" if len(finite) > 1 else "has"
            raise DataError(f"{self.path}: {where}: {which} NaN/inf energy, forces or positions")
        self._count(skipped, "non_finite", int((~finite & keep).sum()))
        return keep & finite

    def _check_geometry(self, shortest: np.ndarray, where: str, skipped: dict[str, int], keep: np.ndarray) -> np.ndarray:
        """``keep`` minus conformers whose shortest interatomic distance ``shortest (M,)`` [Å] is implausible."""
        if not self.min_distance:
            return keep
        close = (shortest < self.min_distance) & keep
        self._geometry_checked += int(keep.sum())
        self._geometry_failed += int(close.sum())
        if not close.any():
            return keep
        c = int(np.flatnonzero(close)[0])
        if self.bad_records == "error":
            which = f"{where}, conformer {c}" if len(shortest) > 1 else where
            raise DataError(f"{self.path}: {which}: two atoms are {shortest[c]:.3f} Å apart, closer than "
                            f"data.min_distance={self.min_distance} Å, which no real molecule is{self.unit_hint(float(shortest[c]))}")
        self._count(skipped, "implausible_geometry", int(close.sum()))
        return keep & ~close

    def reference_energy(self, z: np.ndarray) -> float:
        """Σ_atoms e_ref(Z) in eV (0 with element_references='none')."""
        return float(self._ref_table[z].sum()) if self.references else 0.0

    @property
    def natoms(self) -> np.ndarray:
        return self.index["natoms"]

    @property
    def molecule(self) -> np.ndarray:
        """Molecule id of every record (records of one molecule are never split across train/held-out)."""
        return self.index["molecule"]

    @property
    def energy(self) -> np.ndarray:
        """``(records,)`` reference-subtracted energy of every record [eV] (from the index)."""
        return self.index["energy"]

    @property
    def force_sq(self) -> np.ndarray:
        """``(records,)`` Σ over atoms and components of F² for every record [eV²/Å²] (from the index)."""
        return self.index["force_sq"]

    def __len__(self) -> int:
        return int(self.index["natoms"].shape[0])

    @staticmethod
    def _item(pos: np.ndarray, z: np.ndarray, energy: float, forces: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "pos": torch.from_numpy(np.ascontiguousarray(pos, dtype=np.float32)),
            "z": torch.from_numpy(np.array(z, dtype=np.int64)),
            "energy": torch.tensor(energy, dtype=torch.float32),
            "forces": torch.from_numpy(np.ascontiguousarray(forces, dtype=np.float32)),
        }
