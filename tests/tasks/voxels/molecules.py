"""Small MiDi-format pickles and SDF files with known content, written by the tests themselves."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from rdkit import Chem


def spread_points(rng: np.random.Generator, n: int, scale: float, min_distance: float = 0.7) -> np.ndarray:
    """``(n, 3)`` Gaussian points of std ``scale`` (Å), redrawn until no two are closer than ``min_distance``
    (physically plausible for the readers' shortest-distance check); the spread grows if a point cannot be placed."""
    out: list[np.ndarray] = []
    while len(out) < n:
        for _ in range(100):
            p = rng.normal(0.0, scale, size=3)
            if all(np.linalg.norm(p - q) >= min_distance for q in out):
                out.append(p)
                break
        else:
            scale *= 1.2
    return np.array(out).reshape(n, 3)


def conformer_mols(smiles: str, n_conformers: int, seed: int, scale: float = 1.2) -> list[Chem.Mol]:
    """``n_conformers`` single-conformer copies of ``smiles`` (explicit H) at random coordinates (Å, no two
    atoms closer than 0.7 Å)."""
    base = Chem.AddHs(Chem.MolFromSmiles(smiles))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_conformers):
        m = Chem.Mol(base)
        conf = Chem.Conformer(m.GetNumAtoms())
        for i, p in enumerate(spread_points(rng, m.GetNumAtoms(), scale)):
            conf.SetAtomPosition(i, p.tolist())
        m.AddConformer(conf, assignId=True)
        out.append(m)
    return out


#: (smiles, number of conformers); P and I molecules must be dropped by the GEOM-drugs element filter.
STANDARD = [("CCO", 7), ("c1ccccc1", 3), ("CP(C)C", 2), ("OCCN", 6), ("CCI", 4), ("FC(Cl)Br", 1), ("CS", 5)]


def standard_records(n_repeat: int = 1) -> list[tuple[str, list[Chem.Mol]]]:
    return [(smi, conformer_mols(smi, n, seed=i)) for i, (smi, n) in enumerate(STANDARD * n_repeat)]


def write_pickle(path: Path, records, protocol: int = 4) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(records, fh, protocol=protocol)
    return path


def write_sdf(path: Path, records, name_prefix: str = "") -> Path:
    """One SDF record per conformer, titled with the SMILES (plus ``name_prefix``)."""
    w = Chem.SDWriter(str(path))
    for smi, mols in records:
        for m in mols:
            m = Chem.Mol(m)
            m.SetProp("_Name", name_prefix + smi)
            m.SetProp("smiles", smi)
            w.write(m)
    w.close()
    return path
