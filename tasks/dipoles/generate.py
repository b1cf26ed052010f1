"""Generate the embedded dipole data: drug-like molecules, ETKDG/MMFF conformers, GFN2-xTB dipoles (tblite).

Real molecules from RDKit's bundled SMILES sets (:func:`equivrepro.molecules.bundled_molecules`, no
download), kept when every element is in ``elements``, the net formal charge is 0, no atom is a radical
(neutral, closed shell) and ``min_heavy_atoms ≤ heavy atoms ≤ max_heavy_atoms``; de-duplicated by
canonical SMILES and shuffled with ``seed``. Each molecule gets explicit hydrogens, ``n_conformers``
ETKDGv3 conformers (seeded from ``seed`` and the molecule's position in the shuffled list) relaxed with
MMFF94, and a GFN2-xTB single point per conformer (tblite, charge 0, no unpaired electrons) whose dipole
is the label. A molecule is skipped, and the reason counted, when ETKDG finds too few conformers
(``embed_failed``), MMFF94 has no parameters (``no_mmff_parameters``) or tblite fails on a conformer
(``xtb_failed``); generation stops at ``n_molecules`` labelled molecules.

Layout (one group per molecule; **positions in Å, dipoles in Debye**, converted from tblite's bohr and
e·bohr with 1 e·bohr = 2.541746 D)::

    /<group>/atomic_numbers  (N,)       int16
    /<group>/positions       (M, N, 3)  float64, Å
    /<group>/dipole          (M, 3)     float64, Debye (GFN2-xTB, frame of the positions)
    /<group>/smiles, /<group>/source   (1,) str

File attributes record the generator settings, counts (molecules, conformers, skips by reason), versions,
and the dipole statistics of the whole file (``dipole_rms_D``: RMS of one Cartesian component;
``dipole_norm_mean_D``). For a neutral molecule the dipole does not depend on the origin, so it rotates
with the positions about any point.

Same seed and settings → identical arrays (tblite runs single-threaded).

    python -m tasks.dipoles.generate --out data/dipoles_embedded.h5 --seed 0
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tblite is bitwise reproducible single-threaded

import argparse
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from equivrepro.atomic import atomic_path
from equivrepro.molecules import RDKIT_SMILES_SOURCES, neutral_candidates
from tasks.dipoles.units import BOHR_TO_ANGSTROM, DIPOLE_ELEMENTS, E_BOHR_TO_DEBYE

log = logging.getLogger("tasks.dipoles.generate")

__all__ = ["GeneratorConfig", "candidate_molecules", "xtb_dipole", "label_molecule", "generate", "main"]

METHOD = "GFN2-xTB"
FORMAT = "equivrepro dipoles HDF5 v1 (one group per molecule)"
UNITS = "positions: Å; dipole: Debye (1 e·bohr = 2.541746 D)"


@dataclass
class GeneratorConfig:
    """Settings of one embedded file (all of them are stored in the file's attributes)."""

    seed: int = 0
    n_molecules: int = 300
    n_conformers: int = 4
    min_heavy_atoms: int = 6
    max_heavy_atoms: int = 20
    mmff_iters: int = 200
    elements: tuple[int, ...] = field(default=DIPOLE_ELEMENTS)

    def __post_init__(self):
        self.elements = tuple(sorted(int(z) for z in self.elements))
        if self.n_molecules < 1 or self.n_conformers < 1:
            raise ValueError(f"n_molecules and n_conformers must be ≥ 1 (got {self.n_molecules}, {self.n_conformers})")


# --------------------------------------------------------------------------------------------------
# Candidate molecules
# --------------------------------------------------------------------------------------------------
def candidate_molecules(cfg: GeneratorConfig, counts: Counter | None = None) -> list[tuple[str, str]]:
    """Filtered, de-duplicated (canonical SMILES, source) pairs in a seeded random order
    (:func:`equivrepro.molecules.neutral_candidates`)."""
    return neutral_candidates(cfg.elements, cfg.min_heavy_atoms, cfg.max_heavy_atoms, cfg.seed, counts)


# --------------------------------------------------------------------------------------------------
# Labelling
# --------------------------------------------------------------------------------------------------
def xtb_dipole(numbers: np.ndarray, positions_angstrom: np.ndarray) -> np.ndarray:
    """GFN2-xTB dipole ``(3,)`` in Debye of a neutral closed-shell molecule (``numbers (N,)``, positions Å)."""
    from tblite.interface import Calculator

    calc = Calculator(
        METHOD, np.asarray(numbers, dtype=np.int64), np.asarray(positions_angstrom, dtype=np.float64) / BOHR_TO_ANGSTROM, charge=0.0, uhf=0
    )
    calc.set("verbosity", 0)
    dipole = np.asarray(calc.singlepoint().get("dipole"), dtype=np.float64) * E_BOHR_TO_DEBYE  # tblite: e·bohr
    if dipole.shape != (3,) or not np.isfinite(dipole).all():
        raise RuntimeError(f"tblite returned dipole {dipole!r}")
    return dipole


@dataclass
class LabelledMolecule:
    smiles: str
    source: str
    atomic_numbers: np.ndarray  # (N,)
    positions: np.ndarray  # (M, N, 3) Å
    dipole: np.ndarray  # (M, 3) D


def label_molecule(smiles: str, source: str, cfg: GeneratorConfig, index: int) -> LabelledMolecule | str:
    """Conformers and GFN2-xTB dipoles of one molecule, or the name of the reason it was skipped.

    ``index`` (the molecule's position in the shuffled candidate list) seeds ETKDG.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = int((cfg.seed * 1_000_003 + index * 7_919) % (2**31 - 1))
    params.numThreads = 1
    cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(cfg.n_conformers), params=params))
    if len(cids) < cfg.n_conformers:
        return "embed_failed"
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        return "no_mmff_parameters"
    AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=int(cfg.mmff_iters))
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    positions = np.stack([mol.GetConformer(cid).GetPositions() for cid in cids])
    try:
        dipoles = np.stack([xtb_dipole(numbers, x) for x in positions])
    except Exception as exc:  # tblite raises TBLiteRuntimeError when the SCF fails
        log.info("GFN2-xTB failed on %s (%s)", smiles, exc)
        return "xtb_failed"
    return LabelledMolecule(smiles, source, numbers, positions, dipoles)


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------
def generate(out: str | os.PathLike, cfg: GeneratorConfig) -> dict:
    """Write the embedded dipole file to ``out`` (atomically) and return its summary."""
    from importlib.metadata import version

    import h5py
    import rdkit

    t0 = time.perf_counter()
    counts: Counter = Counter({"embed_failed": 0, "no_mmff_parameters": 0, "xtb_failed": 0})  # reported even when 0
    candidates = candidate_molecules(cfg, counts)
    counts["candidates"] = len(candidates)
    mols: list[LabelledMolecule] = []
    for i, (smi, src) in enumerate(candidates):
        res = label_molecule(smi, src, cfg, i)
        if isinstance(res, str):
            counts[res] += 1
            continue
        mols.append(res)
        if len(mols) % 50 == 0:
            log.info("labelled %d / %d molecules", len(mols), cfg.n_molecules)
        if len(mols) == cfg.n_molecules:
            break
    if len(mols) < cfg.n_molecules:
        raise RuntimeError(f"only {len(mols)} of {cfg.n_molecules} molecules could be labelled ({dict(counts)})")
    dipoles = np.concatenate([m.dipole for m in mols])
    rms = float(np.sqrt((dipoles**2).mean()))
    norm_mean = float(np.linalg.norm(dipoles, axis=1).mean())

    out = Path(out)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            str_dt = h5py.string_dtype()
            for i, m in enumerate(mols):
                g = f.create_group(f"mol-{i:05d}")
                g.create_dataset("atomic_numbers", data=m.atomic_numbers.astype(np.int16))
                g.create_dataset("positions", data=m.positions)
                g.create_dataset("dipole", data=m.dipole)
                g.create_dataset("smiles", data=[m.smiles], dtype=str_dt)
                g.create_dataset("source", data=[m.source], dtype=str_dt)
            for key, value in asdict(cfg).items():
                f.attrs[f"generator_{key}"] = np.asarray(value) if isinstance(value, tuple) else value
            f.attrs["format"] = FORMAT
            f.attrs["units"] = UNITS
            f.attrs["level_of_theory"] = f"{METHOD} (tblite {version('tblite')}), charge 0, closed shell"
            f.attrs["geometry_protocol"] = f"RDKit ETKDGv3 conformers relaxed with MMFF94 ({cfg.mmff_iters} iterations)"
            f.attrs["sources"] = np.array([s[0] for s in RDKIT_SMILES_SOURCES], dtype=str_dt)
            f.attrs["rdkit_version"] = rdkit.__version__
            f.attrs["tblite_version"] = version("tblite")
            f.attrs["n_molecules"] = len(mols)
            f.attrs["n_conformers"] = int(dipoles.shape[0])
            for key, value in sorted(counts.items()):
                f.attrs[f"count_{key}"] = int(value)
            f.attrs["dipole_rms_D"] = rms
            f.attrs["dipole_norm_mean_D"] = norm_mean
    natoms = [len(m.atomic_numbers) for m in mols]
    return {
        "path": str(out),
        "molecules": len(mols),
        "conformers": int(dipoles.shape[0]),
        "atoms_mean": float(np.mean(natoms)),
        "atoms_max": int(max(natoms)),
        "counts": dict(counts),
        "dipole_rms_D": rms,
        "dipole_norm_mean_D": norm_mean,
        "bytes": out.stat().st_size,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> dict:
    defaults = GeneratorConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output HDF5 path (written atomically)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--n-molecules", type=int, default=defaults.n_molecules)
    p.add_argument("--n-conformers", type=int, default=defaults.n_conformers)
    p.add_argument("--min-heavy-atoms", type=int, default=defaults.min_heavy_atoms)
    p.add_argument("--max-heavy-atoms", type=int, default=defaults.max_heavy_atoms)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = GeneratorConfig(
        seed=args.seed,
        n_molecules=args.n_molecules,
        n_conformers=args.n_conformers,
        min_heavy_atoms=args.min_heavy_atoms,
        max_heavy_atoms=args.max_heavy_atoms,
    )
    s = generate(args.out, cfg)
    print(
        f"wrote {s['path']}: {s['molecules']} molecules, {s['conformers']} conformers (mean {s['atoms_mean']:.1f} atoms, "
        f"max {s['atoms_max']}), dipole RMS {s['dipole_rms_D']:.3f} D per component, mean |μ| {s['dipole_norm_mean_D']:.3f} D, "
        f"{s['bytes'] / 1e6:.2f} MB in {s['seconds']:.1f} s; skipped: "
        + ", ".join(f"{k}={v}" for k, v in sorted(s["counts"].items()) if k != "candidates")
    )
    return s


if __name__ == "__main__":
    main()
