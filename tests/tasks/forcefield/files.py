"""Small SPICE-format HDF5 and extended-XYZ files with known values, written by the tests themselves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

WATER_Z = np.array([8, 1, 1])
METHANOL_Z = np.array([6, 8, 1, 1, 1, 1])


def spread_atoms(rng: np.random.Generator, n: int, spacing: float) -> np.ndarray:
    """``(n, 3)`` random positions on distinct sites of a jittered cubic lattice: no two atoms closer than
    0.8 · ``spacing`` (physically plausible geometries for the readers' shortest-distance check)."""
    sites = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    chosen = sites[rng.choice(len(sites), size=n, replace=False)].astype(np.float64)
    return (chosen + rng.uniform(-0.1, 0.1, size=(n, 3))) * spacing


def molecule(z: np.ndarray, m: int, seed: int, energy_ha: float = -76.4) -> dict[str, np.ndarray]:
    """``m`` conformers of a molecule with atomic numbers ``z``: arrays in SPICE units (bohr, Ha, Ha/bohr).

    Atoms are ≥ 2.4 bohr apart before the per-conformer displacement (≤ 0.2 bohr per coordinate), so every
    conformer is ≥ 1.7 bohr ≈ 0.9 Å from a clash."""
    rng = np.random.default_rng(seed)
    n = len(z)
    base = spread_atoms(rng, n, 3.0)
    return {
        "atomic_numbers": np.asarray(z, dtype=np.int16),
        "conformations": (base + np.clip(rng.normal(0.0, 0.1, size=(m, n, 3)), -0.2, 0.2)).astype(np.float32),
        "dft_total_energy": energy_ha + rng.normal(0.0, 0.01, size=m),
        "dft_total_gradient": rng.normal(0.0, 0.02, size=(m, n, 3)).astype(np.float32),
    }


def write_spice(path: Path, groups: Mapping[str, Mapping[str, np.ndarray]], attrs: Mapping | None = None) -> Path:
    """A SPICE-format file: one group per molecule with the given datasets (and optional file attrs)."""
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


def standard_groups(n_molecules: int = 6, m: int = 3) -> dict[str, dict[str, np.ndarray]]:
    """Alternating water / methanol molecules with ``m`` conformers each."""
    out = {}
    for i in range(n_molecules):
        z, e = (WATER_Z, -76.4) if i % 2 == 0 else (METHANOL_Z, -115.7)
        out[f"mol{i:02d}"] = molecule(z, m, seed=i, energy_ha=e)
    return out


def write_extxyz(
    path: Path, frames: list[dict], energy_key: str = "energy", forces_key: str = "forces", extra: str = 'config_type="PubChem"'
) -> Path:
    """Frames ``{"symbols": [...], "pos": (N,3) Å, "forces": (N,3) eV/Å, "energy": eV}`` in MACE-OFF's layout."""
    lines = []
    for fr in frames:
        n = len(fr["symbols"])
        lines.append(f"{n}")
        lines.append(f'Properties=species:S:1:pos:R:3:{forces_key}:R:3 {energy_key}={float(fr["energy"]):.17g} {extra} pbc="F F F"')
        for s, p, f in zip(fr["symbols"], fr["pos"], fr["forces"]):
            lines.append(" ".join([s] + [f"{float(v):.17g}" for v in (*p, *f)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def xyz_frames(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        symbols = ["O", "H", "H"] if i % 2 == 0 else ["C", "O", "H", "H", "H", "H"]
        frames.append(
            {
                "symbols": symbols,
                "pos": spread_atoms(rng, len(symbols), 1.2),  # Å, ≥ 0.96 Å apart
                "forces": rng.normal(0, 1.0, size=(len(symbols), 3)),
                "energy": float(-2080.0 + rng.normal()),
            }
        )
    return frames
