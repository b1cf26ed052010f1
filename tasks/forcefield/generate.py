"""Generate the embedded force-field data: a SPICE-format HDF5 file labelled with GFN2-xTB.

Real drug-like molecules from RDKit's bundled SMILES sets (no download) → ETKDGv3 conformers →
MMFF94 relaxation → Gaussian displacement of every atom (σ = ``noise`` Å, so the geometries sit off
the minimum and the forces are not ≈ 0) → GFN2-xTB energy and gradient from ``tblite``. When tblite
fails on a conformer it is labelled with RDKit's MMFF94 instead; the method is recorded per conformer
(``label_method``) and the reader skips such conformers by default (their energies live on another scale).

Layout and units are those of real SPICE (one group per molecule)::

    /<group>/atomic_numbers      (N,)      int16
    /<group>/conformations       (M, N, 3) float32, bohr
    /<group>/dft_total_energy    (M,)      float64, hartree      (here: GFN2-xTB, not DFT)
    /<group>/dft_total_gradient  (M, N, 3) float32, hartree/bohr (forces = −gradient)
    /<group>/smiles, /<group>/subset  (1,) str;  /<group>/label_method (M,) str

File attributes record the generator settings, counts (molecules, conformers, failures by reason),
versions, and **per-element reference energies** fitted by least squares on this file's GFN2-xTB
conformers (``element_reference_Z``, ``element_reference_energy_eV``): E_total(eV) ≈ Σ_atoms e_Z. The
reader subtracts them, so targets are formation-like energies of a few eV. The attributes also hold
the reference-subtracted energy mean/std and the force RMS (normalisers for the task config).

Same seed and settings → identical arrays (each molecule is seeded from (seed, its position in the
shuffled candidate list), independent of the number of worker processes).

    python -m tasks.forcefield.generate --out data/spice_embedded.h5 --seed 0 [--workers 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tblite is bitwise reproducible single-threaded

import argparse
import logging
import multiprocessing
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from equivrepro.atomic import atomic_path
from equivrepro.molecules import RDKIT_SMILES_SOURCES, neutral_candidates
from tasks.forcefield.units import (
    BOHR_TO_ANGSTROM,
    HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    HARTREE_TO_EV,
    KCAL_PER_MOL_TO_HARTREE,
    SPICE_ELEMENTS,
)

log = logging.getLogger("tasks.forcefield.generate")

__all__ = ["GeneratorConfig", "EmbeddedFile", "embedded_file", "candidate_molecules", "label_molecule", "generate", "main"]

PRIMARY_METHOD = "GFN2-xTB"
FALLBACK_METHOD = "MMFF94"


@dataclass
class GeneratorConfig:
    """Settings of one embedded file (all of them are stored in the file's attributes)."""

    seed: int = 0
    n_molecules: int = 180
    n_conformers: int = 4
    noise: float = 0.05  # Å, std of the Gaussian displacement of every atom after MMFF relaxation
    min_heavy_atoms: int = 8
    max_heavy_atoms: int = 24
    mmff_iters: int = 200
    workers: int = 1
    elements: tuple[int, ...] = field(default=SPICE_ELEMENTS)


# --------------------------------------------------------------------------------------------------
# Candidate molecules
# --------------------------------------------------------------------------------------------------
def candidate_molecules(cfg: GeneratorConfig, counts: Counter) -> list[tuple[str, str]]:
    """Filtered, de-duplicated (canonical SMILES, source) pairs in a seeded random order.

    Kept: parseable, one fragment, elements in ``cfg.elements``, net charge 0, no radicals,
    ``min_heavy_atoms ≤ heavy atoms ≤ max_heavy_atoms`` (:func:`equivrepro.molecules.neutral_candidates`).
    Rejections are counted in ``counts``.
    """
    return neutral_candidates(cfg.elements, cfg.min_heavy_atoms, cfg.max_heavy_atoms, cfg.seed, counts)


# --------------------------------------------------------------------------------------------------
# Labelling one molecule
# --------------------------------------------------------------------------------------------------
@dataclass
class LabelledMolecule:
    smiles: str
    subset: str
    atomic_numbers: np.ndarray  # (N,)
    conformations: np.ndarray  # (M, N, 3) bohr
    energy: np.ndarray  # (M,) hartree
    gradient: np.ndarray  # (M, N, 3) hartree/bohr
    methods: list[str]


def _gfn2(numbers: np.ndarray, positions_bohr: np.ndarray) -> tuple[float, np.ndarray]:
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", numbers, positions_bohr, charge=0.0, uhf=0)
    calc.set("verbosity", 0)
    res = calc.singlepoint()
    energy, gradient = float(res.get("energy")), np.asarray(res.get("gradient"), dtype=np.float64)
    if not (np.isfinite(energy) and np.isfinite(gradient).all()):
        raise RuntimeError("tblite returned a non-finite energy or gradient")
    return energy, gradient


def _mmff(mol, props, positions_angstrom: np.ndarray) -> tuple[float, np.ndarray]:
    from rdkit.Chem import AllChem

    ff = AllChem.MMFFGetMoleculeForceField(mol, props, confId=0)
    flat = positions_angstrom.reshape(-1).tolist()
    energy = ff.CalcEnergy(flat) * KCAL_PER_MOL_TO_HARTREE
    grad = np.asarray(ff.CalcGrad(flat), dtype=np.float64).reshape(-1, 3) * KCAL_PER_MOL_TO_HARTREE * BOHR_TO_ANGSTROM
    return energy, grad


def label_molecule(smiles: str, subset: str, cfg: GeneratorConfig, index: int) -> LabelledMolecule | str:
    """Conformers and labels for one molecule, or the name of the reason it failed.

    ``index`` (the molecule's position in the shuffled candidate list) seeds ETKDG and the noise.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = int((cfg.seed * 1_000_003 + index * 7_919) % (2**31 - 1))
    params.numThreads = 1
    cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=cfg.n_conformers, params=params))
    if len(cids) < cfg.n_conformers:
        return "embed_failed"
    props = AllChem.MMFFGetMoleculeProperties(mol)
    if props is None:
        return "no_mmff_parameters"
    AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=cfg.mmff_iters)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    rng = np.random.default_rng([cfg.seed, index])
    confs, energies, grads, methods = [], [], [], []
    for cid in cids:
        pos = mol.GetConformer(cid).GetPositions() + rng.normal(0.0, cfg.noise, size=(len(numbers), 3))
        pos_bohr = pos / BOHR_TO_ANGSTROM
        try:
            e, g = _gfn2(numbers, pos_bohr)
            methods.append(PRIMARY_METHOD)
        except Exception as exc:  # tblite raises TBLiteRuntimeError on SCF failure
            log.info("GFN2-xTB failed on %s conformer %d (%s); using MMFF94", smiles, cid, exc)
            e, g = _mmff(mol, props, pos)
            methods.append(FALLBACK_METHOD)
        confs.append(pos_bohr)
        energies.append(e)
        grads.append(g)
    return LabelledMolecule(
        smiles=Chem.MolToSmiles(mol),
        subset=subset,
        atomic_numbers=numbers,
        conformations=np.stack(confs),
        energy=np.asarray(energies, dtype=np.float64),
        gradient=np.stack(grads),
        methods=methods,
    )


def _label_task(args):
    smiles, subset, cfg, index = args
    return label_molecule(smiles, subset, cfg, index)


# --------------------------------------------------------------------------------------------------
# Element references and normalisers
# --------------------------------------------------------------------------------------------------
def fit_element_references(mols: list[LabelledMolecule]) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares e_Z (eV) with E_total(eV) ≈ Σ_atoms e_Z over all GFN2-xTB conformers."""
    zs = sorted({int(z) for m in mols for z in m.atomic_numbers})
    col = {z: i for i, z in enumerate(zs)}
    rows, targets = [], []
    for m in mols:
        counts = np.zeros(len(zs))
        for z in m.atomic_numbers:
            counts[col[int(z)]] += 1
        for e, method in zip(m.energy, m.methods):
            if method == PRIMARY_METHOD:
                rows.append(counts)
                targets.append(e * HARTREE_TO_EV)
    coef, *_ = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)
    return np.array(zs, dtype=np.int64), coef


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------
def _labelled(cfg: GeneratorConfig, candidates: list[tuple[str, str]], counts: Counter) -> list[LabelledMolecule]:
    """The first ``n_molecules`` candidates (in shuffled order) that label successfully."""
    tasks = ((smi, src, cfg, i) for i, (smi, src) in enumerate(candidates))
    out: list[LabelledMolecule] = []
    pool = multiprocessing.get_context("fork").Pool(cfg.workers) if cfg.workers > 1 else None
    try:
        results = pool.imap(_label_task, tasks, chunksize=1) if pool else map(_label_task, tasks)
        for res in results:
            if isinstance(res, str):
                counts[res] += 1
                log.warning("molecule skipped: %s (%d so far)", res, counts[res])
                continue
            out.append(res)
            if len(out) % 25 == 0:
                log.info("labelled %d / %d molecules", len(out), cfg.n_molecules)
            if len(out) == cfg.n_molecules:
                break
    finally:
        if pool:
            pool.terminate()
            pool.join()
    if len(out) < cfg.n_molecules:
        raise RuntimeError(f"only {len(out)} of {cfg.n_molecules} molecules could be labelled ({dict(counts)})")
    return out


