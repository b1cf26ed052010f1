"""Structure files → Cα chains: finding PDB / mmCIF files, reading them (gemmi), parsing every chain.

**Parsing** (:func:`parse_structure_file`): the first model only; alternative conformations and
microheterogeneity reduced to the first conformer; waters removed; each chain's polymer part
(``gemmi.Chain.get_polymer``). Files without TER records (MD output) put solvent and ions into the
polymer: trailing residues that are not amino acids are trimmed (counted as ``trimmed_tail_residues``).
A residue without a Cα stays in the chain with a NaN position (so the residue numbering and the
chain-break flags stay honest). Every chain records its entity id (mmCIF ``_entity_poly`` / ``_struct_asym``;
PDB ``COMPND MOL_ID`` / ``CHAIN``), which maps RCSB's per-entity sequence clusters onto chains.

**Bad files** (:func:`read_structure`) raise :class:`~equivrepro.data.DataError` naming the file: not a
structure, corrupt gzip, no atoms, or truncated — gemmi rejects the text (broken gzip stream, unterminated
mmCIF field, a short coordinate line), the last line has no line end, or the file contradicts what it says
about its own extent (:mod:`tasks.flowmatching.data.completeness`, which also says what cannot be detected).
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from equivrepro.data import DataError
from tasks.flowmatching.data.completeness import COORD_RECORDS, check_complete

__all__ = [
    "ANGSTROM_PER_NM", "PARSER_VERSION", "STANDARD_AMINO_ACIDS", "STRUCTURE_SUFFIXES", "mdanalysistests_data_dir",
    "find_structure_files", "entry_id_for", "chain_id_for", "read_structure", "parse_structure_file",
]

ANGSTROM_PER_NM = 10.0
PARSER_VERSION = 3  # bump whenever parse_structure_file changes what it returns (invalidates caches)
STRUCTURE_SUFFIXES = (".pdb", ".pdb.gz", ".ent", ".ent.gz", ".cif", ".cif.gz", ".mmcif", ".mmcif.gz")
STANDARD_AMINO_ACIDS: dict[str, str] = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
    "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
    "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V",
}
#: Force-field names of standard amino acids in other protonation states (CHARMM, AMBER): MD files use them.
FORCEFIELD_ALIASES: dict[str, str] = {
    "HSD": "H", "HSE": "H", "HSP": "H", "HID": "H", "HIE": "H", "HIP": "H", "HSC": "H",
    "CYX": "C", "CYM": "C", "ASH": "D", "GLH": "E", "LYN": "K", "LSN": "K",
}
_ONE_LETTER = set(STANDARD_AMINO_ACIDS.values())


def mdanalysistests_data_dir() -> Path:
    """The ``data`` directory of the installed MDAnalysisTests package (located without importing it)."""
    spec = importlib.util.find_spec("MDAnalysisTests")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the embedded protein data needs the MDAnalysisTests package "
            "(`pip install --no-deps mdanalysistests==2.11.0`, done by `make venv`), or set data.root to a PDB directory"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not path.is_dir():
        raise DataError(f"MDAnalysisTests is installed but has no data directory at {path}")
    return path


def find_structure_files(root: Path, suffixes: Sequence[str] = STRUCTURE_SUFFIXES) -> list[Path]:
    """All files under ``root`` (recursively) whose name ends with one of ``suffixes``, sorted."""
    root = Path(root)
    if root.is_file():
        raise DataError(f"data.root={root} is a file, not a directory: set data.root=<the directory of PDB / mmCIF files>"
                        f" (e.g. data.root={root.parent})")
    if not root.is_dir():
        raise DataError(f"data.root={root}: protein structure directory does not exist")
    suffixes = tuple(s.lower() for s in suffixes)
    out = [p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)]
    return sorted(out)


def entry_id_for(path: Path) -> str:
    """PDB entry id from a file name: ``1ABC.cif.gz`` → ``1abc``, ``pdb1abc.ent.gz`` → ``1abc``."""
    name = path.name.lower()
    for suffix in sorted(STRUCTURE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.startswith("pdb") and len(name) == 7:
        name = name[3:]
    return name


def chain_id_for(entry: str, chain: str) -> str:
    """The id used in cluster files: ``<entry>_<chain>`` (entry lower-case; chain as in the file)."""
    return f"{entry.lower()}_{chain}"


def _read_text(path: Path) -> str:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc}); the file is corrupt or truncated") from exc
    return raw.decode("latin-1")


def _is_cif(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return name.endswith((".cif", ".mmcif"))


def read_structure(path: str | Path):
    """Read a PDB or mmCIF file (optionally gzipped) into a ``gemmi.Structure``.

    Raises :class:`~equivrepro.data.DataError` naming the file when it cannot be read, looks
    truncated (see :mod:`tasks.flowmatching.data.completeness`), or holds no atoms.
    """
    return _load(Path(path))[0]


def _load(path: Path):
    """``(gemmi.Structure, the file's text)``; see :func:`read_structure`."""
    import gemmi

    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    if not text.endswith("\n") and (last.startswith(COORD_RECORDS) or _is_cif(path) and last.strip() != "#"):
        raise DataError(f"{path}: the file looks truncated (its last line {last[:60]!r} has no line end)")
    block = None
    try:
        if _is_cif(path):
            block = gemmi.cif.read_string(text).sole_block()
            st = gemmi.make_structure_from_block(block)
        else:
            st = gemmi.read_pdb_string(text)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: not a readable {'mmCIF' if _is_cif(path) else 'PDB'} file ({exc})") from exc
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise DataError(f"{path}: the file contains no atoms")
    check_complete(path, text, st, block)
    return st, text


def _compnd_entities(text: str) -> dict[str, str]:
    """``{chain: MOL_ID}`` from a PDB file's COMPND records (``MOL_ID: 1; … CHAIN: A, B;``)."""
    body = " ".join(ln[10:80] for ln in text.splitlines() if ln.startswith("COMPND"))
    out: dict[str, str] = {}
    mol_id = None
    for token in body.split(";"):
        key, _, value = token.partition(":")
        key, value = key.strip().upper(), value.strip()
        if key == "MOL_ID":
            mol_id = value
        elif key == "CHAIN" and mol_id:
            for chain in value.split(","):
                if chain.strip() and chain.strip().upper() != "NULL":
                    out[chain.strip()] = mol_id
    return out


def _residue_class(name: str) -> tuple[str, str]:
    """(class, one-letter) of a residue name: class ∈ standard | modified | other_aa | nonpolymer."""
    import gemmi

    if name in STANDARD_AMINO_ACIDS:
        return "standard", STANDARD_AMINO_ACIDS[name]
    if name in FORCEFIELD_ALIASES:
        return "standard", FORCEFIELD_ALIASES[name]
    info = gemmi.find_tabulated_residue(name)
    if info is None:
        return "unknown", "X"
    if info.is_amino_acid():
        parent = info.one_letter_code.upper()
        if info.kind == gemmi.ResidueKind.AA and parent in _ONE_LETTER and name != "UNK":
            return "modified", parent
        return "other_aa", "X"
    return "nonpolymer", "X"


def parse_structure_file(path: str | Path) -> dict[str, Any]:
    """Parse every chain of a structure file, before any filter (this is what the cache stores).

    Returns ``{"methods": [str], "resolution": float | None, "chains": [chain, ...], "trimmed_tail_residues": int}``
    where a chain is ``{"chain": name, "entity": str | None, "sequence": str, "resseq": (L,) int64, "ca_angstrom": (L, 3)
    float32 (NaN where no Cα), "reject": None | "not_protein" | "nonstandard_residue" | "no_ca",
    "modified": int}``. Raises :class:`~equivrepro.data.DataError` (naming the file) on unreadable input.
    """
    import gemmi

    path = Path(path)
    st, text = _load(path)
    st.remove_alternative_conformations()
    st.remove_hydrogens()
    st.remove_waters()
    st.setup_entities()
    # EXPDTA (PDB) / _exptl.method (mmCIF) land in st.info; REMARK 200/210 / _exptl rows in meta.experiments
    stated = [str(e.method) for e in st.meta.experiments] + str(dict(st.info).get("_exptl.method", "")).split(";")
    methods = sorted({m.strip().upper() for m in stated if m.strip()})
    resolution = float(st.resolution) if st.resolution and st.resolution > 0 else None
    compnd = None if _is_cif(path) else _compnd_entities(text)
    chains: list[dict[str, Any]] = []
    trimmed = 0
    model = st[0]
    for chain in model:
        residues = list(chain.get_polymer())
        if not residues:
            continue  # ligand-only / ion-only chains are not polymers at all: nothing to count
        classes = [_residue_class(r.name) for r in residues]
        # Files without TER put ions and solvent after the protein inside the "polymer": trim the tail.
        end = len(residues)
        while end > 0 and classes[end - 1][0] in ("nonpolymer", "unknown") and residues[end - 1].find_atom("CA", "*") is None:
            end -= 1
        trimmed += len(residues) - end
        residues, classes = residues[:end], classes[:end]
        name = chain.name.strip() or "-"
        if compnd is not None:
            entity_id = compnd.get(name)
        else:
            entity = st.get_entity_of(chain.get_polymer())
            entity_id = entity.name if entity is not None else None
        record: dict[str, Any] = {"chain": name, "entity": entity_id, "sequence": "", "resseq": np.zeros(0, np.int64),
                                  "ca_angstrom": np.zeros((0, 3), np.float32), "reject": None, "modified": 0}
        chains.append(record)
        ptype = chain.get_polymer().check_polymer_type()
        n_aa = sum(c in ("standard", "modified", "other_aa") for c, _ in classes)
        if n_aa == 0 or ptype not in (gemmi.PolymerType.PeptideL, gemmi.PolymerType.Unknown):
            record["reject"] = "not_protein"
            continue
        resseq = np.array([r.seqid.num for r in residues], dtype=np.int64)
        ca = np.full((len(residues), 3), np.nan, dtype=np.float32)
        for i, r in enumerate(residues):
            atom = r.find_atom("CA", "*")
            if atom is not None:
                ca[i] = (atom.pos.x, atom.pos.y, atom.pos.z)
        record.update(
            sequence="".join(letter for _, letter in classes),
            resseq=resseq,
            ca_angstrom=ca,
            modified=sum(c == "modified" for c, _ in classes),
        )
        if any(c not in ("standard", "modified") for c, _ in classes):
            record["reject"] = "nonstandard_residue"
            record["nonstandard"] = sorted({r.name for r, (c, _) in zip(residues, classes) if c not in ("standard", "modified")})
        elif not np.isfinite(ca).all(axis=1).any():
            record["reject"] = "no_ca"
    return {"methods": methods, "resolution": resolution, "chains": chains, "trimmed_tail_residues": trimmed}
