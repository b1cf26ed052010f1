"""Proteina's PDB chain filters, applied to parsed files with every rejected chain counted by reason.

* ``unreadable_file`` — the whole file (all its chains) could not be read: not a structure, truncated,
  corrupt gzip, no atoms (with ``skip_unreadable_files`` it is counted and logged with its name and the
  reason, else :class:`~equivrepro.data.DataError` is raised naming the file);
* ``not_protein`` — the polymer is not an L-peptide (DNA, RNA, …) or has no amino acid;
* ``nonstandard_residue`` — a residue that is neither one of the 20 standard amino acids (force-field
  protonation names such as CHARMM's ``HSD`` count as their amino acid) nor a modified amino acid with a
  standard parent (``UNK``, D-amino acids, unknown names, a ligand inside the chain). With
  ``modified_residues="map"`` (default) modified residues such as ``MSE`` count as their parent (counted as
  ``modified_residues_mapped``; Proteina's filter reads the canonical sequence, where MSE is M);
  ``"reject"`` rejects those chains too;
* ``no_ca`` — no residue of the chain has a Cα atom;
* ``too_short`` / ``too_long`` — observed (Cα-bearing) residues outside ``[min_length, max_length]``;
* ``experiment_method`` — the file states its experimental method(s) and none is diffraction or electron
  microscopy; files that state none pass (counted ``method_unstated``);
* ``resolution`` — the file states a resolution above ``max_resolution`` Å; files that state none pass
  (counted ``resolution_unstated``);
* ``duplicate_sequence`` — with ``deduplicate_sequences``, a chain whose sequence equals an earlier kept
  chain's (keys in sorted order).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from equivrepro.data import DataError
from tasks.flowmatching.data.datasets import chain_item
from tasks.flowmatching.data.structures import chain_id_for, entry_id_for

log = logging.getLogger("tasks.flowmatching.data")

__all__ = ["REJECT_REASONS", "ChainFilter", "KeptChain", "Selection", "select_chains"]

REJECT_REASONS = (
    "unreadable_file", "not_protein", "nonstandard_residue", "no_ca", "too_short", "too_long",
    "experiment_method", "resolution", "duplicate_sequence",
)


@dataclass(frozen=True)
class ChainFilter:
    """The per-chain filters (module docstring); ``experiment_methods=None`` / ``max_resolution=None`` turn one off."""

    min_length: int = 50
    max_length: int = 256
    experiment_methods: tuple[str, ...] | None = ("DIFFRACTION", "ELECTRON MICROSCOPY", "ELECTRON CRYSTALLOGRAPHY")
    max_resolution: float | None = 5.0
    modified_residues: str = "map"

    def reason(self, chain: dict[str, Any], n_observed: int, methods: Sequence[str], resolution: float | None) -> str | None:
        """Why ``chain`` is rejected, or None if it passes."""
        if chain["reject"] is not None:
            return chain["reject"]
        if self.modified_residues == "reject" and int(chain["modified"]) > 0:
            return "nonstandard_residue"
        if n_observed < self.min_length:
            return "too_short"
        if n_observed > self.max_length:
            return "too_long"
        if self.experiment_methods is not None and methods and not any(any(a in m for a in self.experiment_methods) for m in methods):
            return "experiment_method"
        if self.max_resolution is not None and resolution is not None and resolution > self.max_resolution:
            return "resolution"
        return None


@dataclass
class KeptChain:
    key: str            # <file relative to root>:<chain>
    chain_id: str       # <entry>_<chain>
    entity_id: str | None  # <entry>_<entity>
    sequence: str
    item: dict[str, torch.Tensor]


@dataclass
class Selection:
    kept: list[KeptChain] = field(default_factory=list)
    rejected: Counter = field(default_factory=lambda: Counter({r: 0 for r in REJECT_REASONS}))
    notes: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def reject(self, reason: str, example: str) -> None:
        self.rejected[reason] += 1
        self.examples.setdefault(reason, []).append(example)


def _array(x) -> np.ndarray:
    return x.numpy() if torch.is_tensor(x) else np.asarray(x)


def select_chains(files: Sequence[Path], entries: Sequence[dict[str, Any]], root: Path, chain_filter: ChainFilter,
                  chain_break_angstrom: float, skip_unreadable_files: bool = True, deduplicate_sequences: bool = False) -> Selection:
    """The chains of parsed ``files`` (cache ``entries``) that pass ``chain_filter``, sorted by key, with counts."""
    sel = Selection()
    for path, entry in zip(files, entries):
        rel = str(path.relative_to(root))
        if entry["error"] is not None:
            if not skip_unreadable_files:
                raise DataError(entry["error"])
            sel.reject("unreadable_file", entry["error"])
            log.info("skipping unreadable structure file: %s", entry["error"])
            continue
        parsed = entry["parsed"]
        sel.notes["trimmed_tail_residues"] += int(parsed.get("trimmed_tail_residues", 0))
        methods, resolution = list(parsed["methods"]), parsed["resolution"]
        pdb_entry = entry_id_for(path)
        for chain in parsed["chains"]:
            key = f"{rel}:{chain['chain']}"
            ca, resseq = _array(chain["ca_angstrom"]), _array(chain["resseq"])
            n_obs = int(np.isfinite(ca).all(axis=1).sum()) if len(ca) else 0
            reason = chain_filter.reason(chain, n_obs, methods, resolution)
            if reason is not None:
                sel.reject(reason, key)
                continue
            sel.notes["method_unstated"] += int(not methods)
            sel.notes["resolution_unstated"] += int(resolution is None)
            sel.notes["modified_residues_mapped"] += int(chain["modified"])
            sel.notes["residues_without_ca"] += int(len(ca) - n_obs)
            entity = chain.get("entity")
            sel.kept.append(KeptChain(key, chain_id_for(pdb_entry, chain["chain"]), None if entity is None else f"{pdb_entry}_{entity}",
                                      chain["sequence"], chain_item(ca, resseq, chain_break_angstrom)))
    if sel.rejected["unreadable_file"]:
        names = sel.examples["unreadable_file"]
        log.warning("skipped %d unreadable structure file(s) under %s: %s%s", len(names), root, "; ".join(names[:5]),
                    " …" if len(names) > 5 else "")
    sel.kept.sort(key=lambda k: k.key)
    if deduplicate_sequences:
        seen: set[str] = set()
        unique = []
        for rec in sel.kept:
            if rec.sequence in seen:
                sel.reject("duplicate_sequence", rec.key)
                continue
            seen.add(rec.sequence)
            unique.append(rec)
        sel.kept = unique
    return sel
