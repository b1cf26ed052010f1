"""Tests of the shared data helpers in :mod:`equivrepro.data`: seeded splits, nested subsets, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equivrepro.data import (
    DataConfigError,
    DataError,
    SubsetDataset,
    check_choice,
    check_number,
    check_size,
    ensure_data_file,
    heldout_split,
    nested_subset,
    open_hdf5,
    pad_collate,
    shortest_distances,
)


# --------------------------------------------------------------------------------------------------
# heldout_split
# --------------------------------------------------------------------------------------------------
def test_heldout_split_partitions_and_is_seeded():
    train, held = heldout_split(1000, 100, seed=3)
    assert held.numel() == 100 and train.numel() == 900
    assert torch.equal(torch.cat([train, held]).sort().values, torch.arange(1000))  # disjoint, covers all
    assert torch.equal(train, train.sort().values) and torch.equal(held, held.sort().values)
    again = heldout_split(1000, 100, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], held)
    other = heldout_split(1000, 100, seed=4)[1]
    assert not torch.equal(other, held)
    # a random 10 % split, not a block: held-out indices spread over the whole range
    assert held.min() < 100 and held.max() > 900


def test_heldout_split_fraction_and_errors():
    train, held = heldout_split(200, 0.25, seed=0)
    assert held.numel() == 50 and train.numel() == 150
    for bad in (0, 200, 0.0, 300):
        with pytest.raises(ValueError, match="held-out size"):
            heldout_split(200, bad, seed=0)


def test_heldout_split_errors_name_the_setting_to_change():
    with pytest.raises(DataConfigError, match=r"between 1 and 4 \(dataset has 5 molecules\): change data.heldout_size \(now 5\)"):
        heldout_split(5, 5, seed=0, setting="data.heldout_size", unit="molecules")
    with pytest.raises(DataConfigError, match=r"cannot hold out from 1 chains .*change data.heldout"):
        heldout_split(1, 1, seed=0, setting="data.heldout", unit="chains")
    with pytest.raises(DataConfigError, match=r"data.train_size=50 is not within 1..20"):
        nested_subset(torch.arange(20), 50, seed=0, setting="data.train_size")


# --------------------------------------------------------------------------------------------------
# nested_subset
# --------------------------------------------------------------------------------------------------
def test_nested_subsets_are_nested_within_the_pool():
    pool, _ = heldout_split(5000, 500, seed=1)
    sizes = [10, 100, 1000, 4500]
    subsets = [nested_subset(pool, s, seed=9) for s in sizes]
    pool_set = set(pool.tolist())
    for s, sub in zip(sizes, subsets):
        assert sub.numel() == s and len(set(sub.tolist())) == s
        assert set(sub.tolist()) <= pool_set
        assert torch.equal(sub, sub.sort().values)
    for small, big in zip(subsets, subsets[1:]):
        assert set(small.tolist()) <= set(big.tolist())
    # another seed gives another subset; None and 1.0 keep the whole pool
    assert not torch.equal(nested_subset(pool, 100, seed=10), subsets[1])
    assert torch.equal(nested_subset(pool, None, seed=9), pool)
    assert torch.equal(nested_subset(pool, 1.0, seed=9), pool)
    assert nested_subset(pool, 0.1, seed=9).numel() == 450
    assert set(nested_subset(pool, 0.1, seed=9).tolist()) <= set(nested_subset(pool, 0.2, seed=9).tolist())


def test_nested_subset_rejects_impossible_sizes():
    pool = torch.arange(20)
    for bad in (0, 21, 1000):
        with pytest.raises(ValueError, match="not within 1..20"):
            nested_subset(pool, bad, seed=0)


def test_subset_dataset_views_the_base():
    base = [{"x": torch.tensor([float(i)])} for i in range(10)]
    view = SubsetDataset(base, torch.tensor([7, 2]))
    assert len(view) == 2 and float(view[0]["x"]) == 7.0 and float(view[1]["x"]) == 2.0


# --------------------------------------------------------------------------------------------------
# pad_collate
# --------------------------------------------------------------------------------------------------
def _items():
    g = torch.Generator().manual_seed(0)
    out = []
    for n in (3, 5, 1):
        out.append(
            {
                "pos": torch.randn(n, 3, generator=g),
                "z": torch.randint(1, 9, (n,), generator=g),
                "energy": torch.randn((), generator=g),
                "cell": torch.randn(3, 3, generator=g),
            }
        )
    return out


def test_pad_collate_pads_masks_and_stacks():
    items = _items()
    batch = pad_collate(items, ragged=("pos", "z"))
    assert batch["pos"].shape == (3, 5, 3) and batch["z"].shape == (3, 5)
    assert batch["energy"].shape == (3,) and batch["cell"].shape == (3, 3, 3)
    assert batch["z"].dtype == items[0]["z"].dtype
    assert batch["mask"].dtype == torch.bool
    assert batch["mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5, [True] + [False] * 4]
    for i, it in enumerate(items):
        n = it["pos"].shape[0]
        assert torch.equal(batch["pos"][i, :n], it["pos"]) and torch.equal(batch["z"][i, :n], it["z"])
        assert torch.equal(batch["pos"][i, n:], torch.zeros(5 - n, 3))
        assert torch.equal(batch["z"][i, n:], torch.zeros(5 - n, dtype=it["z"].dtype))
        assert torch.equal(batch["cell"][i], it["cell"]) and torch.equal(batch["energy"][i], it["energy"])


def test_pad_collate_length_key_sets_the_mask():
    """The mask follows ``length_key`` when the first ragged key is not the per-atom one."""
    items = [{"pos": torch.ones(n, 3), "pair": torch.ones(n * n, 2)} for n in (2, 3)]
    batch = pad_collate(items, ragged=("pair", "pos"), length_key="pos")
    assert batch["mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["pair"].shape == (2, 9, 2) and batch["pos"].shape == (2, 3, 3)
    assert batch["pair"][0, 4:].abs().sum() == 0


def test_pad_collate_rejects_unequal_non_ragged_shapes():
    items = [{"z": torch.ones(2), "cell": torch.ones(2, 3)}, {"z": torch.ones(3), "cell": torch.ones(3, 3)}]
    with pytest.raises(RuntimeError):
        pad_collate(items, ragged=("z",))


def test_process_local_file_opens_once_per_process_and_pickles_without_its_handle(tmp_path):
    import functools
    import pickle

    from equivrepro.data import ProcessLocalFile

    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    opened = []

    handle = ProcessLocalFile(functools.partial(open, str(path), "rb"))
    first = handle.get()
    assert handle.get() is first and first.read() == b"abc"
    clone = pickle.loads(pickle.dumps(handle))  # what a spawned DataLoader worker receives
    assert clone._handle is None and clone.get() is not first and clone.get().read() == b"abc"
    handle._pid = -1  # as seen from a forked worker: another process id → reopened, not shared
    assert handle.get() is not first
    opened.extend([first, clone.get(), handle.get()])
    for f in opened:
        f.close()


# --------------------------------------------------------------------------------------------------
# settings checks
# --------------------------------------------------------------------------------------------------
def test_check_size_accepts_counts_and_fractions_and_names_the_key():
    assert check_size(5, "data.k") == 5 and check_size(0.25, "data.k") == 0.25 and check_size(5e4, "data.k") == 50000
    assert check_size(None, "data.k", allow_none=True) is None and check_size(1.0, "data.k", allow_whole=True) == 1.0
    for bad in (0, -2, 1.0, 0.0, 2.5, True, "10", None):
        with pytest.raises(DataConfigError, match=r"^data\.k must be an int ≥ 1 or a fraction in \(0, 1\)"):
            check_size(bad, "data.k")


def test_check_choice_and_number_name_the_key_and_the_allowed_values():
    assert check_choice("a", "data.c", ("a", "b")) == "a"
    with pytest.raises(DataConfigError, match=r"data.c must be one of 'a', 'b', got 'z'"):
        check_choice("z", "data.c", ("a", "b"))
    assert check_number(3, "data.n", 1, integer=True) == 3 and check_number(None, "data.n", allow_none=True) is None
    for bad, kw in ((0, dict(minimum=1, integer=True)), (1.5, dict(integer=True)), (0.0, dict(minimum=0.0, strict=True)), ("1", {})):
        with pytest.raises(DataConfigError, match="^data.n must be"):
            check_number(bad, "data.n", **kw)


# --------------------------------------------------------------------------------------------------
# files and geometry
# --------------------------------------------------------------------------------------------------
def test_shortest_distances_per_conformer():
    x = np.array([[[0.0, 0, 0], [3.0, 0, 0], [0, 4.0, 0]], [[0.0, 0, 0], [0.5, 0, 0], [0, 4.0, 0]]])
    np.testing.assert_allclose(shortest_distances(x), [3.0, 0.5])
    np.testing.assert_allclose(shortest_distances(x, chunk=1), [3.0, 0.5])  # chunked the same
    assert shortest_distances(x[0]).shape == (1,) and np.isinf(shortest_distances(np.zeros((2, 1, 3)))).all()


def test_open_hdf5_names_the_file_for_empty_cut_and_foreign_files(tmp_path):
    import h5py

    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as f:
        f.create_dataset("x", data=np.arange(100000))
    with open_hdf5(good) as f:
        assert f["x"].shape == (100000,)
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "cut.h5").write_bytes(good.read_bytes()[:5000])
    (tmp_path / "text.h5").write_text("not hdf5\n")
    for name, words in (("empty.h5", "empty"), ("cut.h5", "truncated"), ("text.h5", "not an HDF5 file"), ("missing.h5", "no such file")):
        with pytest.raises(DataError) as err:
            open_hdf5(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and words in str(err.value)


def test_ensure_data_file_generates_only_the_embedded_location(tmp_path):
    calls = []

    class Embedded:
        path = str(tmp_path / "embedded.h5")

        def __call__(self):
            calls.append(self.path)
            (tmp_path / "embedded.h5").write_bytes(b"x")
            return {"seconds": 0.0}

    with pytest.raises(DataError, match=r"data.path=.*embeded.h5: no such file.*make data"):
        ensure_data_file(str(tmp_path / "embeded.h5"), Embedded())
    assert calls == []
    ensure_data_file(Embedded.path, Embedded())
    ensure_data_file(Embedded.path, Embedded())  # exists now: not generated again
    assert calls == [Embedded.path]
    with pytest.raises(DataError, match="how to get it"):
        ensure_data_file(str(tmp_path / "other.h5"), None, hint="how to get it")