def generate(out: str | os.PathLike, cfg: GeneratorConfig) -> dict:
    """Write the embedded SPICE-format file to ``out`` (atomically) and return its summary counts."""
    from importlib.metadata import version

    import h5py
    import rdkit

    t0 = time.perf_counter()
    counts: Counter = Counter({"embed_failed": 0, "no_mmff_parameters": 0})  # reported even when 0
    candidates = candidate_molecules(cfg, counts)
    counts["candidates"] = len(candidates)
    mols = _labelled(cfg, candidates, counts)
    ref_z, ref_e = fit_element_references(mols)
    ref = dict(zip(ref_z.tolist(), ref_e.tolist()))
    resid, force_sq, n_force = [], 0.0, 0
    methods = Counter({PRIMARY_METHOD: 0, FALLBACK_METHOD: 0})
    for m in mols:
        shift = sum(ref[int(z)] for z in m.atomic_numbers)
        for e, g, method in zip(m.energy, m.gradient, m.methods):
            methods[method] += 1
            if method == PRIMARY_METHOD:
                resid.append(e * HARTREE_TO_EV - shift)
                force_sq += float(((g * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM) ** 2).sum())
                n_force += g.size
    resid_arr = np.array(resid)

    out = Path(out)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            str_dt = h5py.string_dtype()
            for i, m in enumerate(mols):
                g = f.create_group(f"embedded-{i:05d}")
                g.create_dataset("atomic_numbers", data=m.atomic_numbers.astype(np.int16))
                g.create_dataset("conformations", data=m.conformations.astype(np.float32))
                g.create_dataset("dft_total_energy", data=m.energy)
                g.create_dataset("dft_total_gradient", data=m.gradient.astype(np.float32))
                g.create_dataset("smiles", data=[m.smiles], dtype=str_dt)
                g.create_dataset("subset", data=[m.subset], dtype=str_dt)
                g.create_dataset("label_method", data=m.methods, dtype=str_dt)
            settings = asdict(cfg)
            settings.pop("workers")
            for key, value in settings.items():
                f.attrs[f"generator_{key}"] = np.asarray(value) if isinstance(value, tuple) else value
            f.attrs["format"] = "SPICE HDF5 (one group per molecule)"
            f.attrs["units"] = "conformations: bohr; dft_total_energy: hartree; dft_total_gradient: hartree/bohr"
            f.attrs["level_of_theory"] = f"{PRIMARY_METHOD} (tblite {version('tblite')}); fallback {FALLBACK_METHOD} (RDKit)"
            f.attrs["primary_label_method"] = PRIMARY_METHOD
            f.attrs["geometry_protocol"] = (
                f"RDKit ETKDGv3 conformers, MMFF94 relaxation ({cfg.mmff_iters} iterations), "
                f"then Gaussian displacement of every atom with std {cfg.noise} Å"
            )
            f.attrs["sources"] = np.array([s[0] for s in RDKIT_SMILES_SOURCES], dtype=str_dt)
            f.attrs["rdkit_version"] = rdkit.__version__
            f.attrs["tblite_version"] = version("tblite")
            f.attrs["n_molecules"] = len(mols)
            f.attrs["n_conformers"] = int(sum(len(m.energy) for m in mols))
            for key, value in sorted({**counts, **{f"method_{k}": v for k, v in methods.items()}}.items()):
                f.attrs[f"count_{key}"] = int(value)
            f.attrs["element_reference_Z"] = ref_z
            f.attrs["element_reference_energy_eV"] = ref_e
            f.attrs["element_reference_method"] = "least-squares fit E_total(eV) ≈ Σ_atoms e_Z over every GFN2-xTB conformer in this file"
            f.attrs["energy_mean_eV"] = float(resid_arr.mean())
            f.attrs["energy_std_eV"] = float(resid_arr.std())
            f.attrs["force_rms_eV_per_A"] = float(np.sqrt(force_sq / max(n_force, 1)))
    summary = {
        "path": str(out),
        "molecules": len(mols),
        "conformers": int(sum(len(m.energy) for m in mols)),
        "atoms_mean": float(np.mean([len(m.atomic_numbers) for m in mols])),
        "atoms_max": int(max(len(m.atomic_numbers) for m in mols)),
        "methods": dict(methods),
        "counts": dict(counts),
        "energy_std_eV": float(resid_arr.std()),
        "force_rms_eV_per_A": float(np.sqrt(force_sq / max(n_force, 1))),
        "bytes": out.stat().st_size,
        "seconds": time.perf_counter() - t0,
    }
    return summary


