"""Per-entity attribution of L_equiv: the binned map partitions the U-statistic, and puts the error where it is."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from equivrepro.metrics import decompose_term, untwisted_predictions
from equivrepro.metrics.attribution import OTHER, Attribution, BinnedEquiv, Descriptor, attribute, binned_equiv, element_descriptor
from equivrepro.metrics.keys import ATTRIBUTION, attribution_of, parse
from equivrepro.metrics.metric import EquivarianceMetric
from equivrepro.metrics.spectral import equiv_map
from equivrepro.rotations import haar_rotations
from equivrepro.testing.pointcloud import NonEquivariantMLP, PointCloudTask, make_pointcloud_batch
from tasks.flowmatching.task import FlowMatchingTask
from tasks.forcefield.task import ForceFieldTask
from tasks.voxels.task import VoxelDenoisingTask

POINTS = PointCloudTask()


def _haar(b: int, k: int, seed: int) -> torch.Tensor:
    return haar_rotations(b * k, torch.Generator().manual_seed(seed), torch.float64).reshape(b, k, 3, 3)


def _by_bin(binned: BinnedEquiv) -> dict[tuple[str, str], int]:
    return {b: i for i, b in enumerate(binned.bins)}


def test_binned_shares_partition_the_u_statistic(f64, gen):
    """Per sample, the bins of every descriptor sum to the sample's L_equiv U-statistic, so the pooled shares sum to 1;
    per-entity means times counts give back the bin sums."""
    torch.manual_seed(0)
    model = NonEquivariantMLP(16).double()
    batch = make_pointcloud_batch(12, 9, gen)
    rot = _haar(12, 6, seed=1)
    term = POINTS.terms[0]
    with torch.no_grad():
        z = untwisted_predictions(model, POINTS, batch, rot)
    binned = binned_equiv(z, term, POINTS.targets(batch), batch, POINTS.attribution(batch))
    dec = decompose_term(term, z, POINTS.targets(batch), batch)
    torch.testing.assert_close(binned.equiv, dec.equiv_unbiased.double(), rtol=1e-12, atol=0)
    assert float(binned.equiv.min()) > 0
    torch.testing.assert_close(binned.sums.sum(1), binned.equiv, rtol=1e-12, atol=0)  # one descriptor: its bins partition
    assert math.isclose(float(binned.share.sum()), 1.0, rel_tol=1e-12)
    assert float(binned.count.sum()) == 12 * 9  # every point in exactly one bin
    filled = binned.count > 0
    torch.testing.assert_close((binned.per_entity * binned.count)[filled], binned.sums.sum(0)[filled])
    assert (binned.share_se[filled] >= 0).all() and torch.isfinite(binned.share_se[filled]).all()
    # the map itself, grouped by hand, gives the same bins
    emap = equiv_map(z, term, POINTS.targets(batch), batch)["vec"].sum(-1)
    d = POINTS.attribution(batch)["vec"].descriptors[0]
    by_hand = torch.zeros(len(d.bin_labels), dtype=torch.float64).index_add_(0, d.bin_index().flatten(), emap.flatten())
    torch.testing.assert_close(binned.sums.sum(0), by_hand)


class _OxygenKick(nn.Module):
    """Equivariant forces (a pair term along r_ij) plus a fixed vector on oxygen atoms only — and on atoms farther than
    3 Å from the centroid: the only non-equivariant parts."""

    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.kick = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)

    def forward(self, pos, z, mask):
        m = mask[..., None].to(pos.dtype)
        diff = (pos[:, :, None] - pos[:, None, :]) * m[:, None]
        forces = (diff * torch.exp(-diff.pow(2).sum(-1, keepdim=True))).sum(2)
        if self.where == "oxygen":
            hit = z == 8
        else:
            centre = (pos * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
            hit = (pos - centre).norm(dim=-1) > 3.0
        forces = forces + (hit & mask)[..., None].to(pos.dtype) * self.kick
        return {"energy": torch.zeros(pos.shape[0], dtype=pos.dtype), "forces": forces}


def _molecules(gen: torch.Generator, sizes=(6, 9, 7, 5)) -> dict[str, torch.Tensor]:
    n = max(sizes)
    mask = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
    pos = torch.randn(len(sizes), n, 3, generator=gen, dtype=torch.float64) * 2.0 * mask[..., None]
    z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (len(sizes), n), generator=gen)] * mask
    z[:, 0] = 8  # every molecule has an oxygen
    forces = torch.randn(len(sizes), n, 3, generator=gen, dtype=torch.float64) * mask[..., None]
    return {"pos": pos, "z": z, "mask": mask, "energy": torch.zeros(len(sizes), dtype=torch.float64), "forces": forces}


def test_an_error_on_one_element_gives_that_element_all_the_share(gen):
    task, batch = ForceFieldTask(), _molecules(gen)
    rot = _haar(4, 8, seed=2)
    forces = task.terms[0]
    with torch.no_grad():
        z = untwisted_predictions(_OxygenKick("oxygen"), task, batch, rot)
    binned = binned_equiv(z, forces, task.targets(batch), batch, task.attribution(batch))
    idx = _by_bin(binned)
    share = binned.share
    assert float(binned.equiv.min()) > 0
    assert math.isclose(float(share[idx[("element", "O")]]), 1.0, rel_tol=1e-9)
    for sym in ("H", "C", "N"):
        assert abs(float(share[idx[("element", sym)]])) < 1e-9, sym
    # the distance descriptor still partitions the same total
    dist = [i for (d, _), i in idx.items() if d == "centroid_distance_A"]
    assert math.isclose(float(share[dist].sum()), 1.0, rel_tol=1e-12)
    # the energy term weighs a per-molecule scalar with no entities: not attributed
    assert binned_equiv(z, task.terms[2], task.targets(batch), batch, task.attribution(batch)) is None
    assert binned_equiv(z, task.terms[1], task.targets(batch), batch, task.attribution(batch)) is None  # not quadratic


def test_an_error_far_from_the_centroid_lands_in_the_far_bins(gen):
    task, batch = ForceFieldTask(), _molecules(gen, sizes=(12, 14, 10))
    rot = _haar(3, 8, seed=3)
    with torch.no_grad():
        z = untwisted_predictions(_OxygenKick("far"), task, batch, rot)
    binned = binned_equiv(z, task.terms[0], task.targets(batch), batch, task.attribution(batch))
    far = sum(
        float(binned.share[i]) for (d, lab), i in _by_bin(binned).items() if d == "centroid_distance_A" and lab in ("3-4", "4-6", "6+")
    )
    assert float(binned.equiv.min()) > 0 and math.isclose(far, 1.0, rel_tol=1e-9)


def test_the_metric_pools_batches_and_logs_parseable_keys(f64, gen):
    torch.manual_seed(1)
    model = NonEquivariantMLP(8).double()
    a, b = make_pointcloud_batch(5, 7, gen), make_pointcloud_batch(7, 7, gen)
    ra, rb = _haar(5, 4, seed=4), _haar(7, 4, seed=5)
    metric = EquivarianceMetric(POINTS, k=4, bootstrap=0, sync=False, attribution=True, suffix="t=0.5")
    metric.update(model, a, ra)
    metric.update(model, b, rb)
    pooled = metric.attributions()["mse"]
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    with torch.no_grad():
        z = untwisted_predictions(model, POINTS, both, torch.cat([ra, rb]))
    once = binned_equiv(z, POINTS.terms[0], POINTS.targets(both), both, POINTS.attribution(both))
    torch.testing.assert_close(pooled.sums, once.sums)
    torch.testing.assert_close(pooled.share, once.share)
    values = metric.compute()
    att = {k: v for k, v in values.items() if parse(k) is not None and parse(k).family == ATTRIBUTION}
    assert att and all(parse(k).suffix == "t=0.5" and parse(k).term == "mse" for k in att)  # the l2mae term is not quadratic
    shares = [v for k, v in att.items() if attribution_of(k).stat == ""]
    assert math.isclose(sum(shares), 1.0, rel_tol=1e-9)
    assert sum(v for k, v in att.items() if attribution_of(k).stat == "count") == 12 * 7
    off = EquivarianceMetric(POINTS, k=4, bootstrap=0, sync=False)
    off.update(model, a, ra)
    assert not any(parse(k).family == ATTRIBUTION for k in off.compute() if parse(k) is not None) and not off.attributions()


def test_descriptor_bins_and_their_errors():
    v = torch.tensor([[-1.0, 0.0, 0.99, 1.0, 2.5, 7.0, 100.0]])
    d = Descriptor("dist_A", v, edges=(0.0, 1.0, 3.0, math.inf))
    assert d.bin_labels == ["0-1", "1-3", "3+"]
    assert d.bin_index().tolist() == [[0, 0, 0, 1, 1, 2, 2]]  # below the first edge: first bin; the last is open
    closed = Descriptor("x", torch.tensor([[0.5, 1.0, 5.0]]), edges=(0.0, 0.5, 1.0))
    assert closed.bin_index().tolist() == [[1, 1, 1]]  # at or above the last edge: the last bin
    e = element_descriptor(torch.tensor([[1, 6, 8, 26, 0]]), present=(1, 6, 8))
    assert e.bin_labels == ["H", "C", "O", OTHER] and e.bin_index().tolist() == [[0, 1, 2, 3, 3]]
    with pytest.raises(ValueError, match="either edges"):
        Descriptor("bad", v)
    with pytest.raises(ValueError, match="increasing"):
        Descriptor("bad", v, edges=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        Descriptor("bad", v[0], edges=(0.0, 1.0))
    att = Attribution("point", (Descriptor("a", torch.zeros(1, 3), edges=(0.0, 1.0)),))
    with pytest.raises(ValueError, match="entities are"):
        attribute({"vec": torch.ones(1, 4, 3)}, {"vec": att}, "mse")


# --------------------------------------------------------------------------------------------------
# The tasks' descriptors
# --------------------------------------------------------------------------------------------------
def test_forcefield_descriptors_name_elements_and_distances_in_angstrom(gen):
    batch = _molecules(gen)
    att = ForceFieldTask().attribution(batch)["forces"]
    element, dist = att.descriptors
    assert att.entity == "atom" and element.name == "element" and dist.name == "centroid_distance_A"
    labels = element.bin_labels
    idx = element.bin_index()
    assert all(labels[int(idx[b, 0])] == "O" for b in range(4))
    real = batch["mask"]
    centre = (batch["pos"] * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    torch.testing.assert_close(dist.values[real], (batch["pos"] - centre[:, None]).norm(dim=-1)[real])


def test_flowmatching_descriptors_run_along_the_chain_and_in_nm(gen):
    n, sizes = 10, (10, 6)
    mask = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
    x1 = torch.randn(2, n, 3, generator=gen, dtype=torch.float64) * mask[..., None]
    att = FlowMatchingTask().attribution({"x1": x1, "mask": mask})["v"]
    pos, dist = att.descriptors
    assert att.entity == "residue" and pos.name == "sequence_position" and dist.name == "centroid_distance_nm"
    assert pos.values[0, 0] == 0 and pos.values[0, 9] == 1 and pos.values[1, 5] == 1  # first and last real residue
    assert pos.bin_labels[int(pos.bin_index()[1, 5])] == "0.8-1" and pos.bin_labels[int(pos.bin_index()[0, 0])] == "0-0.2"
    torch.testing.assert_close(pos.values[1, :6], torch.arange(6, dtype=torch.float64) / 5)


def test_voxel_radial_profile_covers_every_voxel_once():
    task = VoxelDenoisingTask(n_channels=2, grid_size=8, resolution=0.25)
    batch = {"coords": torch.zeros(3, 2, 3)}
    att = task.attribution(batch)["grid"]
    (d,) = att.descriptors
    assert att.entity == "voxel" and d.values.shape == (3, 8**3)
    assert math.isclose(float(d.values.max()), math.sqrt(3) * 3.5 * 0.25, rel_tol=1e-12) and float(d.values.min()) > 0
    counts = torch.bincount(d.bin_index()[0], minlength=len(d.bin_labels))
    assert int(counts.sum()) == 8**3 and int(counts[-1]) > 0  # the corners are in the last bin
    # a map with the error in one channel at the grid's corner voxels: all of it in the outermost bin
    emap = torch.zeros(3, 2, 8, 8, 8, dtype=torch.float64)
    emap[:, 1, 0, 0, 0] = emap[:, 0, 7, 7, 7] = 1.0
    binned = attribute({"grid": emap}, {"grid": att}, "denoise")
    assert math.isclose(float(binned.share[-1]), 1.0) and float(binned.count.sum()) == 3 * 8**3
