"""The steerable voxel CNN: exactly cube-equivariant through the task in float64 (when built in float64: e3nn
tabulates its kernel basis and Clebsch–Gordan coefficients at construction), shapes, presets."""

from __future__ import annotations

import copy

import pytest
import torch
from e3nn import o3
from e3nn.nn.models.v2104.voxel_convolution import Convolution
from hydra.utils import instantiate
from omegaconf import OmegaConf

from equivrepro.metrics import twirl_decomposition
from equivrepro.rotations import octahedral_group, permute_grid
from equivrepro.train.app import compose_config
from tasks.voxels.models.steerable import SteerableCNN
from tasks.voxels.task import VoxelDenoisingTask
from tests.tasks.voxels.test_task import molecule_batch


def _wigner(irreps: o3.Irreps, g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """D(g) of ``irreps`` to float64 round-off, solved from Y(g q) = D_l(g) Y(q) on random points (e3nn's own
    ``D_from_matrix`` goes through float32 tables and is accurate to ~1e-7 only)."""
    q = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    blocks = []
    for mul, ir in irreps:
        y, yg = (o3.spherical_harmonics(ir.l, p, normalize=True, normalization="component") for p in (q, q @ g.T))
        d = torch.linalg.lstsq(y, yg).solution.T  # yg = y Dᵀ
        blocks += [d] * mul
    return torch.block_diag(*blocks)


def _layer_error(conv, gen) -> float:
    """max over the cube group of |conv(g·y) − D_out(g)·g·conv(y)| / max|conv(y)| with y = D_in(g)-covariant fields."""
    y = torch.randn(1, conv.irreps_in.dim, 7, 7, 7, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out = conv(y)
        worst = 0.0
        for g in octahedral_group():
            lhs = conv(torch.einsum("ij,bjxyz->bixyz", _wigner(conv.irreps_in, g, gen), permute_grid(y, g[None])))
            rhs = torch.einsum("ij,bjxyz->bixyz", _wigner(conv.irreps_out, g, gen), permute_grid(out, g[None]))
            worst = max(worst, float((lhs - rhs).abs().max() / out.abs().max()))
    return worst


def test_voxel_convolution_is_cube_equivariant_to_round_off_when_built_in_float64(gen):
    """e3nn's convolution built in float64 is cube-equivariant to float64 round-off; built in float32 and cast
    to float64 it keeps float32-rounded tables (the reason the float64 checks build models in float64)."""
    irreps = ("2x0e + 1x1o", "2x0e + 2x1o + 1x2e", o3.Irreps.spherical_harmonics(2))
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        torch.manual_seed(0)
        built64 = Convolution(*irreps, diameter=5.0, num_radial_basis=3)
    finally:
        torch.set_default_dtype(old)
    torch.manual_seed(0)
    cast = Convolution(*irreps, diameter=5.0, num_radial_basis=3).double()
    assert _layer_error(built64, gen) < 1e-13
    assert _layer_error(cast, gen) > 1e-11


def test_pct_on_the_cube_group_is_round_off_through_the_task(f64, gen):
    task = VoxelDenoisingTask(grid_size=8, resolution=0.5)
    torch.manual_seed(0)
    model = SteerableCNN(channels=2, lmax=2, num_layers=2, diameter=3.0).double().eval()
    batch = task.evaluation_batches(molecule_batch(2, 5, gen, spread=0.5), gen)[""]
    dec = twirl_decomposition(model, task, batch, octahedral_group(), exact_group=True)["denoise"]
    assert abs(float(dec.pct)) < 1e-25 and float(dec.total.min()) > 0


@pytest.mark.parametrize("name, expected", [("steerable_tiny", 3_840), ("steerable_large", 293_888)])
def test_preset_parameter_counts(name, expected):
    cfg = OmegaConf.to_container(compose_config(["task=voxels", f"model={name}", "logger=none"]).model, resolve=True)
    model = instantiate(cfg)
    assert isinstance(model, SteerableCNN) and sum(p.numel() for p in model.parameters()) == expected


def test_model_can_be_deep_copied_like_the_training_loop_s_ema(gen):
    torch.manual_seed(0)
    model = SteerableCNN(channels=2, lmax=1, num_layers=2, diameter=3.0)
    y = torch.randn(1, 8, 8, 8, 8, generator=gen)
    torch.testing.assert_close(copy.deepcopy(model)(y), model(y), rtol=0, atol=0)


def test_shapes_head_gain_and_bad_input(gen):
    y = torch.randn(2, 8, 8, 8, 8, generator=gen)
    outs = []
    for gain in (1.0, 0.1):
        torch.manual_seed(0)
        outs.append(SteerableCNN(channels=2, lmax=1, num_layers=1, diameter=3.0, head_gain=gain)(y))
    assert outs[0].shape == y.shape
    torch.testing.assert_close(outs[1], 0.1 * outs[0], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="expected a grid"):
        SteerableCNN(channels=2, lmax=1, num_layers=1)(torch.zeros(1, 5, 8, 8, 8))
    with pytest.raises(ValueError, match="lmax"):
        SteerableCNN(lmax=0)
