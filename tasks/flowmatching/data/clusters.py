"""Sequence clusters and the held-out split in which no held-out chain shares a cluster with a training chain.

**Cluster files** (:func:`read_cluster_file`, format told by the content):

* MMseqs2 ``easy-cluster`` ``*_cluster.tsv``: ``representative<TAB>member`` per line, chain ids
  ``<pdb>_<chain>`` such as ``1abc_A``;
* RCSB's precomputed sequence clusters ``clusters-by-entity-<identity>.txt``: one cluster per line,
  space-separated ``<PDBID>_<entity>`` members such as ``4HHB_1``; entities map onto chains through the
  entity ids the parser records (mmCIF ``_entity_poly`` / ``_struct_asym``, PDB ``COMPND``).

Ids are normalised to a lower-case entry part (``1ABC_A`` → ``1abc_A``).

**Groups** (:func:`group_chains`). Chains are joined (union–find) when they belong to one PDB entry, when
their sequences are identical, and when a cluster file puts them in one cluster; the held-out set is drawn
over these groups (:func:`split_groups`), so no held-out chain shares an entry, a sequence or a cluster with
a training chain. Groups that hold more than ``max(10, 5 %)`` of all chains (complexes can link many
clusters into one component at PDB scale) always stay in training and are counted.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from pathlib import Path

from equivrepro.data import DataError, heldout_split

__all__ = ["load_clusters", "load_entity_clusters", "read_cluster_file", "normalise_id", "group_chains", "split_groups",
           "cluster_members", "CLUSTER_FORMATS"]

CLUSTER_FORMATS = ("auto", "mmseqs_tsv", "rcsb_entity")
_ENTITY_ID = re.compile(r"^[0-9A-Za-z]+_[0-9]+$")


def normalise_id(chain_id: str) -> str:
    """``1ABC_A`` → ``1abc_A`` (entry part lower-case; chain / entity part as given)."""
    entry, sep, chain = chain_id.strip().rpartition("_")
    return f"{entry.lower()}_{chain}" if sep else chain_id.strip().lower()


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"data.clusters_file={path} is a directory, not a cluster file")
    if not path.is_file():
        raise DataError(f"data.clusters_file={path}: cluster file does not exist")


def load_clusters(path: str | Path) -> dict[str, str]:
    """MMseqs2 ``easy-cluster`` TSV (``representative<TAB>member`` per line) → ``{member: representative}``.

    Raises :class:`~equivrepro.data.DataError` naming the file and line on a malformed line.
    """
    path = Path(path)
    _check_file(path)
    out: dict[str, str] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise DataError(f"{path}:{lineno}: expected 'representative<TAB>member', got {line.rstrip()!r}")
            out[normalise_id(parts[1])] = normalise_id(parts[0])
    if not out:
        raise DataError(f"cluster file {path} is empty")
    return out


def load_entity_clusters(path: str | Path) -> dict[str, str]:
    """RCSB ``clusters-by-entity-*.txt`` (one cluster of ``<PDBID>_<entity>`` per line) → ``{entity id: cluster}``
    where the cluster is named by its line (``line<k>``)."""
    path = Path(path)
    _check_file(path)
    out: dict[str, str] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            members = line.split()
            if not members:
                continue
            bad = next((m for m in members if not _ENTITY_ID.match(m)), None)
            if bad is not None:
                raise DataError(f"{path}:{lineno}: {bad!r} is not a '<PDBID>_<entity>' id (RCSB clusters-by-entity format)")
            for m in members:
                out[normalise_id(m)] = f"line{lineno}"
    if not out:
        raise DataError(f"cluster file {path} is empty")
    return out


def read_cluster_file(path: str | Path, fmt: str = "auto") -> tuple[str, dict[str, str]]:
    """``("chain" | "entity", {id: cluster})`` of an MMseqs2 TSV or an RCSB entity-cluster file."""
    path = Path(path)
    _check_file(path)
    if fmt == "auto":
        with open(path) as f:
            first = next((ln for ln in f if ln.strip()), "")
        fmt = "mmseqs_tsv" if "\t" in first else "rcsb_entity"
    if fmt == "mmseqs_tsv":
        return "chain", load_clusters(path)
    if fmt == "rcsb_entity":
        return "entity", load_entity_clusters(path)
    raise DataError(f"data.clusters_format must be one of {', '.join(CLUSTER_FORMATS)}, got {fmt!r}")


def group_chains(keys: Sequence[Sequence[Hashable | None]]) -> list[list[int]]:
    """Connected components of chains that share any key: ``keys[i]`` are chain ``i``'s keys (entry,
    sequence, cluster; ``None`` is ignored). Components are lists of chain indices, ordered by their first chain."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[Hashable, int] = {}
    for i, ks in enumerate(keys):
        for k in ks:
            if k is None:
                continue
            j = first.setdefault(k, i)
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(find(i), []).append(i)
    return [groups[r] for r in sorted(groups)]


def split_groups(groups: Sequence[Sequence[int]], heldout: int | float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """``(train group ids, held-out group ids, oversized group ids)``: the held-out groups are a seeded
    :func:`~equivrepro.data.heldout_split` of the groups small enough to hold out (module docstring);
    oversized groups are part of the training ids too."""
    n_chains = sum(len(g) for g in groups)
    cap = max(10, int(0.05 * n_chains))
    small = [g for g, members in enumerate(groups) if len(members) <= cap]
    oversized = [g for g, members in enumerate(groups) if len(members) > cap]
    train_pos, held_pos = heldout_split(len(small), heldout, seed, "data.heldout", "sequence/entry groups")
    held = [small[i] for i in held_pos.tolist()]
    train = sorted([small[i] for i in train_pos.tolist()] + oversized)
    return train, held, oversized


def cluster_members(cluster_of: Sequence[str], chains: Sequence[int]) -> list[list[int]]:
    """The chains ``chains`` grouped by ``cluster_of[chain]`` (clusters in order of their first chain)."""
    out: dict[str, list[int]] = {}
    for i in chains:
        out.setdefault(cluster_of[i], []).append(i)
    return list(out.values())
