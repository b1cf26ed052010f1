"""Structure parsing, units, chain breaks, filters with counted rejects, bad input, cache, splits."""

from __future__ import annotations

import gzip
import os

import gemmi
import numpy as np
import pytest
import torch

from equivrepro.data import DataError
from tasks.flowmatching.data import (
    ANGSTROM_PER_NM,
    ChainDataset,
    ClusterRandomDataset,
    ProteinChainDataModule,
    chain_break_flags,
    chain_item,
    load_clusters,
    parse_structure_file,
    read_structure,
)
from tests.tasks.flowmatching.conftest import renumber, residues_of, write_pdb

XRAY = ["EXPDTA    X-RAY DIFFRACTION", "REMARK   2 RESOLUTION.    2.00 ANGSTROMS."]


# ---- parsing and units ---------------------------------------------------------------------------
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
    dm = ProteinChainDataModule(root=str(tmp_path), min_length=30, max_length=300, heldout=1)
    with pytest.raises(DataError, match="pass the filters"):  # one chain cannot be split
        dm.setup()


# ---- bad input -----------------------------------------------------------------------------------
def test_truncated_files_raise_dataerror_naming_the_file(tmp_path, ahs_lines, data_dir):
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


def _write_filter_zoo(d, ahs_lines):
    """A directory with one good chain and one chain for every reject reason."""
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
                                heldout=1, deduplicate_sequences=False)
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
                                 modified_residues="reject")
    dm2.setup()
    assert dm2.describe()["rejected"]["nonstandard_residue"] == 2
    assert sorted(dm2.store.keys) == ["good.pdb:A", "ligand.pdb:B"]


def test_parallel_parsing_gives_the_same_chains(tmp_path, ahs_lines):
    _write_filter_zoo(tmp_path, ahs_lines)
    serial = ProteinChainDataModule(root=str(tmp_path), heldout=1)
    pooled = ProteinChainDataModule(root=str(tmp_path), heldout=1, num_workers=2)
    serial.setup()
    pooled.setup()
    assert serial.store.keys == pooled.store.keys and torch.equal(serial.store.ca_nm, pooled.store.ca_nm)
    assert serial.describe()["rejected"] == pooled.describe()["rejected"]


def test_unreadable_file_raises_when_not_skipping(tmp_path, ahs_lines):
    _write_filter_zoo(tmp_path, ahs_lines)
    dm = ProteinChainDataModule(root=str(tmp_path), heldout=1, skip_unreadable_files=False)
    with pytest.raises(DataError, match="truncated.pdb"):
        dm.setup()


def test_cache_is_reused_and_invalidated(tmp_path, ahs_lines):
    groups = residues_of(ahs_lines)
    src = tmp_path / "src"
    src.mkdir()
    write_pdb(src / "a.pdb", renumber(groups, 1), XRAY)
    write_pdb(src / "b.pdb", renumber(groups[:-10], 1, chain="B"), XRAY)
    kw = dict(root=str(src), cache_dir=str(tmp_path / "cache"), heldout=1, min_length=50)
    dm = ProteinChainDataModule(**kw)
    dm.setup()
    assert dm.describe()["cache"]["parsed"] == 2
    dm = ProteinChainDataModule(**kw)
    dm.setup()
    assert dm.describe()["cache"] == {"cache_hits": 2, "parsed": 0, "dir": kw["cache_dir"]}
    write_pdb(src / "b.pdb", renumber(groups[:-20], 1, chain="B"), XRAY)
    os.utime(src / "b.pdb", ns=(1, 1))  # a different mtime even on coarse clocks
    dm = ProteinChainDataModule(**kw)
    dm.setup()
    assert dm.describe()["cache"]["parsed"] == 1
    assert sorted(dm.store.length(i) for i in range(2)) == [106, 126]
    assert not list((tmp_path / "cache").rglob("*.tmp"))


