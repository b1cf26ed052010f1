"""Per-chain tensors: chain breaks from distance and numbering, masked (not dropped) residues without Cα."""

from __future__ import annotations

import numpy as np
import torch

from tasks.flowmatching.data import ChainDataset, chain_break_flags, chain_item, parse_structure_file
from tests.tasks.flowmatching.conftest import renumber, residues_of, write_pdb

XRAY = ["EXPDTA    X-RAY DIFFRACTION", "REMARK   2 RESOLUTION.    2.00 ANGSTROMS."]


def test_chain_break_from_distance_and_number_gap(tmp_path, ahs_lines):
    groups = residues_of(ahs_lines)
    cut = groups[:10] + groups[13:]  # delete three residues: a ~10 Å jump between residues 10 and 11
    write_pdb(tmp_path / "renum.pdb", renumber(cut, 1))  # no residue-number gap: only the distance tells
    write_pdb(tmp_path / "gap.pdb", [line for res in cut for line in res])  # original numbers keep the gap
    for name in ("renum.pdb", "gap.pdb"):
        c = parse_structure_file(tmp_path / name)["chains"][0]
        flags = chain_item(c["ca_angstrom"], c["resseq"])["chain_break"]
        assert flags.nonzero().flatten().tolist() == [9], name
    c = parse_structure_file(tmp_path / "renum.pdb")["chains"][0]
    d = np.linalg.norm(c["ca_angstrom"][10] - c["ca_angstrom"][9])
    assert d > 4.2
    assert not chain_break_flags(c["ca_angstrom"], c["resseq"], max_ca_ca_angstrom=d + 0.1).any()


def test_missing_ca_residue_is_masked_not_dropped(tmp_path, ahs_lines):
    groups = residues_of(ahs_lines)
    groups[20] = [line for line in groups[20] if line[12:16].strip() != "CA"]
    write_pdb(tmp_path / "noca20.pdb", [line for res in groups for line in res], XRAY)
    c = parse_structure_file(tmp_path / "noca20.pdb")["chains"][0]
    item = chain_item(c["ca_angstrom"], c["resseq"])
    assert c["reject"] is None and len(item["x1"]) == 126
    assert item["ca_mask"].tolist().count(False) == 1 and not item["ca_mask"][20]
    assert item["chain_break"].nonzero().flatten().tolist() == [19, 20]
    assert torch.all(item["x1"][20] == 0)
    assert item["x1"][item["ca_mask"]].mean(0).abs().max() < 1e-6  # centred on observed Cα only


def test_chain_dataset_items(embedded_dm):
    ds = ChainDataset(embedded_dm.store, [0, 1])
    assert len(ds) == 2 and set(ds[0]) == {"x1", "residue_index", "chain_break", "ca_mask"}
    assert embedded_dm.store.entries[0] == embedded_dm.store.ids[0].rpartition("_")[0]
