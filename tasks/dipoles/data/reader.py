"""The dipole HDF5 reader: every conformer of the file, validated and held in memory.

The file layout is the one :mod:`tasks.dipoles.generate` writes (one group per molecule with
``atomic_numbers (N,)``, ``positions (M, N, 3)`` Å and ``dipole (M, 3)`` Debye). The embedded file is a
couple of MB, so the reader loads it once at construction (no per-worker file handles); a file of
millions of conformers would want an index and lazy reads instead.

Every item is ``{"pos": (N, 3) Å, "z": (N,) long, "dipole": (3,) D}`` (float32).

**Bad input** raises :class:`~equivrepro.data.DataError` naming the file, the group and, where it
applies, the conformer: a missing dataset, a shape mismatch, an atomic number outside 1..118,
non-finite positions or dipoles, two atoms closer than ``min_distance`` Å, an atom farther than
``max_neighbor_distance`` Å from every other atom (a broken or exploded geometry), a dipole larger than
``max_dipole`` D (a unit error), or a file whose ``units`` attribute is not Å and Debye.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from equivrepro.data import DataError, hdf5_string

__all__ = ["DipoleHDF5Dataset", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("atomic_numbers", "positions", "dipole")


class DipoleHDF5Dataset(Dataset):
    """All conformers of a dipole HDF5 file (see the module docstring for the layout and the checks).

    Attributes: ``molecule (R,)`` — the group index of every record (records of one molecule are never
    split across training and held-out data), ``natoms (R,)``, ``group_names``, ``attrs`` (the file's
    attributes as plain Python values).
    """

    def __init__(self, path, min_distance: float = 0.5, max_neighbor_distance: float = 4.0, max_dipole: float = 100.0):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file")
        self.min_distance, self.max_neighbor_distance, self.max_dipole = float(min_distance), float(max_neighbor_distance), float(max_dipole)
        pos, z, dipole, molecule, names = [], [], [], [], []
        with h5py.File(self.path, "r") as f:
            self.attrs = {k: (hdf5_string(v) if isinstance(v, (bytes, str, np.bytes_)) else np.asarray(v).tolist()) for k, v in f.attrs.items()}
            units = self.attrs.get("units")
            if units is not None and not ("Å" in units and "Debye" in units):
                raise DataError(f"{self.path}: attribute units={units!r}; the reader expects positions in Å and dipoles in Debye")
            for name in f.keys():
                g = f[name]
                if not isinstance(g, h5py.Group):
                    raise DataError(f"{self.path}: '{name}' is not a group (the file has one group per molecule)")
                zs, xs, ds = self._read_group(g, f"group '{name}'")
                for m in range(xs.shape[0]):
                    pos.append(xs[m])
                    z.append(zs)
                    dipole.append(ds[m])
                    molecule.append(len(names))
                names.append(name)
        if not pos:
            raise DataError(f"{self.path}: no conformers (the file has no molecule groups)")
        self.group_names = names
        self.molecule = np.asarray(molecule, dtype=np.int64)
        self.natoms = np.asarray([len(x) for x in z], dtype=np.int64)
        self._pos = [torch.as_tensor(x, dtype=torch.float32) for x in pos]
        self._z = [torch.as_tensor(x.astype(np.int64)) for x in z]
        self._dipole = torch.as_tensor(np.stack(dipole), dtype=torch.float32)

    def _read_group(self, g, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(z (N,), positions (M, N, 3) Å, dipole (M, 3) D)`` of one molecule group, validated."""
        for key in REQUIRED_KEYS:
            if key not in g:
                raise DataError(f"{self.path}: {where} has no dataset '{key}' (needs {', '.join(REQUIRED_KEYS)})")
        z = np.asarray(g["atomic_numbers"][()])
        x = np.asarray(g["positions"][()], dtype=np.float64)
        d = np.asarray(g["dipole"][()], dtype=np.float64)
        if z.ndim != 1 or z.shape[0] == 0:
            raise DataError(f"{self.path}: {where}: atomic_numbers has shape {z.shape}, expected (N,) with N ≥ 1")
        n = z.shape[0]
        m = x.shape[0] if x.ndim == 3 else -1
        if x.shape != (m, n, 3) or m < 1:
            raise DataError(f"{self.path}: {where}: shape mismatch, positions is {x.shape} but atomic_numbers {z.shape} implies (M, {n}, 3), M ≥ 1")
        if d.shape != (m, 3):
            raise DataError(f"{self.path}: {where}: shape mismatch, dipole is {d.shape} but positions {x.shape} implies ({m}, 3)")
        if not np.issubdtype(z.dtype, np.integer) or z.min() < 1 or z.max() > 118:
            raise DataError(f"{self.path}: {where}: atomic_numbers must be integers in 1..118, got {sorted(set(z.tolist()))[:10]}")
        for c in range(m):
            here = f"{where} conformer {c}"
            if not np.isfinite(x[c]).all():
                raise DataError(f"{self.path}: {here}: non-finite positions")
            if not np.isfinite(d[c]).all():
                raise DataError(f"{self.path}: {here}: non-finite dipole {d[c].tolist()}")
            if np.linalg.norm(d[c]) > self.max_dipole:
                raise DataError(f"{self.path}: {here}: implausible dipole |μ| = {np.linalg.norm(d[c]):.3g} D > max_dipole "
                                f"{self.max_dipole:g} D (expected Debye)")
            self._check_geometry(x[c], here)
        return z, x, d

    def _check_geometry(self, x: np.ndarray, where: str) -> None:
        n = x.shape[0]
        if n < 2:
            return
        dist = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
        np.fill_diagonal(dist, np.inf)
        i, j = np.unravel_index(np.argmin(dist), dist.shape)
        if dist[i, j] < self.min_distance:
            raise DataError(f"{self.path}: {where}: implausible geometry, atoms {min(i, j)} and {max(i, j)} are {dist[i, j]:.3g} Å apart "
                            f"(< min_distance {self.min_distance:g} Å)")
        nearest = dist.min(1)
        far = int(np.argmax(nearest))
        if nearest[far] > self.max_neighbor_distance:
            raise DataError(f"{self.path}: {where}: implausible geometry, atom {far} is {nearest[far]:.3g} Å from its nearest neighbour "
                            f"(> max_neighbor_distance {self.max_neighbor_distance:g} Å; positions must be in Å)")

    def __len__(self) -> int:
        return len(self._pos)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pos": self._pos[i], "z": self._z[i], "dipole": self._dipole[i]}

    @property
    def dipoles(self) -> torch.Tensor:
        """``(R, 3)`` every record's dipole in Debye."""
        return self._dipole

    def record_name(self, i: int) -> str:
        first = int(np.flatnonzero(self.molecule == self.molecule[i])[0])
        return f"{self.path}:{self.group_names[int(self.molecule[i])]}/conformer {i - first}"
