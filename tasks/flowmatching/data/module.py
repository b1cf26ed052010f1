"""The protein-chain data module: files → parsed (cached) → filtered chains → a leak-free split.

**Splits.** By default (``split_by='group'``) chains are grouped by PDB entry, by identical sequence and,
with a cluster file (MMseqs2 ``*_cluster.tsv`` or RCSB ``clusters-by-entity-*.txt``), by sequence cluster
(:mod:`tasks.flowmatching.data.clusters`); the held-out set is a seeded draw of whole groups
(``heldout``: a count or fraction of groups), so no held-out chain shares an entry, a sequence or a
cluster with a training chain. With a cluster file training is cluster-random (:class:`ClusterRandomDataset`,
Proteina's sampler), else every training chain is an item. Training subsets (100 % / 1 % / 0.1 %) are
nested over the training groups (:func:`equivrepro.data.nested_subset`), and the held-out set never
depends on the subset size. ``split_by='chain'`` is the old random split by chain (chains of one
homo-oligomer and repeated entries then sit on both sides; for comparison only).

**Embedded data** (``root=None``): the real PDB and mmCIF files shipped in the installed
``MDAnalysisTests`` package (crystal structures, DSSP test chains, AdK, MD snapshots), run through this
same pipeline. Nothing is downloaded and nothing is synthetic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from equivrepro.data import (
    DataConfigError,
    DataError,
    DataModule,
    check_choice,
    check_number,
    check_size,
    heldout_split,
    nested_subset,
    pad_collate,
)
from equivrepro.task import Batch
from tasks.flowmatching.data.cache import ParseCache, parse_or_error
from tasks.flowmatching.data.clusters import CLUSTER_FORMATS, cluster_members, group_chains, normalise_id, read_cluster_file, split_groups
from tasks.flowmatching.data.datasets import ChainDataset, ChainStore, ClusterRandomDataset
from tasks.flowmatching.data.filters import ChainFilter, select_chains
from tasks.flowmatching.data.structures import STRUCTURE_SUFFIXES, find_structure_files, mdanalysistests_data_dir

log = logging.getLogger("tasks.flowmatching.data")

__all__ = ["ProteinChainDataModule"]


def _check_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise DataConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _check_path(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise DataConfigError(f"{key} must be a path or null, got {value!r}")
    return str(value)


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
        split_by: ``'group'`` (entry + identical sequence + cluster groups; default) or ``'chain'``.
        clusters_file: optional MMseqs2 cluster TSV or RCSB ``clusters-by-entity-*.txt`` (``clusters_format``
            ``auto`` tells them apart); ``clusters_tsv`` is the old name of this setting.
        cluster_draws_per_epoch: see :class:`ClusterRandomDataset`.
        heldout: held-out groups (``split_by='group'``) or chains: a count or a fraction.
        train_size: nested training subset: ``None`` (all), a count, or a fraction (0.01, 0.001).
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
        split_by: str = "group",
        clusters_file: str | None = None,
        clusters_format: str = "auto",
        clusters_tsv: str | None = None,
        cluster_draws_per_epoch: int = 16,
        heldout: int | float = 0.02,
        train_size: int | float | None = None,
        seed: int = 0,
        skip_unreadable_files: bool = True,
        num_workers: int = 0,
        suffixes: Sequence[str] = STRUCTURE_SUFFIXES,
        exclude: Sequence[str] = (),
    ):
        self.root = _check_path(root, "data.root")
        self.cache_dir = _check_path(cache_dir, "data.cache_dir")
        min_length = check_number(min_length, "data.min_length", 1, integer=True)
        max_length = check_number(max_length, "data.max_length", 1, integer=True)
        if min_length > max_length:
            raise DataConfigError(f"data.min_length ({min_length}) must not exceed data.max_length ({max_length})")
        self.min_length, self.max_length = min_length, max_length
        methods = experiment_methods
        if methods is not None and (isinstance(methods, str) or not all(isinstance(m, str) for m in methods)):
            raise DataConfigError(f"data.experiment_methods must be a list of method names or null, got {experiment_methods!r}")
        self.experiment_methods = tuple(m.upper() for m in experiment_methods) if experiment_methods else None
        self.max_resolution = check_number(max_resolution, "data.max_resolution", 0.0, strict=True, allow_none=True)
        self.modified_residues = check_choice(modified_residues, "data.modified_residues", ("map", "reject"))
        self.chain_break_angstrom = check_number(chain_break_angstrom, "data.chain_break_angstrom", 0.0, strict=True)
        self.deduplicate_sequences = _check_bool(deduplicate_sequences, "data.deduplicate_sequences")
        self.split_by = check_choice(split_by, "data.split_by", ("group", "chain"))
        if clusters_file is not None and clusters_tsv is not None and str(clusters_file) != str(clusters_tsv):
            raise DataConfigError("set data.clusters_file only (data.clusters_tsv is its old name), not both")
        self.clusters_file = _check_path(clusters_file if clusters_file is not None else clusters_tsv, "data.clusters_file")
        self.clusters_format = check_choice(clusters_format, "data.clusters_format", CLUSTER_FORMATS)
        if self.clusters_file and self.split_by == "chain":
            raise DataConfigError("data.clusters_file needs data.split_by=group (a cluster split holds out whole clusters)")
        self.cluster_draws_per_epoch = check_number(cluster_draws_per_epoch, "data.cluster_draws_per_epoch", 1, integer=True)
        self.heldout = check_size(heldout, "data.heldout")
        self.train_size = check_size(train_size, "data.train_size", allow_none=True, allow_whole=True)
        self.seed = check_number(seed, "data.seed", integer=True)
        self.skip_unreadable_files = _check_bool(skip_unreadable_files, "data.skip_unreadable_files")
        self.num_workers = check_number(num_workers, "data.num_workers", 0, integer=True)
        self.suffixes = tuple(suffixes)
        self.exclude = set(exclude)
        self._ready = False

    # ---- setup -------------------------------------------------------------------------------------
    def resolved_root(self) -> Path:
        return mdanalysistests_data_dir() if self.root is None else Path(self.root).expanduser()

    @property
    def chain_filter(self) -> ChainFilter:
        return ChainFilter(self.min_length, self.max_length, self.experiment_methods, self.max_resolution, self.modified_residues)

    def _parse_all(self, files: list[Path]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        cache = ParseCache(Path(self.cache_dir) if self.cache_dir else None)
        entries: list[dict[str, Any] | None] = [cache.get(p) for p in files]
        todo = [i for i, e in enumerate(entries) if e is None]
        if todo and self.num_workers > 0 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=self.num_workers) as pool:
                results = list(pool.map(parse_or_error, [files[i] for i in todo], chunksize=16))
        else:
            results = [parse_or_error(files[i]) for i in todo]
        for i, (parsed, error) in zip(todo, results):
            entries[i] = cache.put(files[i], parsed, error)
        return entries, {"cache_hits": len(files) - len(todo), "parsed": len(todo)}  # type: ignore[return-value]

    def setup(self) -> None:
        if self._ready:
            return
        t0 = time.perf_counter()
        root = self.resolved_root()
        files = [p for p in find_structure_files(root, self.suffixes) if str(p.relative_to(root)) not in self.exclude]
        if not files:
            raise DataError(f"no records in data.root={root}: no structure files ({', '.join(self.suffixes)}) under it")
        entries, cache_stats = self._parse_all(files)
        sel = select_chains(files, entries, root, self.chain_filter, self.chain_break_angstrom, self.skip_unreadable_files,
                            self.deduplicate_sequences)
        if len(sel.kept) < 2:
            raise DataError(f"only {len(sel.kept)} chain(s) of {len(files)} files under {root} pass the filters: {dict(sel.rejected)}")
        kept = sel.kept
        self.store = ChainStore([k.item for k in kept], [k.key for k in kept], [k.chain_id for k in kept], [k.sequence for k in kept],
                                [k.entity_id for k in kept])
        self._rejected, self._notes, self._examples, self._cache_stats = dict(sel.rejected), dict(sel.notes), sel.examples, cache_stats
        self._num_files = len(files)
        self._root = root
        self._build_splits()
        self._processing_s = time.perf_counter() - t0
        self._ready = True
        log.info("protein chains: %d kept from %d files under %s (rejected: %s) in %.2f s",
                 len(self.store), len(files), root, {k: v for k, v in sel.rejected.items() if v}, self._processing_s)

    def _clusters(self) -> list[str] | None:
        """Cluster of every stored chain (``None`` without a cluster file); unclustered chains are singletons."""
        if not self.clusters_file:
            return None
        kind, table = read_cluster_file(self.clusters_file, self.clusters_format)
        ids = self.store.ids if kind == "chain" else self.store.entities
        out, unclustered = [], 0
        for i, cid in enumerate(ids):
            cluster = table.get(normalise_id(cid)) if cid else None
            if cluster is None:
                unclustered += 1
                cluster = f"__singleton__{self.store.ids[i]}"
            out.append(cluster)
        n = len(self.store)
        if unclustered == n:
            example = next((c for c in ids if c), self.store.ids[0])
            raise DataError(f"no chain (e.g. {example!r}) appears in the cluster file {self.clusters_file} "
                            f"({'chain ids <pdb>_<chain>' if kind == 'chain' else 'entity ids <PDBID>_<entity>'})")
        if unclustered:
            log.warning("%d of %d chains are not in %s: each becomes its own cluster", unclustered, n, self.clusters_file)
        self._cluster_info = {"clusters_file": self.clusters_file, "clusters_kind": kind, "clusters": len(set(out)),
                              "unclustered_chains": unclustered, "cluster_draws_per_epoch": self.cluster_draws_per_epoch}
        return out

    def _build_splits(self) -> None:
        n = len(self.store)
        self._cluster_info: dict[str, Any] = {}
        self._group_info: dict[str, Any] = {}
        if self.split_by == "chain":
            train, held = heldout_split(n, self.heldout, self.seed, "data.heldout", "chains")
            train = nested_subset(train, self.train_size, self.seed, "data.train_size")
            self.train_dataset = ChainDataset(self.store, train)
            self.heldout_dataset = ChainDataset(self.store, held)
            self._train_chains = train.tolist()
            return
        cluster_of = self._clusters()
        keys = [(("entry", e), ("sequence", s), ("cluster", cluster_of[i]) if cluster_of else None)
                for i, (e, s) in enumerate(zip(self.store.entries, self.store.sequences))]
        groups = group_chains(keys)
        train_g, held_g, oversized = split_groups(groups, self.heldout, self.seed)
        chosen = nested_subset(torch.as_tensor(train_g, dtype=torch.long), self.train_size, self.seed, "data.train_size").tolist()
        train_chains = sorted(i for g in chosen for i in groups[g])
        held = sorted(i for g in held_g for i in groups[g])
        if cluster_of is not None:
            clusters = cluster_members(cluster_of, train_chains)
            self.train_dataset = ClusterRandomDataset(self.store, clusters, self.seed, self.cluster_draws_per_epoch)
            self._cluster_info.update(train_clusters=len(clusters), heldout_clusters=len({cluster_of[i] for i in held}))
        else:
            self.train_dataset = ChainDataset(self.store, train_chains)
        self.heldout_dataset = ChainDataset(self.store, held)
        self._train_chains = train_chains
        sizes = [len(g) for g in groups]
        self._group_info = {"groups": len(groups), "train_groups": len(chosen), "heldout_groups": len(held_g),
                            "largest_group": max(sizes), "oversized_groups_in_training": len(oversized)}

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
            "split_by": self.split_by,
            "train_size": len(self.train_dataset),
            "train_chains": len(self._train_chains),
            "heldout_size": len(self.heldout_dataset),
            "units": "x1 in nm (Cα positions from the files in Å, divided by 10), centred on the observed Cα",
            "cache": {**self._cache_stats, "dir": self.cache_dir},
            "processing_s": round(self._processing_s, 3),
        }
        out.update(self._group_info)
        out.update(self._cluster_info)
        return out
