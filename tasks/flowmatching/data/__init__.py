"""Protein Cα data for flow matching: PDB / mmCIF parsing, Proteina's chain filters, a cache, leak-free splits.

Every item is one protein chain::

    {"x1": (L, 3) float32 nm (Cα, centred on the observed Cα), "residue_index": (L,) long,
     "chain_break": (L,) float32, "ca_mask": (L,) bool}

and :meth:`ProteinChainDataModule.collate` pads a list of items into a batch with ``mask (B, N)`` =
"real residue with an observed Cα" (``ca_mask`` is folded into ``mask`` and dropped).

One concept per module:

* :mod:`.structures` — structure files → parsed Cα chains (gemmi), units Å in the parse;
* :mod:`.completeness` — whether a file holds as much as it says (truncation), and what cannot be told;
* :mod:`.filters` — Proteina's PDB chain filters with counted rejects;
* :mod:`.cache` — the per-file parse cache;
* :mod:`.datasets` — per-chain tensors (nm), the chain store and the (cluster-random) datasets;
* :mod:`.clusters` — MMseqs2 / RCSB sequence clusters and the entry + sequence + cluster groups of the split;
* :mod:`.module` — :class:`ProteinChainDataModule`.
"""

from tasks.flowmatching.data.cache import ParseCache
from tasks.flowmatching.data.clusters import group_chains, load_clusters, load_entity_clusters, read_cluster_file
from tasks.flowmatching.data.datasets import ChainDataset, ChainStore, ClusterRandomDataset, chain_break_flags, chain_item
from tasks.flowmatching.data.filters import REJECT_REASONS, ChainFilter
from tasks.flowmatching.data.module import ProteinChainDataModule
from tasks.flowmatching.data.structures import (
    ANGSTROM_PER_NM,
    STANDARD_AMINO_ACIDS,
    STRUCTURE_SUFFIXES,
    chain_id_for,
    entry_id_for,
    find_structure_files,
    mdanalysistests_data_dir,
    parse_structure_file,
    read_structure,
)

__all__ = [
    "ANGSTROM_PER_NM",
    "STANDARD_AMINO_ACIDS",
    "STRUCTURE_SUFFIXES",
    "REJECT_REASONS",
    "mdanalysistests_data_dir",
    "find_structure_files",
    "entry_id_for",
    "read_structure",
    "parse_structure_file",
    "chain_break_flags",
    "chain_item",
    "load_clusters",
    "load_entity_clusters",
    "read_cluster_file",
    "group_chains",
    "chain_id_for",
    "ChainFilter",
    "ChainStore",
    "ChainDataset",
    "ClusterRandomDataset",
    "ParseCache",
    "ProteinChainDataModule",
]
