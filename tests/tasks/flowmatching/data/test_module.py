"""The protein data module: embedded data, nested subsets, held-out sets that are held out, settings checks."""

from __future__ import annotations

import pytest
import torch

from equivrepro.data import DataConfigError
from tasks.flowmatching.data import ClusterRandomDataset, ProteinChainDataModule, load_clusters

EMBEDDED = dict(root=None, min_length=30, max_length=300)


def test_embedded_data(embedded_dm):
    desc = embedded_dm.describe()
    assert desc["embedded"] and desc["chains_kept"] >= 60
    assert 30 <= desc["length_min"] and desc["length_max"] <= 300
    assert desc["rejected"]["duplicate_sequence"] > 0 and desc["rejected"]["too_short"] > 0
    assert len(set(embedded_dm.store.sequences)) == len(embedded_dm.store)
    assert desc["heldout_groups"] == 12 and desc["heldout_size"] >= 12
    assert desc["train_size"] + desc["heldout_size"] == desc["chains_kept"]
    assert any("1osm.pdb.gz" in e and "truncated" in e for e in desc["rejected_examples"]["unreadable_file"])  # a cut wwPDB entry
    batch = embedded_dm.collate([embedded_dm.train_dataset[i] for i in range(4)])
    assert set(batch) == {"x1", "residue_index", "chain_break", "mask"}
    assert batch["residue_index"].dtype == torch.long and batch["mask"].dtype == torch.bool
    com = (batch["x1"] * batch["mask"][..., None]).sum(1) / batch["mask"].sum(1, keepdim=True)
    assert com.abs().max() < 1e-5
    assert torch.all(batch["x1"][~batch["mask"]] == 0)
    # nm: radius of gyration of a 50–300-residue protein is 1–3 nm
    rg = ((batch["x1"] ** 2).sum(-1) * batch["mask"]).sum(1) / batch["mask"].sum(1)
    assert torch.all((rg.sqrt() > 0.8) & (rg.sqrt() < 3.5))


def _sides(dm) -> tuple[list[int], list[int]]:
    train = sorted({int(i) for c in dm.train_dataset.clusters for i in c}) if isinstance(dm.train_dataset, ClusterRandomDataset) \
        else dm.train_dataset.indices.tolist()
    return train, dm.heldout_dataset.indices.tolist()


def _assert_held_out(dm) -> None:
    store = dm.store
    train, held = _sides(dm)
    assert held and train and not set(train) & set(held)
    assert not {store.sequences[i] for i in held} & {store.sequences[i] for i in train}, "a held-out sequence is in training"
    assert not {store.entries[i] for i in held} & {store.entries[i] for i in train}, "an entry is on both sides"


def test_no_heldout_sequence_or_entry_appears_in_training(embedded_cache):
    """Without deduplication the embedded data repeats sequences (AdK ×n, 1BD2 as .pdb and .cif) and entries have
    several chains: the default split still keeps them on one side."""
    for seed in range(3):
        dm = ProteinChainDataModule(**EMBEDDED, cache_dir=embedded_cache, deduplicate_sequences=False, heldout=0.2, seed=seed)
        dm.setup()
        assert len(set(dm.store.sequences)) < len(dm.store)  # there are repeats to keep together
        _assert_held_out(dm)
    leaky = ProteinChainDataModule(**EMBEDDED, cache_dir=embedded_cache, deduplicate_sequences=False, heldout=0.2, split_by="chain")
    leaky.setup()
    train, held = _sides(leaky)
    assert {leaky.store.sequences[i] for i in held} & {leaky.store.sequences[i] for i in train}  # what the default prevents


def test_nested_subsets_keep_the_heldout_set(embedded_dm, embedded_cache):
    small = ProteinChainDataModule(**EMBEDDED, cache_dir=embedded_cache, deduplicate_sequences=True, heldout=12, train_size=0.25)
    small.setup()
    assert small.heldout_dataset.chain_keys() == embedded_dm.heldout_dataset.chain_keys()
    assert set(small.train_dataset.chain_keys()) < set(embedded_dm.train_dataset.chain_keys())
    assert not set(small.train_dataset.chain_keys()) & set(small.heldout_dataset.chain_keys())
    assert small.describe()["train_groups"] == round(0.25 * embedded_dm.describe()["train_groups"])


