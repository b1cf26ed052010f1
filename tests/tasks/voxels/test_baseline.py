"""The voxel baselines (tasks.voxels.baseline): isotropic filters of the noisy grid fitted by weighted least squares."""

from __future__ import annotations

import pytest
import torch

from equivrepro.metrics import twirl_decomposition
from equivrepro.metrics.baselines import LinearBaseline
from equivrepro.rotations import haar_rotations, octahedral_group, permute_grid
from tasks.voxels.baseline import IsotropicFilterBaseline, gaussian_multiplier
from tasks.voxels.task import VoxelDenoisingTask
from tests.tasks.voxels.test_task import molecule_batch


def _task(**kw):
    return VoxelDenoisingTask(grid_size=16, resolution=0.4, n_channels=3, **kw)


def _batches(task, gen, sizes=(3, 2)):
    out = []
    for b in sizes:
        raw = molecule_batch(b, 6, gen, spread=0.8)
        raw["elements"] = raw["elements"] % 3
        out.append(task.evaluation_batches(raw, gen)[""])
    return out


@pytest.mark.parametrize("kw", [{}, {"cross_channel": False}, {"thresholds": (1.0, 3.0)}, {"widths": (), "thresholds": (2.0,)}])
def test_sample_by_sample_fit_and_prediction_equal_the_generic_least_squares(gen, kw):
    """The memory-saving normal equations and prediction give the same θ and x̂ as LinearBaseline on the materialised
    features (to 1e-10 relative)."""
    task = _task()
    train, held = _batches(task, gen), _batches(task, gen, (2,))[0]
    base = IsotropicFilterBaseline(task, **kw).fit(task, train)
    generic = LinearBaseline("generic", base.features, task=task).fit(task, train)
    assert base.theta.shape == (base.n_params,)
    assert (base.theta - generic.theta).abs().max() <= 1e-10 * base.theta.abs().max()
    fast, slow = base(held)["grid"], LinearBaseline.predict_keys(base, held)["grid"]
    assert (fast - slow).abs().max() <= 1e-10 * slow.abs().max() and fast.abs().max() > 0
    assert base.fit_info["train_loss"] == pytest.approx(generic.fit_info["train_loss"], rel=1e-8)


def test_features_are_isotropic_filters():
    """The Gaussian multiplier is radial in |k| (equal on frequencies related by a cube rotation and by |k|), 1 at k = 0,
    and width 0 is the identity."""
    m = gaussian_multiplier(1.5, 8)
    assert m[0, 0, 0] == 1 and torch.allclose(m[1, 2, 3], m[3, 1, 2]) and torch.allclose(m[2, 0, 0], m[0, 2, 0])
    assert torch.all(gaussian_multiplier(0.0, 8) == 1)


def test_baseline_is_exactly_cube_equivariant_and_beats_the_zero_predictor(gen):
    """Cube rotations: x̂(P_C y) = P_C x̂(y) to round-off (pct of the exact cube twirl ≤ 1e-20); Haar rotations through the
    fft path: a finite floor, well below the loss (≤ 5 %). On held-out molecules both variants beat the empty grid."""
    task = _task()
    train, held = _batches(task, gen, (8, 8, 8)), _batches(task, gen, (3,))[0]
    base = task.make_baseline().fit(task, train)
    assert base.name == "isotropic_filter"
    cube = octahedral_group(dtype=torch.float64)[torch.tensor([3, 10, 17])]
    y = task.noisy_input(held)
    moved = base(dict(held, noisy=permute_grid(y, cube)))["grid"]
    assert (moved - permute_grid(base(held)["grid"], cube)).abs().max() < 1e-12
    exact = twirl_decomposition(base, task, held, octahedral_group(dtype=torch.float64), exact_group=True, chunk_size=8)["denoise"]
    assert abs(float(exact.pct)) <= 1e-20 and float(exact.total.sum()) > 0
    haar = twirl_decomposition(base, task, held, haar_rotations(4, gen, torch.float64))["denoise"]
    assert 0 < float(haar.pct) < 0.05
    term = task.terms[0]
    null = float(term.fn(task.null_prediction(held), task.targets(held), held).sum())
    thresholded = VoxelDenoisingTask(grid_size=16, resolution=0.4, n_channels=3, baseline="thresholded_filter")
    strong = thresholded.make_baseline().fit(thresholded, train)
    for b in (base, strong):
        loss = float(term.fn(b(held), task.targets(held), held).sum())
        assert loss < null, (b.name, loss, null)


def test_state_round_trip_and_bad_settings(gen):
    task = _task()
    base = IsotropicFilterBaseline(task, thresholds=(2.0,)).fit(task, _batches(task, gen, (2,)))
    fresh = IsotropicFilterBaseline(task, thresholds=(2.0,))
    fresh.load_state_dict(base.state_dict())
    held = _batches(task, gen, (1,))[0]
    assert torch.equal(fresh(held)["grid"], base(held)["grid"])
    with pytest.raises(ValueError, match="thresholds"):
        IsotropicFilterBaseline(task, thresholds=(3.0,), name="thresholded_filter").load_state_dict(base.state_dict())
    with pytest.raises(ValueError, match="baseline"):
        VoxelDenoisingTask(baseline="unet")
    with pytest.raises(ValueError, match="at least one"):
        IsotropicFilterBaseline(task, widths=())
