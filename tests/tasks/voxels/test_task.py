"""The voxel-denoising task: group action, resampling floor, exact cube-group twirl, training loss."""

from __future__ import annotations

import math

import pytest
import torch

from equivrepro.metrics import TwirledPredictor, twirl_decomposition, untwisted_predictions
from equivrepro.rotations import haar_rotations, octahedral_group, rotate_grid, rotate_points
from tasks.voxels.models.unet import VoxUNet
from tasks.voxels.task import VoxelDenoisingTask, denoise_sse


def molecule_batch(b: int, n: int, generator: torch.Generator, spread: float = 1.0, dtype=torch.float64) -> dict:
    """Random centred 'molecules': ``n`` atoms ~ N(0, spread²) Å of 8 element types, some padding."""
    coords = torch.randn(b, n, 3, generator=generator, dtype=dtype) * spread
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1:, -2:] = False
    coords = (coords - (coords * mask[..., None]).sum(1, keepdim=True) / mask.sum(1)[:, None, None]) * mask[..., None]
    return {"coords": coords, "elements": torch.randint(0, 8, (b, n), generator=generator), "mask": mask}


@pytest.fixture
def task32():
    return VoxelDenoisingTask(grid_size=32)


def test_resampling_floor_is_positive_under_so3_and_exactly_zero_on_the_cube_group(task32, gen):
    """The perfect denoiser through rotate → voxelize → rotate back.

    Bound stated: under Haar rotations the oracle's L_equiv per molecule is > 0 and < 1 % of the clean
    grid's energy Σx² (the loss of the empty-grid predictor); measured ≈ 0.1 % on the embedded molecules
    (0.167 per molecule at 32³, i.e. 7.9e-7 of the noisy-input loss σ²·C·L³). Under the 24 cube rotations
    every rotated-back copy equals the target bit for bit, so L_total = L_equiv = 0.
    """
    batch = task32.evaluation_batches(molecule_batch(3, 10, gen), gen)[""]
    energy = task32.targets(batch)["grid"].pow(2).flatten(1).sum(1)
    floor = task32.resampling_floor(batch, haar_rotations(3 * 4, generator=gen, dtype=torch.float64).reshape(3, 4, 3, 3))
    ratio = floor.equiv_unbiased / energy
    assert (ratio > 1e-5).all() and (ratio < 1e-2).all(), ratio
    assert (floor.total > 0).all()

    cube = octahedral_group()
    z = untwisted_predictions(task32.targets, task32, batch, cube)["grid"]  # (B, 24, C, L, L, L)
    target = task32.targets(batch)["grid"]
    assert torch.equal(z, target[:, None].expand_as(z))
    exact = task32.resampling_floor(batch, cube, exact_group=True)
    assert torch.equal(exact.total, torch.zeros(3, dtype=torch.float64))
    assert exact.equiv_unbiased.abs().max() <= 1e-20  # only the round-off of averaging 24 equal grids


def test_octahedral_twirl_of_any_model_is_exactly_cube_equivariant(f64, gen):
    """TwirledPredictor over the 24 cube rotations is exactly equivariant under them: pct = 0 (≤ 1e-12)."""
    task = VoxelDenoisingTask(grid_size=8, resolution=0.5)  # 4 Å box; small so that 24 × 24 passes are cheap
    torch.manual_seed(0)
    model = VoxUNet(width=4, ch_mults=(1, 2, 2, 2), n_blocks=1).double().eval()  # the tiny preset, at init
    batch = task.evaluation_batches(molecule_batch(2, 5, gen, spread=0.5), gen)[""]
    cube = octahedral_group()
    plain = twirl_decomposition(model, task, batch, cube, exact_group=True)["denoise"]
    assert plain.pct > 1e-4  # the U-Net itself is not cube-equivariant
    twirled = TwirledPredictor(model, task, cube, chunk_size=12)
    dec = twirl_decomposition(twirled, task, batch, cube, exact_group=True, chunk_size=12)["denoise"]
    assert float(dec.pct) <= 1e-12
    assert float(dec.total.min()) > 0


def test_rotate_batch_acts_on_coords_and_noise(task32, gen):
    batch = task32.evaluation_batches(molecule_batch(2, 6, gen), gen)[""]
    r = octahedral_group()[torch.tensor([5, 17])]
    rotated = task32.rotate_batch(batch, r)
    torch.testing.assert_close(rotated["coords"], rotate_points(batch["coords"], r), rtol=0, atol=0)
    assert torch.equal(rotated["noise"], rotate_grid(batch["noise"], r))  # an exact permutation
    assert torch.equal(rotated["elements"], batch["elements"]) and torch.equal(rotated["mask"], batch["mask"])
    # a cube rotation and its inverse bring the noisy input back exactly
    back = task32.unrotate_prediction({"grid": task32.noisy_input(rotated)}, r)["grid"]
    assert torch.equal(back, task32.noisy_input(batch))


