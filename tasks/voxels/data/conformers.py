"""Atoms and coordinates of RDKit conformers, and the checks every raw conformer passes before it is stored.

* :func:`mol_conformers` — ``(Z (n,), coords (n, 3) Å)`` of every conformer of a Mol; a conformer with
  **flat (2-D) coordinates** is a :class:`~equivrepro.data.DataError` naming the record: every z = 0
  (n ≥ 3), or all atoms on one plane although an atom has four or more bonded neighbours (an sp³ centre,
  which no 3-D geometry makes planar). A genuinely planar molecule written exactly in the z = 0 plane is
  rejected too (rotate it first); a rotated 2-D depiction of a molecule without sp³ centres cannot be
  told from a planar 3-D conformer and passes.
* :func:`check_coordinates` — finite coordinates and physical plausibility: the shortest interatomic
  distance must be at least ``min_distance`` Å (:data:`~equivrepro.data.MIN_INTERATOMIC_DISTANCE`,
  0.6 Å; H–H in H₂ is 0.74 Å), which catches coordinates in nm or bohr read as Å.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np

from equivrepro.data import DataError, shortest_distances

__all__ = ["mol_conformers", "check_coordinates", "is_flat"]

#: |z| below this (Å) counts as z = 0 (SDF stores 4 decimals)
_FLAT_Z = 1e-4
#: RMS distance (Å) from the best-fitting plane below which a conformer is planar
_PLANAR_RMS = 1e-3


def is_flat(coords: np.ndarray, max_degree: int) -> bool:
    """True for 2-D coordinates (see the module docstring); ``max_degree`` = most bonded neighbours of an atom."""
    n = len(coords)
    if n >= 3 and np.all(np.abs(coords[:, 2]) < _FLAT_Z):
        return True
    if n >= 4 and max_degree >= 4:
        centred = coords - coords.mean(0)
        smallest = np.linalg.svd(centred, compute_uv=False)[-1]
        return bool(smallest / np.sqrt(n) < _PLANAR_RMS)
    return False


def mol_conformers(mol, where: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(atomic numbers (n,), coords (n, 3) Å) of every conformer of an RDKit Mol; flat ones raise."""
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    if mol.GetNumConformers() == 0:
        raise DataError(f"{where}: Mol has no conformer (no 3-D coordinates)")
    max_degree = max((a.GetDegree() for a in mol.GetAtoms()), default=0)
    for k, conf in enumerate(mol.GetConformers()):
        x = np.asarray(conf.GetPositions(), dtype=np.float64).reshape(-1, 3)
        if is_flat(x, max_degree):
            which = f" (conformer {k} of the Mol)" if mol.GetNumConformers() > 1 else ""
            z0 = ", every z = 0" if np.all(np.abs(x[:, 2]) < _FLAT_Z) else ""
            raise DataError(f"{where}{which}: flat coordinates (every atom on one plane{z0}) — a 2-D depiction, not a 3-D conformer")
        yield z, x


def check_coordinates(x: np.ndarray, where: str, bad_records: str, skipped: Counter, min_distance: float) -> bool:
    """True if ``x (n, 3)`` Å may be stored; raise (``bad_records='error'``) or count the reason and return False."""
    if not np.isfinite(x).all():
        if bad_records != "skip":
            raise DataError(f"{where}: non-finite coordinates")
        skipped["non_finite"] += 1
        return False
    if min_distance:
        d = float(shortest_distances(x)[0])
        if d < min_distance:
            if bad_records != "skip":
                raise DataError(f"{where}: two atoms are {d:.3f} Å apart, closer than data.min_distance={min_distance} Å, which no real "
                                "molecule is (coordinates must be in Å: check the unit the file was written in)")
            skipped["implausible_geometry"] += 1
            return False
    return True