@dataclass
class EmbeddedFile:
    """The embedded data file at its default location and the settings that make it; calling it generates
    ``path`` (the data module does so only when ``data.path`` is this path and it is missing). Built by
    Hydra from the ``generate:`` node of the embedded data config (:func:`embedded_file`)."""

    path: str
    config: GeneratorConfig

    def __call__(self) -> dict:
        return generate(self.path, self.config)


def embedded_file(path: str, **settings) -> EmbeddedFile:
    """``EmbeddedFile(path, GeneratorConfig(**settings))`` (the ``_target_`` of ``data.generate``)."""
    return EmbeddedFile(str(path), GeneratorConfig(**settings))


def main(argv: list[str] | None = None) -> dict:
    defaults = GeneratorConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output HDF5 path (written atomically)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--n-molecules", type=int, default=defaults.n_molecules)
    p.add_argument("--n-conformers", type=int, default=defaults.n_conformers)
    p.add_argument("--noise", type=float, default=defaults.noise, help="Gaussian displacement std (Å)")
    p.add_argument("--min-heavy-atoms", type=int, default=defaults.min_heavy_atoms)
    p.add_argument("--max-heavy-atoms", type=int, default=defaults.max_heavy_atoms)
    p.add_argument("--workers", type=int, default=defaults.workers, help="worker processes (results do not depend on it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = GeneratorConfig(
        seed=args.seed,
        n_molecules=args.n_molecules,
        n_conformers=args.n_conformers,
        noise=args.noise,
        min_heavy_atoms=args.min_heavy_atoms,
        max_heavy_atoms=args.max_heavy_atoms,
        workers=args.workers,
    )
    summary = generate(args.out, cfg)
    print(
        f"wrote {summary['path']}: {summary['molecules']} molecules, {summary['conformers']} conformers "
        f"(mean {summary['atoms_mean']:.1f} atoms, max {summary['atoms_max']}), labels {summary['methods']}, "
        f"{summary['bytes'] / 1e6:.2f} MB in {summary['seconds']:.1f} s; skipped: "
        + ", ".join(f"{k}={v}" for k, v in sorted(summary["counts"].items()) if k != "candidates")
        + f"; energy std {summary['energy_std_eV']:.3f} eV, force RMS {summary['force_rms_eV_per_A']:.3f} eV/Å"
    )
    return summary


if __name__ == "__main__":
    main()
