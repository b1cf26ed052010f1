"""Generate the embedded voxel data: a MiDi-format GEOM pickle (or SDF) of real molecules, and its store.

Molecules come from RDKit's bundled SMILES sets (no download: ``RDConfig.RDDataDir`` /
``RDContribDir`` — WEHI screening compounds, a ChEMBL ligand series, the first 5k NCI compounds):
parsed, one fragment, heavy-atom count in ``[min_heavy_atoms, max_heavy_atoms]``, de-duplicated by
canonical SMILES and shuffled with ``seed``. **No element filter is applied here**, so the same
element filter as for real GEOM-drugs (drop molecules outside C, H, O, N, F, S, Cl, Br) runs — and is
counted — when the file is converted.

Each molecule gets explicit hydrogens and up to ``n_conformers`` RDKit ETKDGv3 conformers (seeded per
molecule from ``seed`` and its position in the shuffled list), each relaxed with MMFF94. Failures are
counted by reason and the molecule skipped: ``embed_failed`` (ETKDG found no conformer),
``mmff_unavailable`` (no MMFF94 parameters, e.g. metals), ``too_large`` (an atom farther than
``max_radius`` Å from the centroid in some conformer). Generation stops at ``n_molecules`` accepted
molecules.

**Size.** The CPU preset voxelises on a 32³ grid at 0.25 Å — an 8 Å box, as VoxMol's QM9 setting — so
the default molecules are small (4–9 heavy atoms, drug-like fragments from these sets) and every
conformer has all atoms within ``max_radius = 3.4`` Å of its centroid: with the ±0.5 Å training shift
every atom centre stays inside the ±4 Å box. For the 64³ (16 Å) grid pass e.g.
``--max-heavy-atoms 30 --max-radius 7.4``.

Output (written atomically): ``--out X.pkl`` (MiDi pickle: a list of ``(smiles, [Mol, ...])``, one
single-conformer Mol per conformer, explicit H), ``--out X.sdf`` (one record per conformer, title and
``smiles`` property = the SMILES), or ``--out X.h5``: the pickle is written next to it (``X.pkl``) and
converted into the store ``X.h5`` by :func:`tasks.voxels.data.convert.convert_to_store` — the pipeline real data
goes through. The store's attributes record the generator settings and counts.

    python -m tasks.voxels.generate --out data/geom_embedded.h5 --seed 0
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import functools
import json
import logging
import pickle
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from equivrepro.atomic import atomic_path, atomic_write
from equivrepro.molecules import bundled_molecules
from tasks.voxels.data.convert import convert_to_store

log = logging.getLogger("tasks.voxels.generate")

__all__ = ["GeneratorConfig", "EmbeddedFile", "embedded_file", "candidate_smiles", "embed_molecule", "generate", "main"]


@dataclass
class GeneratorConfig:
    """Settings of one embedded data set (stored in the store's attributes)."""

    seed: int = 0
    n_molecules: int = 250
    n_conformers: int = 5
    min_heavy_atoms: int = 4
    max_heavy_atoms: int = 9
    max_radius: float | None = 3.4  # Å from the centroid; None: no limit
    mmff_iters: int = 500


@functools.lru_cache(maxsize=4)
def _all_candidates(min_heavy: int, max_heavy: int) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """Sorted canonical SMILES passing the filters and rejection counts (cached)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    counts: Counter = Counter()
    seen: set[str] = set()
    for mol, _source in bundled_molecules(counts):
        if not min_heavy <= mol.GetNumHeavyAtoms() <= max_heavy:
            counts["rejected_size"] += 1
            continue
        seen.add(Chem.MolToSmiles(mol))
    return tuple(sorted(seen)), tuple(sorted(counts.items()))


def candidate_smiles(cfg: GeneratorConfig, counts: Counter | None = None) -> list[str]:
    """Filtered, de-duplicated canonical SMILES in a seeded random order (rejections go to ``counts``)."""
    smiles, rejected = _all_candidates(int(cfg.min_heavy_atoms), int(cfg.max_heavy_atoms))
    if counts is not None:
        counts.update(dict(rejected))
    order = np.random.default_rng(cfg.seed).permutation(len(smiles))
    return [smiles[i] for i in order]


def embed_molecule(smiles: str, cfg: GeneratorConfig, seed: int):
    """``(list of single-conformer Mols with explicit H, None)`` or ``(None, failure reason)``."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = 1
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(cfg.n_conformers), params=params))
    if not ids:
        return None, "embed_failed"
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        return None, "mmff_unavailable"
    if cfg.max_radius is not None and _max_radius(mol, ids) > cfg.max_radius + _RELAX_SLACK:
        return None, "too_large"  # decided before the (costlier) MMFF relaxation
    AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=int(cfg.mmff_iters))
    if cfg.max_radius is not None and _max_radius(mol, ids) > cfg.max_radius:
        return None, "too_large"
    return [Chem.Mol(mol, False, cid) for cid in ids], None


