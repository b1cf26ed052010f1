"""Per-chain tensors and the datasets over them: chain-break flags, one chain's item, the flat chain
store shared with DataLoader workers, a plain chain dataset and Proteina's cluster-random sampling.

An item is ``{"x1": (L, 3) float32 nm (Cα, centred on the observed Cα), "residue_index": (L,) long,
"chain_break": (L,) float32, "ca_mask": (L,) bool}``. Files store Å; coordinates are converted to nm
(``÷ 10``) once, here (Proteina works in nm: its noise is N(0, 1 nm²) per coordinate). Residue index =
PDB residue number re-based so the chain's first polymer residue is 1. ``chain_break[i] = 1`` when the link
from residue ``i`` to ``i + 1`` is broken: a residue-number gap, a missing Cα at either end, or a Cα–Cα
distance above ``chain_break_angstrom`` (4.2 Å by default). A residue without a Cα has ``ca_mask = False``;
it never enters the loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.flowmatching.data.structures import ANGSTROM_PER_NM

__all__ = ["chain_break_flags", "chain_item", "ChainStore", "ChainDataset", "ClusterRandomDataset"]


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
    ``<entry>_<chain>``, ``entities[i]`` = ``<entry>_<entity id>`` (or None when the file names no entity)."""

    def __init__(self, items: Sequence[Mapping[str, torch.Tensor]], keys: Sequence[str], ids: Sequence[str], sequences: Sequence[str],
                 entities: Sequence[str | None] | None = None):
        lengths = torch.tensor([int(it["x1"].shape[0]) for it in items], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        cat = lambda key, empty: torch.cat([it[key] for it in items]) if items else empty  # noqa: E731
        self.ca_nm = cat("x1", torch.zeros(0, 3))
        self.residue_index = cat("residue_index", torch.zeros(0, dtype=torch.long))
        self.chain_break = cat("chain_break", torch.zeros(0))
        self.ca_mask = cat("ca_mask", torch.zeros(0, dtype=torch.bool))
        self.keys, self.ids, self.sequences = list(keys), list(ids), list(sequences)
        self.entities = list(entities) if entities is not None else [None] * len(self.keys)

    @property
    def entries(self) -> list[str]:
        """PDB entry of every chain (the ``<entry>`` part of its id)."""
        return [cid.rpartition("_")[0] for cid in self.ids]

    def __len__(self) -> int:
        return len(self.keys)

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def item(self, i: int) -> dict[str, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return {"x1": self.ca_nm[a:b], "residue_index": self.residue_index[a:b], "chain_break": self.chain_break[a:b],
                "ca_mask": self.ca_mask[a:b]}


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