def test_resampled_noise_is_smoothed_unless_nearest(gen):
    """Trilinear rotation of white noise lowers its variance (documented); 'nearest' keeps it."""
    b = molecule_batch(1, 4, gen)
    r = haar_rotations(1, generator=gen, dtype=torch.float64)
    interior = (slice(None), slice(None), slice(8, 24), slice(8, 24), slice(8, 24))  # inside the inscribed sphere
    variances = {}
    for mode in ("bilinear", "nearest"):
        task = VoxelDenoisingTask(grid_size=32, noise_rotation=mode)
        batch = task.evaluation_batches(b, torch.Generator().manual_seed(3))[""]
        variances[mode] = float(task.rotate_batch(batch, r)["noise"][interior].var())
    assert 0.15 < variances["bilinear"] < 0.7
    assert 0.9 < variances["nearest"] < 1.1


def test_training_loss_is_the_summed_squared_error_of_a_shifted_noisy_grid(gen):
    task = VoxelDenoisingTask(grid_size=16, shift=0.5, sigma=0.9)
    batch = molecule_batch(3, 5, gen, spread=0.5, dtype=torch.float32)

    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen = None

        def forward(self, y):
            self.seen = y
            return y * self.w

    model = Zero()
    loss, logs = task.training_loss(model, batch, torch.Generator().manual_seed(7))
    # re-derive: the shift is drawn first from the generator, U(−0.5, 0.5) Å per axis and molecule
    g = torch.Generator().manual_seed(7)
    shift = ((torch.rand(3, 1, 3, generator=g, dtype=torch.float64) * 2 - 1) * 0.5).float()
    assert shift.abs().max() <= 0.5
    x = task.voxelizer(batch["coords"] + shift * batch["mask"][..., None], batch["elements"], batch["mask"])[0]
    torch.testing.assert_close(loss, x.pow(2).sum(), rtol=1e-6, atol=1e-6)  # sum over batch, voxels, channels
    noise = (model.seen - x) / 0.9
    assert abs(float(noise.std()) - 1) < 0.02 and abs(float(noise.mean())) < 0.02
    loss.backward()
    assert model.w.grad is not None and model.w.grad.abs() > 0
    assert logs["atoms_outside_box"] == 0 and 0 <= logs["iou"] <= 1
    # same generator seed → same loss; 'mean' divides by the number of elements
    again, _ = task.training_loss(model, batch, torch.Generator().manual_seed(7))
    assert torch.equal(loss, again)
    mean_task = VoxelDenoisingTask(grid_size=16, reduction="mean")
    mean_loss, _ = mean_task.training_loss(model, batch, torch.Generator().manual_seed(7))
    torch.testing.assert_close(mean_loss, loss / x.numel())


def test_evaluation_batches_freeze_the_noise_and_predict_needs_it(task32, gen):
    raw = molecule_batch(2, 6, gen)
    a = task32.evaluation_batches(raw, torch.Generator().manual_seed(1))[""]
    b = task32.evaluation_batches(raw, torch.Generator().manual_seed(1))[""]
    assert a["noise"].shape == (2, 8, 32, 32, 32) and torch.equal(a["noise"], b["noise"])
    with pytest.raises(KeyError, match="noise"):
        task32.predict(torch.nn.Identity(), raw)
    pred = task32.predict(torch.nn.Identity(), a)["grid"]  # the identity denoiser sees x + σ ε
    target = task32.targets(a)["grid"]
    torch.testing.assert_close(denoise_sse({"grid": pred}, {"grid": target}, a), 0.81 * a["noise"].pow(2).flatten(1).sum(1))


def test_null_predictions(gen):
    raw = molecule_batch(2, 6, gen)
    zeros = VoxelDenoisingTask(grid_size=16)
    batch = zeros.evaluation_batches(raw, gen)[""]
    target = zeros.targets(batch)
    torch.testing.assert_close(denoise_sse(zeros.null_prediction(batch), target, batch), target["grid"].pow(2).flatten(1).sum(1))
    noisy = VoxelDenoisingTask(grid_size=16, null_predictor="noisy_input")
    torch.testing.assert_close(denoise_sse(noisy.null_prediction(batch), target, batch), 0.81 * batch["noise"].pow(2).flatten(1).sum(1))


def test_tiny_unet_decomposition_runs_with_haar_rotations(gen):
    task = VoxelDenoisingTask(grid_size=16)
    torch.manual_seed(0)
    model = VoxUNet(width=4, ch_mults=(1, 2, 2, 2), n_blocks=1).eval()
    batch = task.evaluation_batches(molecule_batch(2, 5, gen, spread=0.6, dtype=torch.float32), gen)[""]
    dec = twirl_decomposition(model, task, batch, haar_rotations(4, generator=gen))["denoise"]
    s = dec.summary()
    assert math.isfinite(s["pct"]) and 0 < s["pct"] < 1
    assert s["total"] == pytest.approx(s["mean"] + s["equiv"], rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [({"reduction": "avg"}, "reduction"), ({"noise_rotation": "cubic"}, "noise_rotation"),
                                           ({"null_predictor": "mean"}, "null_predictor"), ({"sigma": 0.0}, "sigma")])
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VoxelDenoisingTask(**kwargs)