#: MMFF relaxation moves atoms of these small molecules by far less than this (Å), so an ETKDG
#: conformer this much beyond ``max_radius`` is rejected before relaxation.
_RELAX_SLACK = 0.5


def _max_radius(mol, ids) -> float:
    """Largest distance (Å) of an atom from its conformer's centroid, over conformers ``ids``."""
    out = 0.0
    for cid in ids:
        x = mol.GetConformer(cid).GetPositions()
        out = max(out, float(np.linalg.norm(x - x.mean(0), axis=1).max()))
    return out


def _write_pickle(path: Path, data: list) -> None:
    atomic_write(path, lambda fh: pickle.dump(data, fh, protocol=4))


def _write_sdf(path: Path, data: list) -> None:
    from rdkit import Chem

    with atomic_path(path) as tmp:
        writer = Chem.SDWriter(tmp)
        for smiles, confs in data:
            for m in confs:
                m = Chem.Mol(m)
                m.SetProp("_Name", smiles)
                m.SetProp("smiles", smiles)
                writer.write(m)
        writer.close()


def generate(out: str | Path, cfg: GeneratorConfig) -> dict:
    """Generate the data set into ``out`` (``.pkl``/``.pickle``, ``.sdf`` or ``.h5``); returns a summary.

    Summary: ``molecules`` / ``conformers`` generated, ``failures`` (by reason), ``rejected`` (source
    filters), ``candidates_tried``, ``seconds``, and for ``.h5`` the conversion counts under ``store``.
    """
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    out = Path(out)
    t0 = time.perf_counter()
    rejected: Counter = Counter()
    failures: Counter = Counter()
    data: list = []
    tried = 0
    for i, smiles in enumerate(candidate_smiles(cfg, rejected)):
        if len(data) >= cfg.n_molecules:
            break
        tried += 1
        confs, reason = embed_molecule(smiles, cfg, seed=(int(cfg.seed) * 1_000_003 + i) % (2**31 - 1))
        if reason:
            failures[reason] += 1
            continue
        data.append((smiles, confs))
    if len(data) < cfg.n_molecules:
        log.warning("only %d of %d molecules could be generated from RDKit's bundled sets with %s", len(data), cfg.n_molecules, cfg)
    summary = {
        "molecules": len(data),
        "conformers": sum(len(c) for _, c in data),
        "candidates_tried": tried,
        "failures": dict(sorted(failures.items())),
        "rejected": dict(sorted(rejected.items())),
        "generator": asdict(cfg),
    }
    suffix = out.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        _write_pickle(out, data)
    elif suffix == ".sdf":
        _write_sdf(out, data)
    elif suffix == ".h5":
        raw = out.with_suffix(".pkl")
        _write_pickle(raw, data)
        summary["raw"] = str(raw)
        summary["seconds_generate"] = round(time.perf_counter() - t0, 2)
        summary["store"] = convert_to_store(raw, out, extra_attrs={"generator": asdict(cfg), "generation": dict(summary)})
    else:
        raise ValueError(f"--out must end in .pkl, .pickle, .sdf or .h5, got {out}")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output file: .pkl/.pickle (MiDi pickle), .sdf, or .h5 (pickle + store)")
    defaults = GeneratorConfig()
    for name, value in asdict(defaults).items():
        kind = (lambda v: None if v.lower() == "none" else float(v)) if name == "max_radius" else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = generate(out, GeneratorConfig(**args))
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
