"""Real drug-like molecules that ship with RDKit: the source of every task's embedded molecular data.

RDKit's data and contrib folders carry a few SMILES sets (no download needed). :func:`bundled_smiles`
streams them as ``(SMILES string as written in the file, source name)``; the generators of the
force-field and voxel data filter them (parse, fragments, elements, size) in their own way.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["RDKIT_SMILES_SOURCES", "bundled_smiles", "bundled_molecules"]

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
