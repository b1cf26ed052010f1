"""The decomposition on an independently built, exactly equivariant e3nn network.

If equivrepro's rotation conventions (row vectors, x @ Rᵀ; unrotate by Rᵀ) disagreed with a standard
equivariant library, an e3nn model would show a large L_equiv here. It must instead be at float64 round-off.
"""

from __future__ import annotations

import torch
from e3nn import o3  # a declared dependency: a missing e3nn must fail, not skip
from torch import nn

from equivrepro.metrics import twirl_decomposition
from equivrepro.rotations import haar_rotations
from equivrepro.testing.pointcloud import NonEquivariantMLP, PointCloudTask, make_pointcloud_batch

TASK = PointCloudTask()


class E3nnPointModel(nn.Module):
    """Point cloud ``(B, N, 3)`` → per-point 1o vectors ``(B, N, 3)``, SO(3)-equivariant by construction.

    With r_nm = x_n − x_m, Y = spherical harmonics l ≤ 2 (unnormalised, so polynomial and finite at r = 0),
    e(r) = Gaussian radial basis of |r| (4 scalars, zeroed on the diagonal m = n):

        h_n   = Σ_m TP₁( Y(r_nm), e(|r_nm|) )          irreps 8x0e + 4x1o + 2x2e
        h'_n  = TP₂( h_n, Y(x_n) )                      irreps 4x0e + 4x1o
        f(x)_n = Linear( h'_n )                         irreps 1x1o  (e3nn ≥ 0.5 orders l = 1 as x, y, z)
    """

    def __init__(self):
        super().__init__()
        self.irreps_sh = o3.Irreps("1x0e + 1x1o + 1x2e")
        self.tp1 = o3.FullyConnectedTensorProduct(self.irreps_sh, "4x0e", "8x0e + 4x1o + 2x2e")
        self.tp2 = o3.FullyConnectedTensorProduct("8x0e + 4x1o + 2x2e", self.irreps_sh, "4x0e + 4x1o")
        self.out = o3.Linear("4x0e + 4x1o", "1x1o")
        self.register_buffer("centres", torch.linspace(0.0, 4.0, 4))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        b, n, _ = pos.shape
        rel = pos[:, :, None] - pos[:, None, :]  # (B, N, N, 3)
        dist = rel.pow(2).sum(-1, keepdim=True).clamp_min(1e-30).sqrt()
        radial = torch.exp(-((dist - self.centres.to(pos.dtype)) ** 2))
        radial = radial * (1 - torch.eye(n, dtype=pos.dtype, device=pos.device))[None, :, :, None]
        y_rel = o3.spherical_harmonics(self.irreps_sh, rel, normalize=False)
        h = self.tp1(y_rel, radial).sum(2)  # (B, N, 8 + 12 + 10)
        h = self.tp2(h, o3.spherical_harmonics(self.irreps_sh, pos, normalize=False))
        return self.out(h)


def test_e3nn_l1_convention_is_cartesian():
    """The output is read as (x, y, z): e3nn's D¹(R) must be R itself (true for e3nn ≥ 0.5)."""
    r = haar_rotations(4, torch.Generator().manual_seed(0), torch.float64)
    assert torch.allclose(o3.Irrep("1o").D_from_matrix(r), r, atol=1e-12)


def test_e3nn_model_has_zero_equivariance_error_in_float64(f64):
    """pct at round-off: quadratic term < 1e-24 (z_k − z̄ ~ 1e-16·|z|, squared), jackknife |pct| < 1e-12.
    e3nn computes its Clebsch–Gordan coefficients in the default dtype when a module is built, so the model is
    built under float64 (``f64`` fixture): built in float32 and cast with ``.double()`` it shows pct ≈ 3e-18,
    i.e. ~1e-9 relative equivariance error from the float32 coefficients.
    Adding ε·g, with g a non-equivariant MLP, makes the error exactly ε²·L_equiv(g): the twist of f + εg is
    f + ε·g^R because f^R = f, so the K copies differ only through ε·g (paper §7, item 8)."""
    torch.manual_seed(0)
    model = E3nnPointModel()
    assert next(model.parameters()).dtype == torch.float64
    batch = make_pointcloud_batch(8, 7, torch.Generator().manual_seed(1))
    rot = haar_rotations(8 * 10, torch.Generator().manual_seed(2), torch.float64).reshape(8, 10, 3, 3)
    dec = twirl_decomposition(model, TASK, batch, rot)
    mse, l2 = dec["mse"].summary(), dec["l2mae"].summary()
    assert mse["total"] > 0.1
    assert 0 <= mse["pct"] < 1e-24, mse["pct"]
    assert abs(l2["pct"]) < 1e-12, l2["pct"]
    with torch.no_grad():  # the model is not degenerate: it responds to rotation of its input like a vector field
        out = model(batch["pos"])
        assert out.abs().max() > 1e-2

    torch.manual_seed(3)
    g = NonEquivariantMLP().double()
    eps = 1e-3
    g_only = twirl_decomposition(g, TASK, batch, rot)["mse"].equiv_unbiased
    mixed = twirl_decomposition(lambda b: {"vec": model(b["pos"]) + eps * g(b["pos"])}, TASK, batch, rot)["mse"].equiv_unbiased
    assert torch.allclose(mixed, eps**2 * g_only, rtol=1e-6, atol=0)
