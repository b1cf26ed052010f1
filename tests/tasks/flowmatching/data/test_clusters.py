"""Cluster files (MMseqs2 TSV, RCSB clusters-by-entity) and the union–find groups of the split."""

from __future__ import annotations

import pytest

from equivrepro.data import DataError
from tasks.flowmatching.data import group_chains, load_clusters, load_entity_clusters, read_cluster_file
from tasks.flowmatching.data.clusters import split_groups


def test_cluster_file_formats_are_told_apart_and_ids_normalised(tmp_path):
    tsv = tmp_path / "clusters_cluster.tsv"
    tsv.write_text("1ABC_A\t1abc_A\n1ABC_A\t2xyz_B\n")
    assert read_cluster_file(tsv) == ("chain", {"1abc_A": "1abc_A", "2xyz_B": "1abc_A"})
    rcsb = tmp_path / "clusters-by-entity-30.txt"
    rcsb.write_text("4HHB_1 2HHB_1 1A3N_1\n4HHB_2\n\n")
    kind, table = read_cluster_file(rcsb)
    assert kind == "entity" and table == {"4hhb_1": "line1", "2hhb_1": "line1", "1a3n_1": "line1", "4hhb_2": "line2"}
    assert load_entity_clusters(rcsb) == table and load_clusters(tsv)["2xyz_B"] == "1abc_A"


def test_malformed_cluster_files_name_the_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("1abc_A 1abc_A\n")
    with pytest.raises(DataError, match="bad.tsv:1"):
        load_clusters(bad)
    bad.write_text("4HHB_1 4HHB_2\n4HHB-A\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: '4HHB-A' is not a '<PDBID>_<entity>' id"):
        load_entity_clusters(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_cluster_file(tmp_path / "missing.txt")


def test_groups_join_chains_that_share_any_key():
    keys = [("e1", "SEQA"), ("e1", "SEQB"), ("e2", "SEQB"), ("e3", "SEQC"), ("e4", "SEQD"), ("e5", "SEQC")]
    assert group_chains(keys) == [[0, 1, 2], [3, 5], [4]]
    assert group_chains([("e1", None), ("e2", None)]) == [[0], [1]]


def test_split_keeps_oversized_groups_in_training():
    groups = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]] + [[12 + i] for i in range(30)]
    for seed in range(5):
        train, held, oversized = split_groups(groups, 10, seed)
        assert oversized == [0] and 0 in train and 0 not in held and len(held) == 10
        assert sorted(train + held) == list(range(31))
