"""The SDF reader (optionally ``.sdf.gz``), read with RDKit (``removeHs=False, sanitize=False``).

``group_by='name'`` (default) groups records with the same title line (``_Name``) into one molecule,
wherever they occur in the file; ``'record'`` makes every record its own molecule. The stored SMILES is
the record's ``smiles``/``SMILES`` property, else its title. An unparseable record or one with flat (2-D)
coordinates (:func:`tasks.voxels.data.conformers.mol_conformers`) is a
:class:`~equivrepro.data.DataError` naming the file, the record number and its title.
"""

from __future__ import annotations

import gzip
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from equivrepro.data import DataError, check_choice
from tasks.voxels.data.conformers import mol_conformers

log = logging.getLogger("tasks.voxels.data")

__all__ = ["read_sdf", "SDF_SUFFIXES"]

SDF_SUFFIXES = (".sdf", ".sdf.gz")


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_sdf(
    path: str | Path,
    group_by: str = "name",
    bad_records: str = "error",
    counts: Counter | None = None,
) -> Iterator[tuple[int, str, str, np.ndarray, np.ndarray]]:
    """Records of an SDF file: ``(record, key, smiles, Z (n,), coords (n, 3) Å)``, one conformer each.

    ``key`` identifies the molecule: the title line for ``group_by='name'`` (a record with an empty
    title is its own molecule), ``'#record<i>'`` for ``'record'``. Grouping and the conformer limit are
    applied by :func:`tasks.voxels.data.convert.convert_to_store`. Bad records raise (or are counted in
    ``counts['bad_record']`` with ``bad_records='skip'``).
    """
    from rdkit import Chem, RDLogger

    check_choice(group_by, "data.sdf_group_by", ("name", "record"))
    path = str(path)
    counts = counts if counts is not None else Counter()
    RDLogger.DisableLog("rdApp.*")
    try:
        fh = _open_binary(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc})") from None
    with fh:
        for i, mol in enumerate(Chem.ForwardSDMolSupplier(fh, removeHs=False, sanitize=False)):
            name = mol.GetProp("_Name").strip() if mol is not None and mol.HasProp("_Name") else ""
            where = f"{path}: SDF record {i}" + (f" ({name!r})" if name else "")
            try:
                if mol is None:
                    raise DataError(f"{where}: RDKit cannot parse this record")
                z, x = next(mol_conformers(mol, where))
            except DataError:
                if bad_records != "skip":
                    raise
                counts["bad_record"] += 1
                log.warning("skipping bad record: %s", where, exc_info=True)
                continue
            smiles = next((mol.GetProp(k) for k in ("smiles", "SMILES") if mol.HasProp(k)), name)
            key = name if (group_by == "name" and name) else f"#record{i}"
            yield i, key, smiles, z, x