# ---- the embedded data ---------------------------------------------------------------------------
def test_embedded_data(embedded_dm):
    desc = embedded_dm.describe()
    assert desc["embedded"] and desc["chains_kept"] >= 60
    assert 30 <= desc["length_min"] and desc["length_max"] <= 300
    assert desc["rejected"]["duplicate_sequence"] > 0 and desc["rejected"]["too_short"] > 0
    assert len(set(embedded_dm.store.sequences)) == len(embedded_dm.store)
    assert desc["heldout_size"] == 12 and desc["train_size"] == desc["chains_kept"] - 12
    batch = embedded_dm.collate([embedded_dm.train_dataset[i] for i in range(4)])
    assert set(batch) == {"x1", "residue_index", "chain_break", "mask"}
    b, n, _ = batch["x1"].shape
    assert batch["residue_index"].dtype == torch.long and batch["mask"].dtype == torch.bool
    com = (batch["x1"] * batch["mask"][..., None]).sum(1) / batch["mask"].sum(1, keepdim=True)
    assert com.abs().max() < 1e-5
    assert torch.all(batch["x1"][~batch["mask"]] == 0)
    # nm: radius of gyration of a 50–300-residue protein is 1–3 nm
    rg = ((batch["x1"] ** 2).sum(-1) * batch["mask"]).sum(1) / batch["mask"].sum(1)
    assert torch.all((rg.sqrt() > 0.8) & (rg.sqrt() < 3.5))


def test_nested_subsets_keep_the_heldout_set(embedded_dm, embedded_cache):
    small = ProteinChainDataModule(root=None, cache_dir=embedded_cache, min_length=30, max_length=300,
                                   deduplicate_sequences=True, heldout=12, train_subset=0.25)
    small.setup()
    assert small.heldout_dataset.chain_keys() == embedded_dm.heldout_dataset.chain_keys()
    assert set(small.train_dataset.chain_keys()) < set(embedded_dm.train_dataset.chain_keys())
    assert not set(small.train_dataset.chain_keys()) & set(small.heldout_dataset.chain_keys())
    assert len(small.train_dataset) == round(0.25 * len(embedded_dm.train_dataset))


def test_cluster_split_and_cluster_random_sampling(tmp_path, embedded_dm, embedded_cache):
    # clusters: chains of the same file form one cluster (e.g. 1BD2 A/B/D/E), every other chain its own
    store = embedded_dm.store
    files = {}
    for key, cid in zip(store.keys, store.ids):
        files.setdefault(key.split(":")[0], []).append(cid)
    lines = [f"{members[0]}\t{m}" for members in files.values() for m in members]
    tsv = tmp_path / "clusters_cluster.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    assert len(load_clusters(tsv)) == len(store)
    dm = ProteinChainDataModule(root=None, cache_dir=embedded_cache, min_length=30, max_length=300, deduplicate_sequences=True,
                                heldout=0.2, clusters_tsv=str(tsv), cluster_draws_per_epoch=3)
    dm.setup()
    desc = dm.describe()
    assert desc["clusters"] == len(files) and desc["unclustered_chains"] == 0
    ds = dm.train_dataset
    assert isinstance(ds, ClusterRandomDataset) and len(ds) == 3 * desc["train_clusters"]
    held_files = {k.split(":")[0] for k in dm.heldout_dataset.chain_keys()}
    train_files = {store.keys[i].split(":")[0] for c in ds.clusters for i in c.tolist()}
    assert not held_files & train_files  # whole clusters are held out
    # deterministic member draws; a multi-member cluster yields several members across draws/epochs
    multi = next(c for c, members in enumerate(ds.clusters) if members.numel() > 1)
    first = ds[multi]
    assert torch.equal(first["x1"], ds[multi]["x1"])
    seen = {ds.member(multi, e) for e in range(40)}
    assert len(seen) > 1 and seen <= set(ds.clusters[multi].tolist())
    assert torch.equal(ds[(0, multi)]["x1"], ds[multi]["x1"])  # (epoch, index) form: epoch 0 draw 0
    # malformed cluster files name the line
    bad = tmp_path / "bad.tsv"
    bad.write_text("1abc_A 1abc_A\n")
    with pytest.raises(DataError, match="bad.tsv:1"):
        load_clusters(bad)


def test_chain_dataset_items(embedded_dm):
    ds = ChainDataset(embedded_dm.store, [0, 1])
    assert len(ds) == 2 and set(ds[0]) == {"x1", "residue_index", "chain_break", "ca_mask"}
