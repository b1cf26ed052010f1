"""The frozen held-out set: the same arguments give the same samples, evaluation batches and rotations; another seed
redraws all three; suffixes are selected and pooled."""

from __future__ import annotations

import pytest
import torch

from equivrepro.analysis.heldout import ALL_SUFFIXES, freeze_heldout, pick_suffix
from equivrepro.rotations import haar_rotations
from equivrepro.testing.pointcloud import PointCloudDataModule, PointCloudTask


class TwoTimesTask(PointCloudTask):
    """Point clouds evaluated at two frozen noise levels (suffixes ``s=0.1``, ``s=1``), noise drawn from the generator."""

    def evaluation_batches(self, batch, generator):
        out = {}
        for s in (1.0, 0.1):
            noise = torch.randn(batch["pos"].shape, generator=generator, dtype=batch["pos"].dtype)
            out[f"s={s:g}"] = {**batch, "pos": batch["pos"] + s * noise}
        return out


def _data(n_heldout: int = 10):
    dm = PointCloudDataModule(n_train=4, n_heldout=n_heldout, n_points=5, seed=0)
    dm.setup()
    return dm


def test_same_arguments_same_set_and_the_documented_draw_order():
    dm, task = _data(), TwoTimesTask()
    a = freeze_heldout(task, dm.heldout_dataset, dm.collate, 7, 3, 4, seed=11)
    b = freeze_heldout(task, dm.heldout_dataset, dm.collate, 7, 3, 4, seed=11)
    assert a.num_samples == 7 and a.k == 3 and [r.shape for r in a.rotations] == [(4, 3, 3, 3), (3, 3, 3, 3)]
    assert a.suffixes == ["s=0.1", "s=1"] and a.indices == b.indices and len(set(a.indices)) == 7
    for s in a.suffixes:
        for x, y in zip(a.chunks[s], b.chunks[s]):
            assert torch.equal(x["pos"], y["pos"])
    for x, y in zip(a.rotations, b.rotations):
        assert torch.equal(x, y)
    # the draw order of the module docstring, re-derived: indices, then per chunk rotations before the task's noise
    g = torch.Generator().manual_seed(11)
    idx = torch.randperm(10, generator=g)[:7].sort().values.tolist()
    assert idx == a.indices
    rot0 = haar_rotations(4 * 3, generator=g).reshape(4, 3, 3, 3)
    assert torch.equal(rot0, a.rotations[0])
    noise = torch.randn(a.chunks["s=1"][0]["pos"].shape, generator=g, dtype=torch.float32)
    raw = dm.collate([dm.heldout_dataset[i] for i in idx[:4]])
    assert torch.allclose(a.chunks["s=1"][0]["pos"], raw["pos"] + noise)


def test_another_seed_redraws_samples_noise_and_rotations():
    dm, task = _data(40), TwoTimesTask()
    a = freeze_heldout(task, dm.heldout_dataset, dm.collate, 6, 3, 6, seed=1)
    b = freeze_heldout(task, dm.heldout_dataset, dm.collate, 6, 3, 6, seed=2)
    assert a.indices != b.indices
    assert not torch.equal(a.rotations[0], b.rotations[0])
    # all of the held-out set: the same samples, but new noise and rotations
    c = freeze_heldout(task, dm.heldout_dataset, dm.collate, 100, 3, 64, seed=1)
    d = freeze_heldout(task, dm.heldout_dataset, dm.collate, 100, 3, 64, seed=2)
    assert c.num_samples == 40 and c.indices == d.indices == list(range(40))
    assert not torch.equal(c.chunks["s=1"][0]["pos"], d.chunks["s=1"][0]["pos"])


def test_select_and_pick_suffix():
    dm, task = _data(), TwoTimesTask()
    h = freeze_heldout(task, dm.heldout_dataset, dm.collate, 7, 2, 4, seed=0)
    one, rot = h.select("s=1")
    assert len(one) == 2 and len(rot) == 2
    pooled, prot = h.select(ALL_SUFFIXES)
    assert len(pooled) == 4 and len(prot) == 4 and torch.equal(prot[2], h.rotations[0])
    with pytest.raises(KeyError, match="s=0.5"):
        h.select("s=0.5")
    assert pick_suffix(["s=1", "s=0.1"]) == "s=0.1"  # natural order, first
    assert pick_suffix(["s=1", "s=0.1"], preferred="s=1") == "s=1"
    assert pick_suffix(["s=1", "s=0.1"], preferred="t=0.6") == "s=0.1"
    assert pick_suffix([""], preferred="t=0.6") == ""
    assert pick_suffix(["s=1", "s=0.1"], "all") == "all"
    with pytest.raises(KeyError):
        pick_suffix(["s=1"], "s=2")
    with pytest.raises(ValueError, match="K ≥ 2"):
        freeze_heldout(task, dm.heldout_dataset, dm.collate, 3, 1, 4, seed=0)