def test_mmseqs_cluster_split_and_cluster_random_sampling(tmp_path, embedded_dm, embedded_cache):
    # clusters: chains whose sequences start alike (first 3 residues) form one cluster, a stand-in for MMseqs2
    store = embedded_dm.store
    rep: dict[str, str] = {}
    lines = [f"{rep.setdefault(seq[:3], cid)}\t{cid}" for cid, seq in zip(store.ids, store.sequences)]
    tsv = tmp_path / "clusters_cluster.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    assert len(load_clusters(tsv)) == len(store)
    dm = ProteinChainDataModule(**EMBEDDED, cache_dir=embedded_cache, deduplicate_sequences=True, heldout=0.2, clusters_file=str(tsv),
                                cluster_draws_per_epoch=3)
    dm.setup()
    desc = dm.describe()
    assert desc["clusters"] == len(set(rep.values())) and desc["unclustered_chains"] == 0 and desc["clusters_kind"] == "chain"
    ds = dm.train_dataset
    assert isinstance(ds, ClusterRandomDataset) and len(ds) == 3 * desc["train_clusters"]
    cluster_of = dict(line.split("\t")[::-1] for line in lines)
    held_clusters = {cluster_of[store.ids[i]] for i in dm.heldout_dataset.indices.tolist()}
    train_clusters = {cluster_of[store.ids[i]] for c in ds.clusters for i in c.tolist()}
    assert not held_clusters & train_clusters  # whole clusters are held out
    _assert_held_out(dm)
    # deterministic member draws; a multi-member cluster yields several members across draws/epochs
    multi = next(c for c, members in enumerate(ds.clusters) if members.numel() > 1)
    assert torch.equal(ds[multi]["x1"], ds[multi]["x1"])
    seen = {ds.member(multi, e) for e in range(40)}
    assert len(seen) > 1 and seen <= set(ds.clusters[multi].tolist())
    assert torch.equal(ds[(0, multi)]["x1"], ds[multi]["x1"])  # (epoch, index) form: epoch 0 draw 0
    old_name = ProteinChainDataModule(**EMBEDDED, cache_dir=embedded_cache, deduplicate_sequences=True, heldout=0.2, clusters_tsv=str(tsv))
    old_name.setup()
    assert old_name.heldout_dataset.chain_keys() == dm.heldout_dataset.chain_keys()


def test_rcsb_entity_clusters_map_onto_chains(tmp_path, embedded_dm, embedded_cache):
    """One RCSB cluster holding an entity of 1BD2 and the entity of 3PWP chain A: the two entries' chains stay together."""
    store = embedded_dm.store
    entity = {store.keys[i]: store.entities[i] for i in range(len(store))}
    a = next(e for k, e in entity.items() if k.startswith("mmcif/1BD2") and e)
    b = next(e for k, e in entity.items() if k.startswith("mmcif/3PWP") and e)
    rcsb = tmp_path / "clusters-by-entity-30.txt"
    rcsb.write_text(f"{a.upper()} {b.upper()}\n")
    for seed in range(4):
        dm = ProteinChainDataModule(**EMBEDDED, cache_dir=embedded_cache, deduplicate_sequences=True, heldout=0.3, clusters_file=str(rcsb),
                                    seed=seed)
        dm.setup()
        assert dm.describe()["clusters_kind"] == "entity"
        held = {dm.store.keys[i].split(":")[0].split(".")[0] for i in dm.heldout_dataset.indices.tolist()}
        assert ("mmcif/1BD2" in held) == ("mmcif/3PWP" in held)
        _assert_held_out(dm)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(heldout=0), "data.heldout must be an int ≥ 1 or a fraction in (0, 1), got 0"),
        (dict(train_size=2.5), "data.train_size"),
        (dict(min_length=300, max_length=50), "data.min_length"),
        (dict(split_by="cluster"), "data.split_by"),
        (dict(modified_residues="keep"), "data.modified_residues"),
        (dict(clusters_format="csv"), "data.clusters_format"),
        (dict(num_workers=-1), "data.num_workers"),
        (dict(cluster_draws_per_epoch=0), "data.cluster_draws_per_epoch"),
        (dict(deduplicate_sequences="yes"), "data.deduplicate_sequences"),
    ],
)
def test_bad_settings_name_the_config_key_at_construction(kwargs, key):
    with pytest.raises(DataConfigError) as err:
        ProteinChainDataModule(root="/never/read", **kwargs)
    assert key in str(err.value)


def test_a_heldout_count_the_data_cannot_hold_names_the_setting(embedded_cache):
    dm = ProteinChainDataModule(**EMBEDDED, cache_dir=embedded_cache, deduplicate_sequences=True, heldout=500)
    message = r"held-out size 500 must be between 1 and \d+ \(dataset has \d+ sequence/entry groups\): change data.heldout"
    with pytest.raises(DataConfigError, match=message):
        dm.setup()
