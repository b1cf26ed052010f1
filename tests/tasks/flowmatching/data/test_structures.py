"""Structure parsing: Cα in Å matching gemmi, mmCIF metadata, entity ids, unreadable files named."""

from __future__ import annotations

import gzip

import gemmi
import numpy as np
import pytest
import torch

from equivrepro.data import DataError
from tasks.flowmatching.data import ANGSTROM_PER_NM, chain_item, find_structure_files, parse_structure_file, read_structure


def test_real_structure_ca_in_nm_matches_gemmi(data_dir):
    path = data_dir / "dssp" / "1ahsA.pdb.gz"
    parsed = parse_structure_file(path)
    (chain,) = parsed["chains"]
    assert chain["reject"] is None and chain["chain"] == "A" and len(chain["sequence"]) == 126
    st = gemmi.read_structure(str(path))
    raw = np.array([[a.pos.x, a.pos.y, a.pos.z] for r in st[0]["A"] for a in r if a.name == "CA"])  # Å
    np.testing.assert_allclose(chain["ca_angstrom"], raw, atol=1e-4)
    np.testing.assert_allclose(chain["ca_angstrom"][0], [47.257, 10.677, 17.777], atol=1e-4)  # the file's first CA line
    item = chain_item(chain["ca_angstrom"], chain["resseq"])
    assert ANGSTROM_PER_NM == 10.0
    expected_nm = (raw - raw.mean(0)) / 10.0
    np.testing.assert_allclose(item["x1"].numpy(), expected_nm, atol=1e-5)
    assert item["x1"].dtype == torch.float32
    assert item["residue_index"][0] == 1 and item["residue_index"][-1] == 251 - 126 + 1  # PDB 126..251 re-based
    assert not item["chain_break"].any() and item["ca_mask"].all()
    # a consecutive Cα–Cα distance is 0.38 nm
    d = (item["x1"][1:] - item["x1"][:-1]).norm(dim=-1)
    assert 0.36 < float(d.median()) < 0.40


def test_mmcif_gz_metadata(data_dir):
    parsed = parse_structure_file(data_dir / "mmcif" / "5PTI.cif.gz")
    assert "X-RAY DIFFRACTION" in parsed["methods"] and parsed["resolution"] == pytest.approx(1.0)
    assert parsed["chains"][0]["reject"] is None and len(parsed["chains"][0]["sequence"]) == 58


def test_entity_ids_come_from_mmcif_entities_and_pdb_compnd_records(data_dir):
    """1BD2 (HLA-A2 / β2m / Tax peptide / TCR α / TCR β): entities 1–5 for chains A, B, C, D, E in both formats."""
    expected = {"A": "1", "B": "2", "C": "3", "D": "4", "E": "5"}
    for name in ("1BD2.cif.gz", "1BD2.pdb.gz"):
        chains = {c["chain"]: c["entity"] for c in parse_structure_file(data_dir / "mmcif" / name)["chains"]}
        assert chains == expected, name
    (only,) = parse_structure_file(data_dir / "dssp" / "1ahsA.pdb.gz")["chains"]  # no COMPND: no entity
    assert only["entity"] is None


def test_unreadable_files_raise_dataerror_naming_the_file(tmp_path, ahs_lines, data_dir):
    text = "\n".join(ahs_lines) + "\n"
    mid = tmp_path / "cut_mid_line.pdb"
    mid.write_text(text[: len(text) // 2 + 17])
    with pytest.raises(DataError, match="cut_mid_line.pdb.*truncated"):
        read_structure(mid)
    raw = (data_dir / "dssp" / "1ahsA.pdb.gz").read_bytes()
    gz = tmp_path / "cut.pdb.gz"
    gz.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cut.pdb.gz"):
        read_structure(gz)
    cif = gzip.open(data_dir / "mmcif" / "5PTI.cif.gz", "rt").read()
    cut_cif = tmp_path / "cut.cif"
    cut_cif.write_text(cif[: len(cif) * 2 // 3])
    with pytest.raises(DataError, match="cut.cif"):
        read_structure(cut_cif)
    empty = tmp_path / "empty.pdb"
    empty.write_text("REMARK nothing here\n")
    with pytest.raises(DataError, match="empty.pdb.*no atoms"):
        read_structure(empty)


def test_a_file_given_as_the_root_directory_says_so(tmp_path, data_dir):
    path = data_dir / "mmcif" / "5PTI.cif.gz"
    with pytest.raises(DataError) as err:
        find_structure_files(path)
    assert f"data.root={path} is a file, not a directory" in str(err.value) and "data.root=<" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        find_structure_files(tmp_path / "missing")
