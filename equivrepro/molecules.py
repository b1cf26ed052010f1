"""Real drug-like molecules that ship with RDKit: the source of every task's embedded molecular data.

RDKit's data and contrib folders carry a few SMILES sets (no download needed). :func:`bundled_smiles`
streams them as ``(SMILES string as written in the file, source name)``, :func:`bundled_molecules` parses them,
and :func:`neutral_candidates` is the selection the labelled generators share (elements, neutral closed-shell,
heavy-atom range, de-duplicated, in a seeded order).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["RDKIT_SMILES_SOURCES", "bundled_smiles", "bundled_molecules", "neutral_candidates"]

#: (name, (RDKit folder: "data" = RDConfig.RDDataDir | "contrib" = RDConfig.RDContribDir, relative path), format)
RDKIT_SMILES_SOURCES = (
    ("RDKit WEHI screening compounds", ("data", "Pains/test_data/wehi_mols.csv"), "csv"),
    ("RDKit ChEMBL CHEMBL2321810 ligands", ("contrib", "FreeWilson/data/CHEMBL2321810.smi"), "smi"),
    ("RDKit NCI first 5K", ("data", "NCI/first_5K.smi"), "smi"),
)


def _read(kind: str, path: Path) -> Iterator[str]:
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                yield line.split(",")[0].strip().strip('"') if kind == "csv" else line.split()[0]


def bundled_molecules(counts: Counter) -> Iterator[tuple[object, str]]:
    """The bundled SMILES parsed into single-fragment RDKit molecules, with their source name. Unparseable
    and multi-fragment entries are dropped and counted (``rejected_unparseable``, ``rejected_multi_fragment``)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    for smi, source in bundled_smiles(counts):
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            counts["rejected_unparseable"] += 1
        elif len(Chem.GetMolFrags(mol)) != 1:
            counts["rejected_multi_fragment"] += 1
        else:
            yield mol, source


def bundled_smiles(counts: Counter | None = None) -> Iterator[tuple[str, str]]:
    """Every SMILES of :data:`RDKIT_SMILES_SOURCES`, in file order, with its source name. A source file
    missing from this RDKit installation is logged and counted as ``source_missing`` in ``counts``."""
    from rdkit import RDConfig

    roots = {"data": Path(RDConfig.RDDataDir), "contrib": Path(RDConfig.RDContribDir)}
    for name, (root, rel), kind in RDKIT_SMILES_SOURCES:
        path = roots[root] / rel
        if not path.exists():
            if counts is not None:
                counts["source_missing"] += 1
            log.warning("RDKit data file %s is missing; skipping source %r", path, name)
            continue
        for smi in _read(kind, path):
            yield smi, name


def neutral_candidates(
    elements: Iterable[int], min_heavy: int, max_heavy: int, seed: int, counts: Counter | None = None
) -> list[tuple[str, str]]:
    """``(canonical SMILES, source)`` of the bundled molecules with only ``elements`` (atomic numbers), net charge 0,
    no radicals and ``min_heavy ≤ heavy atoms ≤ max_heavy``, de-duplicated by canonical SMILES, in a seeded random
    order. Rejections are added to ``counts`` (``rejected_element``, ``rejected_charged_or_radical``,
    ``rejected_size``, ``rejected_duplicate`` and those of :func:`bundled_molecules`)."""
    pairs, rejected = _filtered(tuple(sorted(set(int(z) for z in elements))), int(min_heavy), int(max_heavy))
    if counts is not None:
        counts.update(dict(rejected))
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[i] for i in order]


@functools.lru_cache(maxsize=4)
def _filtered(elements: tuple[int, ...], min_heavy: int, max_heavy: int) -> tuple[tuple[tuple[str, str], ...], tuple]:
    """Sorted pairs passing the filters and the rejection counts (cached: parsing the ~16k SMILES takes seconds)."""
    from rdkit import Chem

    allowed = set(elements)
    counts: Counter = Counter()
    seen: dict[str, str] = {}
    for mol, source in bundled_molecules(counts):
        if any(a.GetAtomicNum() not in allowed for a in mol.GetAtoms()):
            counts["rejected_element"] += 1
        elif Chem.GetFormalCharge(mol) != 0 or any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
            counts["rejected_charged_or_radical"] += 1
        elif not min_heavy <= mol.GetNumHeavyAtoms() <= max_heavy:
            counts["rejected_size"] += 1
        else:
            can = Chem.MolToSmiles(mol)
            if can in seen:
                counts["rejected_duplicate"] += 1
            else:
                seen[can] = source
    return tuple(sorted(seen.items())), tuple(sorted(counts.items()))
