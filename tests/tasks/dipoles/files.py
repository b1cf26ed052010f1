"""Small dipole HDF5 files with known values, written by the tests themselves.

Molecules are water and methanol at fixed geometries (Å), randomly rotated and jittered per conformer;
their dipoles follow a point-charge model with the charges :data:`CHARGES` (D/Å), so the baseline's
least-squares fit on them is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import torch

from equivrepro.rotations import haar_rotations

WATER = (np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]]))
METHANOL = (
    np.array([6, 8, 1, 1, 1, 1]),
    np.array([[0.0, 0.0, 0.0], [1.43, 0.0, 0.0], [1.75, 0.90, 0.0], [-0.36, 1.03, 0.0], [-0.36, -0.51, 0.89], [-0.36, -0.51, -0.89]]),
)
#: Point charges (D/Å) the synthetic dipoles are made from: μ = Σ_i q_{Z_i} (r_i − r̄).
CHARGES = {1: 0.9, 6: -0.4, 8: -1.6}


def point_charge_dipole(z: np.ndarray, pos: np.ndarray, charges: Mapping[int, float] = CHARGES) -> np.ndarray:
    q = np.array([charges[int(a)] for a in z])
    return (q[:, None] * (pos - pos.mean(0))).sum(0)


def molecule(kind: tuple[np.ndarray, np.ndarray], m: int, seed: int) -> dict[str, np.ndarray]:
    """``m`` conformers of ``kind`` (WATER or METHANOL): random rotation + 0.02 Å jitter + an offset each."""
    z, pos = kind
    rng = np.random.default_rng(seed)
    rots = haar_rotations(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    xs = np.stack([(pos + rng.normal(0.0, 0.02, pos.shape)) @ r.T + rng.normal(0.0, 3.0, 3) for r in rots])
    return {"atomic_numbers": z.astype(np.int16), "positions": xs, "dipole": np.stack([point_charge_dipole(z, x) for x in xs])}


def standard_groups(n_molecules: int = 6, m: int = 3) -> dict[str, dict[str, np.ndarray]]:
    """Alternating water / methanol molecules with ``m`` conformers each."""
    return {f"mol{i:02d}": molecule(WATER if i % 2 == 0 else METHANOL, m, seed=i) for i in range(n_molecules)}


def write_dipoles(path: Path, groups: Mapping[str, Mapping[str, np.ndarray]], attrs: Mapping | None = None) -> Path:
    """A dipole HDF5 file: one group per molecule with the given datasets (and optional file attributes)."""
    with h5py.File(path, "w") as f:
        for name, data in groups.items():
            g = f.create_group(name)
            for key, value in data.items():
                if isinstance(value, str):
                    g.create_dataset(key, data=[value], dtype=h5py.string_dtype())
                else:
                    g.create_dataset(key, data=value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path
