"""Proteina's chain filters: every reject reason counted, parallel parsing agrees, unreadable files raise on request."""

from __future__ import annotations

import pytest
import torch

from equivrepro.data import DataError
from tasks.flowmatching.data import ProteinChainDataModule
from tests.tasks.flowmatching.conftest import renumber, residues_of, write_pdb

XRAY = ["EXPDTA    X-RAY DIFFRACTION", "REMARK   2 RESOLUTION.    2.00 ANGSTROMS."]


def _write_filter_zoo(d, ahs_lines):
    """A directory with one good chain and one chain for every reject reason (one entry per file)."""
    groups = residues_of(ahs_lines)
    good = renumber(groups, 1)
    write_pdb(d / "good.pdb", good, XRAY)
    write_pdb(d / "nmr.pdb", good, ["EXPDTA    SOLUTION NMR"])
    write_pdb(d / "lowres.pdb", good, ["EXPDTA    X-RAY DIFFRACTION", "REMARK   2 RESOLUTION.    6.50 ANGSTROMS."])
    write_pdb(d / "short.pdb", renumber(groups[:20], 1), XRAY)
    # an unknown residue inside the chain (ATOM record UNK) and one with a HETATM ligand after the chain
    unk = [line[:17] + "UNK" + line[20:] if 30 <= int(line[22:26]) <= 30 else line for line in good]
    write_pdb(d / "unknown.pdb", unk, XRAY)
    het = ["HETATM 9999  C1  LIG A 900      10.000  10.000  10.000  1.00 20.00           C"]
    water = ["HETATM 9998  O   HOH B 901      12.000  10.000  10.000  1.00 20.00           O"]
    write_pdb(d / "ligand.pdb", renumber(groups, 1, chain="B") + het + water, XRAY)  # no TER record
    # a chain whose residues have no CA lines
    noca = [line for line in renumber(groups[:60], 1, chain="C") if line[12:16].strip() != "CA"]
    write_pdb(d / "noca.pdb", noca, XRAY)
    # a DNA chain
    dna = [f"ATOM  {i + 1:5d}  P    DA D{i + 1:4d}    {3.0 * i:8.3f}   0.000   0.000  1.00 20.00           P" for i in range(60)]
    write_pdb(d / "dna.pdb", dna, XRAY)
    # modified residue with a standard parent (MSE → M) is mapped, not rejected
    mse = [line[:17] + "MSE" + line[20:] if line[17:20] == "MET" else line for line in good]
    assert mse != good
    write_pdb(d / "mse.pdb", mse, XRAY)
    text = "\n".join(good) + "\n"
    (d / "truncated.pdb").write_text(text[: len(text) // 3 + 11])


def test_filters_reject_and_count_by_reason(tmp_path, ahs_lines):
    _write_filter_zoo(tmp_path, ahs_lines)
    dm = ProteinChainDataModule(root=str(tmp_path), cache_dir=str(tmp_path / ".cache"), min_length=50, max_length=256,
                                heldout=1, deduplicate_sequences=False, split_by="chain")
    dm.setup()
    desc = dm.describe()
    assert desc["rejected"] == {
        "unreadable_file": 1, "not_protein": 1, "nonstandard_residue": 1, "no_ca": 1, "too_short": 1, "too_long": 0,
        "experiment_method": 1, "resolution": 1, "duplicate_sequence": 0,
    }
    assert sorted(dm.store.keys) == ["good.pdb:A", "ligand.pdb:B", "mse.pdb:A"]
    assert all(dm.store.length(i) == 126 for i in range(3))  # the HETATM ligand is not part of chain B
    assert desc["notes"]["modified_residues_mapped"] > 0
    assert "truncated.pdb" in desc["rejected_examples"]["unreadable_file"][0]
    assert desc["rejected_examples"]["nonstandard_residue"] == ["unknown.pdb:A"]
    # modified residues rejected on request
    dm2 = ProteinChainDataModule(root=str(tmp_path), cache_dir=str(tmp_path / ".cache"), heldout=1, min_length=50, max_length=256,
                                 modified_residues="reject", split_by="chain")
    dm2.setup()
    assert dm2.describe()["rejected"]["nonstandard_residue"] == 2
    assert sorted(dm2.store.keys) == ["good.pdb:A", "ligand.pdb:B"]


def test_parallel_parsing_gives_the_same_chains(tmp_path, ahs_lines):
    _write_filter_zoo(tmp_path, ahs_lines)
    serial = ProteinChainDataModule(root=str(tmp_path), heldout=1, split_by="chain")
    pooled = ProteinChainDataModule(root=str(tmp_path), heldout=1, num_workers=2, split_by="chain")
    serial.setup()
    pooled.setup()
    assert serial.store.keys == pooled.store.keys and torch.equal(serial.store.ca_nm, pooled.store.ca_nm)
    assert serial.describe()["rejected"] == pooled.describe()["rejected"]


def test_unreadable_file_raises_when_not_skipping(tmp_path, ahs_lines):
    _write_filter_zoo(tmp_path, ahs_lines)
    dm = ProteinChainDataModule(root=str(tmp_path), heldout=1, skip_unreadable_files=False)
    with pytest.raises(DataError, match="truncated.pdb"):
        dm.setup()
