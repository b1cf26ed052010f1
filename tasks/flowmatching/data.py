"""Protein Cα data for flow matching: PDB / mmCIF parsing, Proteina's chain filters, a cache, splits.

Every item is one protein chain::

    {"x1": (L, 3) float32 nm (Cα, centred on the observed Cα), "residue_index": (L,) long,
     "chain_break": (L,) float32, "ca_mask": (L,) bool}

and :meth:`ProteinChainDataModule.collate` pads a list of items into a batch with ``mask (B, N)`` =
"real residue with an observed Cα" (``ca_mask`` is folded into ``mask`` and dropped).

**Units.** Files store Å; coordinates are converted to nm (``÷ 10``) once, when an item is built
(Proteina works in nm: its noise is N(0, 1 nm²) per coordinate). Names carry the unit (``ca_angstrom``
in the cache, ``ca_nm`` in the store).

**Parsing** (gemmi, :func:`parse_structure_file`): the first model only; alternative conformations and
microheterogeneity reduced to the first conformer; waters removed; each chain's polymer part
(``gemmi.Chain.get_polymer``). Files without TER records (MD output) put solvent and ions into the
polymer: trailing residues that are not amino acids are trimmed (counted as ``trimmed_tail_residues``).
Residue index = PDB residue number re-based so the chain's first polymer residue is 1.
``chain_break[i] = 1`` when the link from residue ``i`` to ``i + 1`` is broken: a residue-number gap,
a missing Cα at either end, or a Cα–Cα distance above ``chain_break_angstrom`` (4.2 Å by default).
A residue without a Cα stays in the chain with ``ca_mask = False`` (so the residue numbering and the
chain-break flags stay honest); it never enters the loss.

**Filters** (Proteina's PDB selector; every rejected chain is counted by reason in :meth:`describe`):

* ``not_protein`` — the polymer is not an L-peptide (DNA, RNA, …) or has no amino acid;
* ``nonstandard_residue`` — a residue that is neither one of the 20 standard amino acids (force-field
  protonation names such as CHARMM's ``HSD`` count as their amino acid) nor a
  modified amino acid with a standard parent (``UNK``, D-amino acids, unknown names, a ligand inside
  the chain). With ``modified_residues="map"`` (default) modified residues such as ``MSE`` count as
  their parent (counted as ``modified_residues_mapped``; Proteina's filter reads the canonical
  sequence, where MSE is M); ``"reject"`` rejects those chains too;
* ``no_ca`` — no residue of the chain has a Cα atom;
* ``too_short`` / ``too_long`` — observed (Cα-bearing) residues outside ``[min_length, max_length]``
  (upstream 50–256; the embedded data widens it to 30–300);
* ``experiment_method`` — the file states its experimental method(s) and none is diffraction or
  electron microscopy (``experiment_methods``); files that state none pass (counted ``method_unstated``);
* ``resolution`` — the file states a resolution above ``max_resolution`` Å; files that state none pass
  (counted ``resolution_unstated``);
* ``duplicate_sequence`` — with ``deduplicate_sequences``, a chain whose sequence equals an earlier
  kept chain's (keys in sorted order);
* ``unreadable_file`` — the whole file (all its chains) could not be read: not a structure, truncated,
  corrupt gzip, no atoms. With ``skip_unreadable_files=True`` (default: one bad file in a 200k-file
  mirror must not stop a run) the file is counted and logged with its name and the reason; with
  ``False`` :class:`~equivrepro.data.DataError` is raised, naming the file.

Truncation is detected when gemmi rejects the text (broken gzip stream, unterminated mmCIF field, a
short coordinate line) or when the text does not end with a newline and its last line is a
coordinate record; a PDB file cut exactly at a line boundary cannot be told from a shorter file.

**Cache.** One ``.pt`` file per structure file under ``cache_dir`` (the parse of all its chains, before
any filter, so changing a filter never re-parses), written atomically and keyed by the file's absolute
path, size, mtime and the parser version; a changed file is re-parsed. ``cache_dir=None`` parses every
time. ``num_workers > 0`` parses in a process pool.

**Splits.** With ``clusters_tsv`` (MMseqs2 ``easy-cluster`` ``*_cluster.tsv``: ``representative<TAB>member``,
ids ``<pdb>_<chain>`` like ``1abc_A``) whole clusters are held out (:func:`equivrepro.data.heldout_split`
over clusters) and training is cluster-random (:class:`ClusterRandomDataset`). Without it the chains
are split directly. Training subsets (100 % / 1 % / 0.1 %) are nested (:func:`equivrepro.data.nested_subset`,
over clusters when there are clusters), and the held-out set never depends on the subset size.

**Embedded data** (``root=None``): the real PDB and mmCIF files shipped in the installed
``MDAnalysisTests`` package (crystal structures, DSSP test chains, AdK, MD snapshots), run through
this same pipeline. Nothing is downloaded and nothing is synthetic.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from equivrepro.atomic import atomic_write
from equivrepro.data import DataError, DataModule, heldout_split, nested_subset, pad_collate
from equivrepro.task import Batch

log = logging.getLogger("tasks.flowmatching.data")

__all__ = [
    "ANGSTROM_PER_NM",
    "STANDARD_AMINO_ACIDS",
    "STRUCTURE_SUFFIXES",
    "mdanalysistests_data_dir",
    "find_structure_files",
    "read_structure",
    "parse_structure_file",
    "chain_break_flags",
    "chain_item",
    "load_clusters",
    "chain_id_for",
    "ChainStore",
    "ChainDataset",
    "ClusterRandomDataset",
    "ProteinChainDataModule",
]

ANGSTROM_PER_NM = 10.0
PARSER_VERSION = 2  # bump whenever parse_structure_file changes what it returns (invalidates caches)
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
_COORD_RECORDS = ("ATOM", "HETATM", "ANISOU")
REJECT_REASONS = (
    "unreadable_file", "not_protein", "nonstandard_residue", "no_ca", "too_short", "too_long",
    "experiment_method", "resolution", "duplicate_sequence",
)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
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
    if not root.is_dir():
        raise DataError(f"protein structure directory {root} does not exist (set data.root)")
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
    truncated, or holds no atoms.
    """
    import gemmi

    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    if not text.endswith("\n") and (last.startswith(_COORD_RECORDS) or _is_cif(path) and last.strip() != "#"):
        raise DataError(f"{path}: the file looks truncated (its last line {last[:60]!r} has no line end)")
    try:
        if _is_cif(path):
            doc = gemmi.cif.read_string(text)
            st = gemmi.make_structure_from_block(doc.sole_block())
        else:
            st = gemmi.read_pdb_string(text)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: not a readable {'mmCIF' if _is_cif(path) else 'PDB'} file ({exc})") from exc
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise DataError(f"{path}: the file contains no atoms")
    return st


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
    where a chain is ``{"chain": name, "sequence": str, "resseq": (L,) int64, "ca_angstrom": (L, 3)
    float32 (NaN where no Cα), "reject": None | "not_protein" | "nonstandard_residue" | "no_ca",
    "modified": int}``. Raises :class:`~equivrepro.data.DataError` (naming the file) on unreadable input.
    """
    import gemmi

    path = Path(path)
    st = read_structure(path)
    st.remove_alternative_conformations()
    st.remove_hydrogens()
    st.remove_waters()
    st.setup_entities()
    # EXPDTA (PDB) / _exptl.method (mmCIF) land in st.info; REMARK 200/210 / _exptl rows in meta.experiments
    stated = [str(e.method) for e in st.meta.experiments] + str(dict(st.info).get("_exptl.method", "")).split(";")
    methods = sorted({m.strip().upper() for m in stated if m.strip()})
    resolution = float(st.resolution) if st.resolution and st.resolution > 0 else None
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
        record: dict[str, Any] = {"chain": name, "sequence": "", "resseq": np.zeros(0, np.int64),
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


# --------------------------------------------------------------------------------------------------
# Per-chain tensors
# --------------------------------------------------------------------------------------------------
def chain_break_flags(ca_angstrom: np.ndarray, resseq: np.ndarray, max_ca_ca_angstrom: float = 4.2) -> np.ndarray:
    """``(L,)`` bool: True at ``i`` when the link ``i → i+1`` is broken (the last residue is False).

    A link is broken by a residue-number gap (``resseq[i+1] − resseq[i] > 1``), a missing Cα
    (NaN row) at either end, or a Cα–Cα distance above ``max_ca_ca_angstrom`` (Å).
    """
    n = len(resseq)
    out = np.zeros(n, dtype=bool)
    if n < 2:
        return out
    d = np.linalg.norm(ca_angstrom[1:].astype(np.float64) - ca_angstrom[:-1].astype(np.float64), axis=-1)
    gap = (resseq[1:] - resseq[:-1]) > 1
    broken = gap | ~np.isfinite(d) | (np.nan_to_num(d, nan=np.inf) > max_ca_ca_angstrom)
    out[:-1] = broken
    return out


def chain_item(ca_angstrom: np.ndarray, resseq: np.ndarray, max_ca_ca_angstrom: float = 4.2) -> dict[str, torch.Tensor]:
    """The item of one chain: centred Cα in **nm**, re-based residue index, chain breaks, Cα mask.

    ``ca_angstrom (L, 3)`` Å with NaN rows for residues without a Cα; ``resseq (L,)`` PDB numbers.
    """
    has_ca = np.isfinite(ca_angstrom).all(axis=1)
    ca_nm = np.where(has_ca[:, None], ca_angstrom, 0.0).astype(np.float64) / ANGSTROM_PER_NM
    centre = ca_nm[has_ca].mean(axis=0) if has_ca.any() else np.zeros(3)
    ca_nm = np.where(has_ca[:, None], ca_nm - centre, 0.0)
    return {
        "x1": torch.from_numpy(ca_nm.astype(np.float32)),
        "residue_index": torch.from_numpy((resseq - resseq[0] + 1).astype(np.int64)),
        "chain_break": torch.from_numpy(chain_break_flags(ca_angstrom, resseq, max_ca_ca_angstrom).astype(np.float32)),
        "ca_mask": torch.from_numpy(has_ca),
    }


class ChainStore:
    """Kept chains in flat tensors (cheap to share with DataLoader workers): item ``i`` is rows
    ``offsets[i]:offsets[i+1]``. ``keys[i]`` = ``<file relative to root>:<chain>``, ``ids[i]`` =
    ``<entry>_<chain>``."""

    def __init__(self, items: Sequence[Mapping[str, torch.Tensor]], keys: Sequence[str], ids: Sequence[str], sequences: Sequence[str]):
        lengths = torch.tensor([int(it["x1"].shape[0]) for it in items], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        cat = lambda key, empty: torch.cat([it[key] for it in items]) if items else empty  # noqa: E731
        self.ca_nm = cat("x1", torch.zeros(0, 3))
        self.residue_index = cat("residue_index", torch.zeros(0, dtype=torch.long))
        self.chain_break = cat("chain_break", torch.zeros(0))
        self.ca_mask = cat("ca_mask", torch.zeros(0, dtype=torch.bool))
        self.keys, self.ids, self.sequences = list(keys), list(ids), list(sequences)

    def __len__(self) -> int:
        return len(self.keys)

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def item(self, i: int) -> dict[str, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return {"x1": self.ca_nm[a:b], "residue_index": self.residue_index[a:b], "chain_break": self.chain_break[a:b], "ca_mask": self.ca_mask[a:b]}


class ChainDataset(Dataset):
    """The chains ``indices`` of a :class:`ChainStore`, in order."""

    def __init__(self, store: ChainStore, indices: Sequence[int] | torch.Tensor):
        self.store = store
        self.indices = torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.store.item(int(self.indices[i]))

    def chain_keys(self) -> list[str]:
        return [self.store.keys[int(i)] for i in self.indices]


class ClusterRandomDataset(Dataset):
    """Cluster-random sampling (Proteina's ``ClusterSampler``): an index names a cluster, and the item
    is one of its members chosen by a generator seeded with ``(seed, epoch, index)``.

    ``clusters`` is a list of member lists (store indices). Indices are either plain ints or
    ``(epoch, index)`` pairs. With plain ints (what the harness's step sampler yields) the dataset has
    ``len = n_clusters · draws_per_epoch``: index ``j`` is cluster ``j mod n_clusters`` at draw
    ``j // n_clusters``, so one pass of the sampler visits every cluster ``draws_per_epoch`` times, each
    with an independent member draw; the draws repeat after that pass. Everything is a pure function of
    the index, so resumed runs see the same members.
    """

    def __init__(self, store: ChainStore, clusters: Sequence[Sequence[int]], seed: int = 0, draws_per_epoch: int = 1):
        if not clusters:
            raise ValueError("cluster-random sampling needs at least one cluster")
        if draws_per_epoch < 1:
            raise ValueError(f"draws_per_epoch must be ≥ 1, got {draws_per_epoch}")
        self.store = store
        self.clusters = [torch.as_tensor(list(c), dtype=torch.long) for c in clusters]
        if any(c.numel() == 0 for c in self.clusters):
            raise ValueError("a cluster without members")
        self.seed, self.draws = int(seed), int(draws_per_epoch)

    @property
    def num_clusters(self) -> int:
        return len(self.clusters)

    def __len__(self) -> int:
        return self.num_clusters * self.draws

    def member(self, cluster: int, epoch: int) -> int:
        members = self.clusters[cluster]
        if members.numel() == 1:
            return int(members[0])
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 7_919 + cluster * 104_729) % (2**63 - 1))
        return int(members[int(torch.randint(members.numel(), (1,), generator=g))])

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        if isinstance(index, (tuple, list)):
            epoch, j = int(index[0]), int(index[1])
            cluster = j % self.num_clusters
            epoch = epoch * self.draws + j // self.num_clusters
        else:
            epoch, cluster = divmod(int(index), self.num_clusters)
        return self.store.item(self.member(cluster, epoch))


def load_clusters(path: str | Path) -> dict[str, str]:
    """MMseqs2 ``easy-cluster`` TSV (``representative<TAB>member`` per line) → ``{member: representative}``.

    Ids are normalised with :func:`_normalise_id` (entry part lower-case). Raises
    :class:`~equivrepro.data.DataError` naming the file and line on a malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cluster file {path} does not exist")
    out: dict[str, str] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise DataError(f"{path}:{lineno}: expected 'representative<TAB>member', got {line.rstrip()!r}")
            out[_normalise_id(parts[1])] = _normalise_id(parts[0])
    if not out:
        raise DataError(f"cluster file {path} is empty")
    return out


def _normalise_id(chain_id: str) -> str:
    entry, sep, chain = chain_id.strip().rpartition("_")
    return f"{entry.lower()}_{chain}" if sep else chain_id.strip().lower()


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------
class _ParseCache:
    """One ``.pt`` per structure file, keyed by absolute path + size + mtime + parser version."""

    def __init__(self, directory: Path | None):
        self.directory = Path(directory) if directory is not None else None

    def _path(self, source: Path) -> Path:
        digest = hashlib.sha1(str(source.resolve()).encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.pt"

    @staticmethod
    def _stamp(source: Path) -> dict[str, Any]:
        st = source.stat()
        return {"source": str(source.resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "version": PARSER_VERSION}

    def get(self, source: Path) -> dict[str, Any] | None:
        if self.directory is None:
            return None
        path = self._path(source)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a broken cache entry is re-parsed, never trusted
            log.warning("ignoring unreadable cache entry %s (%s); re-parsing %s", path, exc, source)
            return None
        if entry.get("stamp") != self._stamp(source):
            return None
        return entry

    def put(self, source: Path, parsed: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
        entry = {"stamp": self._stamp(source), "error": error, "parsed": _to_torch(parsed) if parsed is not None else None}
        if self.directory is not None:
            atomic_write(self._path(source), lambda f: torch.save(entry, f))
        return entry


def _to_torch(parsed: dict[str, Any]) -> dict[str, Any]:
    chains = []
    for c in parsed["chains"]:
        c = dict(c)
        c["resseq"] = torch.from_numpy(np.ascontiguousarray(c["resseq"]))
        c["ca_angstrom"] = torch.from_numpy(np.ascontiguousarray(c["ca_angstrom"]))
        chains.append(c)
    return {**parsed, "chains": chains}


def _parse_or_error(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return parse_structure_file(path), None
    except DataError as exc:
        return None, str(exc)


# --------------------------------------------------------------------------------------------------
# Data module
# --------------------------------------------------------------------------------------------------
class ProteinChainDataModule(DataModule):
    """Protein chains from a directory of PDB / mmCIF files (or the embedded MDAnalysisTests data).

    Args:
        root: directory scanned recursively for ``suffixes`` (a PDB mirror, e.g. ``…/pdb/mmCIF``);
            ``None`` = the MDAnalysisTests data directory (embedded data).
        cache_dir: where parsed files are cached (``None``: no cache).
        min_length, max_length: allowed number of observed (Cα-bearing) residues.
        experiment_methods: a chain passes when any stated method contains one of these strings;
            ``None`` turns the filter off.
        max_resolution: Å; ``None`` turns the filter off.
        modified_residues: ``"map"`` (modified amino acids with a standard parent count as the parent)
            or ``"reject"``.
        chain_break_angstrom: Cα–Cα distance (Å) above which consecutive residues are a chain break.
        deduplicate_sequences: drop chains whose sequence equals an earlier kept chain's.
        clusters_tsv: optional MMseqs2 cluster TSV for cluster splits and cluster-random sampling.
        cluster_draws_per_epoch: see :class:`ClusterRandomDataset`.
        heldout: held-out chains (no clusters) or clusters: a count or a fraction.
        train_subset: nested training subset: ``None`` (all), a count, or a fraction (0.01, 0.001).
        seed: split, subset and cluster-draw seed (fixed across training seeds by default).
        skip_unreadable_files: count and log unreadable files instead of raising.
        num_workers: parallel parsing processes (0: in this process).
        exclude: file names (relative to ``root``) to skip, e.g. known duplicates.
    """

    ragged_keys = ("x1", "residue_index", "chain_break", "ca_mask")

    def __init__(
        self,
        root: str | None = None,
        cache_dir: str | None = None,
        min_length: int = 50,
        max_length: int = 256,
        experiment_methods: Sequence[str] | None = ("DIFFRACTION", "ELECTRON MICROSCOPY", "ELECTRON CRYSTALLOGRAPHY"),
        max_resolution: float | None = 5.0,
        modified_residues: str = "map",
        chain_break_angstrom: float = 4.2,
        deduplicate_sequences: bool = False,
        clusters_tsv: str | None = None,
        cluster_draws_per_epoch: int = 16,
        heldout: int | float = 0.02,
        train_subset: int | float | None = None,
        seed: int = 0,
        skip_unreadable_files: bool = True,
        num_workers: int = 0,
        suffixes: Sequence[str] = STRUCTURE_SUFFIXES,
        exclude: Sequence[str] = (),
    ):
        if modified_residues not in ("map", "reject"):
            raise ValueError(f"modified_residues must be 'map' or 'reject', got {modified_residues!r}")
        if not 1 <= int(min_length) <= int(max_length):
            raise ValueError(f"need 1 ≤ min_length ≤ max_length, got {min_length}, {max_length}")
        self.root = root
        self.cache_dir = cache_dir
        self.min_length, self.max_length = int(min_length), int(max_length)
        self.experiment_methods = tuple(m.upper() for m in experiment_methods) if experiment_methods else None
        self.max_resolution = None if max_resolution is None else float(max_resolution)
        self.modified_residues = modified_residues
        self.chain_break_angstrom = float(chain_break_angstrom)
        self.deduplicate_sequences = bool(deduplicate_sequences)
        self.clusters_tsv = clusters_tsv
        self.cluster_draws_per_epoch = int(cluster_draws_per_epoch)
        self.heldout = heldout
        self.train_subset = train_subset
        self.seed = int(seed)
        self.skip_unreadable_files = bool(skip_unreadable_files)
        self.num_workers = int(num_workers)
        self.suffixes = tuple(suffixes)
        self.exclude = set(exclude)
        self._ready = False

    # ---- setup -------------------------------------------------------------------------------------
    def resolved_root(self) -> Path:
        return mdanalysistests_data_dir() if self.root is None else Path(self.root).expanduser()

    def _parse_all(self, files: list[Path]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        cache = _ParseCache(Path(self.cache_dir) if self.cache_dir else None)
        entries: list[dict[str, Any] | None] = [cache.get(p) for p in files]
        todo = [i for i, e in enumerate(entries) if e is None]
        if todo and self.num_workers > 0 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=self.num_workers) as pool:
                results = list(pool.map(_parse_or_error, [files[i] for i in todo], chunksize=16))
        else:
            results = [_parse_or_error(files[i]) for i in todo]
        for i, (parsed, error) in zip(todo, results):
            entries[i] = cache.put(files[i], parsed, error)
        return entries, {"cache_hits": len(files) - len(todo), "parsed": len(todo)}  # type: ignore[return-value]

    def _method_ok(self, methods: Sequence[str]) -> bool:
        return any(any(allowed in m for allowed in self.experiment_methods) for m in methods)

    def setup(self) -> None:
        if self._ready:
            return
        t0 = time.perf_counter()
        root = self.resolved_root()
        files = [p for p in find_structure_files(root, self.suffixes) if str(p.relative_to(root)) not in self.exclude]
        if not files:
            raise DataError(f"no structure files ({', '.join(self.suffixes)}) under {root}")
        entries, cache_stats = self._parse_all(files)

        rejected: Counter[str] = Counter({r: 0 for r in REJECT_REASONS})
        notes: Counter[str] = Counter()
        examples: dict[str, list[str]] = {}
        kept: list[tuple[str, str, str, dict[str, torch.Tensor]]] = []  # key, id, sequence, item
        for path, entry in zip(files, entries):
            rel = str(path.relative_to(root))
            if entry["error"] is not None:
                if not self.skip_unreadable_files:
                    raise DataError(entry["error"])
                rejected["unreadable_file"] += 1
                examples.setdefault("unreadable_file", []).append(entry["error"])
                log.info("skipping unreadable structure file: %s", entry["error"])
                continue
            parsed = entry["parsed"]
            notes["trimmed_tail_residues"] += int(parsed.get("trimmed_tail_residues", 0))
            methods, resolution = list(parsed["methods"]), parsed["resolution"]
            entry_id = entry_id_for(path)
            for chain in parsed["chains"]:
                key = f"{rel}:{chain['chain']}"
                reason = chain["reject"]
                if reason is None and self.modified_residues == "reject" and int(chain["modified"]) > 0:
                    reason = "nonstandard_residue"
                ca = chain["ca_angstrom"].numpy() if torch.is_tensor(chain["ca_angstrom"]) else chain["ca_angstrom"]
                resseq = chain["resseq"].numpy() if torch.is_tensor(chain["resseq"]) else chain["resseq"]
                n_obs = int(np.isfinite(ca).all(axis=1).sum()) if len(ca) else 0
                if reason is None and n_obs < self.min_length:
                    reason = "too_short"
                if reason is None and n_obs > self.max_length:
                    reason = "too_long"
                if reason is None and self.experiment_methods is not None and methods and not self._method_ok(methods):
                    reason = "experiment_method"
                if reason is None and self.max_resolution is not None and resolution is not None and resolution > self.max_resolution:
                    reason = "resolution"
                if reason is not None:
                    rejected[reason] += 1
                    examples.setdefault(reason, []).append(key)
                    continue
                notes["method_unstated"] += int(not methods)
                notes["resolution_unstated"] += int(resolution is None)
                notes["modified_residues_mapped"] += int(chain["modified"])
                notes["residues_without_ca"] += int(len(ca) - n_obs)
                kept.append((key, chain_id_for(entry_id, chain["chain"]), chain["sequence"], chain_item(ca, resseq, self.chain_break_angstrom)))

        if rejected["unreadable_file"]:
            names = examples["unreadable_file"]
            log.warning("skipped %d unreadable structure file(s) under %s: %s%s", len(names), root, "; ".join(names[:5]),
                        " …" if len(names) > 5 else "")
        kept.sort(key=lambda k: k[0])
        if self.deduplicate_sequences:
            seen: set[str] = set()
            unique = []
            for rec in kept:
                if rec[2] in seen:
                    rejected["duplicate_sequence"] += 1
                    examples.setdefault("duplicate_sequence", []).append(rec[0])
                    continue
                seen.add(rec[2])
                unique.append(rec)
            kept = unique
        if len(kept) < 2:
            raise DataError(f"only {len(kept)} chain(s) of {len(files)} files under {root} pass the filters: {dict(rejected)}")
        self.store = ChainStore([r[3] for r in kept], [r[0] for r in kept], [r[1] for r in kept], [r[2] for r in kept])
        self._rejected, self._notes, self._examples, self._cache_stats = dict(rejected), dict(notes), examples, cache_stats
        self._num_files = len(files)
        self._root = root
        self._build_splits()
        self._processing_s = time.perf_counter() - t0
        self._ready = True
        log.info("protein chains: %d kept from %d files under %s (rejected: %s) in %.2f s",
                 len(self.store), len(files), root, {k: v for k, v in rejected.items() if v}, self._processing_s)

    def _build_splits(self) -> None:
        n = len(self.store)
        self._cluster_info: dict[str, Any] = {}
        if self.clusters_tsv:
            member_to_rep = load_clusters(self.clusters_tsv)
            groups: dict[str, list[int]] = {}
            unclustered = 0
            for i, cid in enumerate(self.store.ids):
                rep = member_to_rep.get(_normalise_id(cid))
                if rep is None:
                    unclustered += 1
                    rep = f"__singleton__{cid}"
                groups.setdefault(rep, []).append(i)
            if unclustered == n:
                raise DataError(f"no chain id (e.g. {self.store.ids[0]!r}) appears in the cluster file {self.clusters_tsv}")
            if unclustered:
                log.warning("%d of %d chains are not in %s: each becomes its own cluster", unclustered, n, self.clusters_tsv)
            reps = sorted(groups)
            clusters = [groups[r] for r in reps]
            train_c, held_c = heldout_split(len(clusters), self.heldout, self.seed)
            train_c = nested_subset(train_c, self.train_subset, self.seed)
            held = sorted(i for c in held_c.tolist() for i in clusters[c])
            self.train_dataset = ClusterRandomDataset(self.store, [clusters[c] for c in train_c.tolist()], self.seed, self.cluster_draws_per_epoch)
            self.heldout_dataset = ChainDataset(self.store, held)
            self._train_chains = sorted(i for c in train_c.tolist() for i in clusters[c])
            self._cluster_info = {"clusters": len(clusters), "train_clusters": int(train_c.numel()), "heldout_clusters": int(held_c.numel()),
                                  "unclustered_chains": unclustered, "cluster_draws_per_epoch": self.cluster_draws_per_epoch}
        else:
            train, held = heldout_split(n, self.heldout, self.seed)
            train = nested_subset(train, self.train_subset, self.seed)
            self.train_dataset = ChainDataset(self.store, train)
            self.heldout_dataset = ChainDataset(self.store, held)
            self._train_chains = train.tolist()

    # ---- batches -----------------------------------------------------------------------------------
    def collate(self, items: Sequence[Mapping[str, torch.Tensor]]) -> Batch:
        """Padded batch: ``x1 (B, N, 3)`` nm, ``residue_index (B, N)``, ``chain_break (B, N)``, ``mask (B, N)``."""
        batch = pad_collate(items, ragged=self.ragged_keys)
        batch["mask"] = batch["mask"] & batch.pop("ca_mask")
        return batch

    def describe(self) -> dict[str, Any]:
        if not self._ready:
            return {"ready": False}
        lengths = [self.store.length(i) for i in range(len(self.store))]
        out: dict[str, Any] = {
            "source": str(self._root),
            "embedded": self.root is None,
            "files": self._num_files,
            "chains_kept": len(self.store),
            "rejected": {k: v for k, v in self._rejected.items()},
            "rejected_examples": {k: v[:5] for k, v in self._examples.items()},
            "notes": self._notes,
            "length_min": min(lengths),
            "length_median": float(np.median(lengths)),
            "length_max": max(lengths),
            "length_filter": [self.min_length, self.max_length],
            "train_size": len(self.train_dataset),
            "train_chains": len(self._train_chains),
            "heldout_size": len(self.heldout_dataset),
            "units": "x1 in nm (Cα positions from the files in Å, divided by 10), centred on the observed Cα",
            "cache": {**self._cache_stats, "dir": self.cache_dir},
            "processing_s": round(self._processing_s, 3),
        }
        out.update(self._cluster_info)
        return out
