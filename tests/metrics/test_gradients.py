"""Tests of :func:`equivrepro.metrics.gradient_norms` against closed forms for the linear model f(x)_n = A x_n.

Rotations R_k shared by the batch; z_kn = R_kᵀ A R_k x_n; D_kn = z_kn − z̄_n (so Σ_k D_kn = 0).

* L_equiv^U = batch-mean of (1/(K−1)) Σ_k mean_n |D_kn|². Since d|D_kn|² summed over k only sees dz_kn
  (the dz̄ terms cancel because Σ_k D_kn = 0) and d(R_kᵀ dA R_k x_n) = R_kᵀ dA R_k x_n,
  ∇_A L_equiv^U = batch-mean of (2/(K−1)) Σ_k mean_n (R_k D_kn)(R_k x_n)ᵀ.
* L_total = batch-mean of (1/K) Σ_k mean_n |z_kn − y_n|²  ⇒  ∇_A = batch-mean of (2/K) Σ_k mean_n R_k (z_kn − y_n)(R_k x_n)ᵀ,
  and L_mean^U = L_total − L_equiv^U.
* With the icosahedral group (K = 60, exact 2-design) and c = batch-mean of mean_n|x_n|²/3, B = A − aI, a = tr A/3:
  L_equiv^U = K/(K−1)·‖B‖²c and L_mean^U = −‖B‖²c/(K−1) + 3c(a − s)², so, using ∇‖B‖_F² = 2B and ∇ 3(a − s)² = 2(a − s)I,
  ‖∇L_equiv^U‖ = 2c·K/(K−1)·‖B‖_F and ‖∇L_mean^U‖ = 2c·√(‖B‖_F²/(K−1)² + 3(a − s)²) (B ⟂ I).
* For A = aI + εB₀ the equivariance gradient is 2c·K/(K−1)·εB₀: the ratio vanishes linearly in ε.
"""

from __future__ import annotations

import math

import pytest
import torch

from equivrepro.metrics import gradient_norms, twirl_decomposition
from equivrepro.rotations import haar_rotations, icosahedral_group
from equivrepro.testing.pointcloud import LinearPointModel, PointCloudTask, make_pointcloud_batch
from tests.metrics.test_decomposition import SCALE, linear_matrix

TASK = PointCloudTask()


def _batch(b: int = 6, n: int = 5, seed: int = 0) -> dict:
    return make_pointcloud_batch(b, n, torch.Generator().manual_seed(seed))


def _manual_gradients(a_mat: torch.Tensor, batch: dict, rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇_A L_equiv^U, ∇_A L_mean^U) from the closed forms in the module docstring; rot (K, 3, 3)."""
    k = rot.shape[0]
    x = batch["pos"]  # (B, N, 3)
    rx = torch.einsum("kij,bnj->bkni", rot, x)  # R_k x_n
    z = torch.einsum("kji,bknj->bkni", rot, torch.einsum("ij,bknj->bkni", a_mat, rx))  # R_kᵀ A R_k x_n
    dev = z - z.mean(1, keepdim=True)
    res = z - batch["target"][:, None]
    n = x.shape[1]
    g_equiv = 2 / (k - 1) * torch.einsum("kij,bknj,bknl->il", rot, dev, rx) / n / x.shape[0]
    g_total = 2 / k * torch.einsum("kij,bknj,bknl->il", rot, res, rx) / n / x.shape[0]
    return g_equiv, g_total - g_equiv


def _finite_difference(a_mat: torch.Tensor, batch: dict, rot: torch.Tensor, attr: str, h: float = 1e-6) -> torch.Tensor:
    """Central differences of the batch-mean estimator ``attr`` w.r.t. each entry of A (float64)."""
    grad = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            vals = []
            for sign in (1, -1):
                a = a_mat.clone()
                a[i, j] += sign * h
                d = twirl_decomposition(LinearPointModel(a), TASK, batch, rot)["mse"]
                vals.append(float(getattr(d, attr).mean()))
            grad[i, j] = (vals[0] - vals[1]) / (2 * h)
    return grad


def test_gradient_norms_match_manual_and_finite_difference_gradients():
    batch = _batch()
    a_mat = linear_matrix(3)
    rot = haar_rotations(5, torch.Generator().manual_seed(0), torch.float64)
    model = LinearPointModel(a_mat)
    out = gradient_norms(model, TASK, batch, rot)
    assert set(out) == {"equiv_grad_norm", "mean_grad_norm", "grad_norm_ratio", "pct"}
    dec = twirl_decomposition(model, TASK, batch, rot)["mse"]
    assert out["pct"] == pytest.approx(float(dec.equiv_unbiased.sum() / dec.total.sum()), rel=1e-12)
    # the same numbers from the batch cut into chunks (sample-weighted pooling)
    halves = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    chunked = gradient_norms(model, TASK, halves, [rot, rot])
    for key, v in out.items():
        assert chunked[key] == pytest.approx(v, rel=1e-10), key
    g_equiv, g_mean = _manual_gradients(a_mat, batch, rot)
    assert out["equiv_grad_norm"] == pytest.approx(float(g_equiv.norm()), rel=1e-10)
    assert out["mean_grad_norm"] == pytest.approx(float(g_mean.norm()), rel=1e-10)
    assert out["grad_norm_ratio"] == pytest.approx(float(g_equiv.norm() / g_mean.norm()), rel=1e-10)
    # the manual formula itself against central differences (error O(h²) + round-off/h ≈ 1e-9)
    assert torch.allclose(_finite_difference(a_mat, batch, rot, "equiv_unbiased"), g_equiv, rtol=0, atol=1e-7)
    assert torch.allclose(_finite_difference(a_mat, batch, rot, "mean_unbiased"), g_mean, rtol=0, atol=1e-7)
    # chunking and per-sample rotations do not change the gradients
    chunked = gradient_norms(model, TASK, batch, rot, chunk_size=2)
    assert chunked["equiv_grad_norm"] == pytest.approx(out["equiv_grad_norm"], rel=1e-12)
    per = gradient_norms(model, TASK, batch, rot.expand(6, 5, 3, 3))
    assert per["mean_grad_norm"] == pytest.approx(out["mean_grad_norm"], rel=1e-12)


def test_gradient_norms_closed_form_with_icosahedral_group():
    batch = _batch(8, 6, seed=2)
    a_mat = linear_matrix(5)
    k = 60
    a = float(a_mat.trace() / 3)
    b_norm = float((a_mat - a * torch.eye(3, dtype=torch.float64)).norm())
    c = float(batch["pos"].pow(2).sum(-1).mean() / 3)
    out = gradient_norms(LinearPointModel(a_mat), TASK, batch, icosahedral_group())
    assert out["equiv_grad_norm"] == pytest.approx(2 * c * k / (k - 1) * b_norm, rel=1e-10)
    assert out["mean_grad_norm"] == pytest.approx(2 * c * math.sqrt(b_norm**2 / (k - 1) ** 2 + 3 * (a - SCALE) ** 2), rel=1e-10)


def test_gradient_ratio_vanishes_linearly_for_near_equivariant_models():
    """A = 1.2·I is equivariant: its equivariance gradient is round-off. For A = 1.2·I + εB₀ the ratio is ∝ ε."""
    batch = _batch(8, 6, seed=4)
    rot = icosahedral_group()
    b0 = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, -0.3], [0.2, 0.0, 0.0]], dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    exact = gradient_norms(LinearPointModel(1.2 * eye), TASK, batch, rot)
    assert exact["mean_grad_norm"] > 0.1
    assert exact["grad_norm_ratio"] < 1e-13
    ratios = {
        eps: gradient_norms(LinearPointModel(1.2 * eye + eps * b0), TASK, batch, rot)["grad_norm_ratio"] for eps in (1e-1, 1e-2, 1e-4)
    }
    assert ratios[1e-2] / 1e-2 == pytest.approx(ratios[1e-4] / 1e-4, rel=1e-3)
    assert ratios[1e-1] / 1e-1 == pytest.approx(ratios[1e-4] / 1e-4, rel=1e-2)
    assert ratios[1e-1] > 10 * ratios[1e-2] * 0.99


def test_gradient_norms_restore_training_mode_and_leave_no_grads():
    model = LinearPointModel(linear_matrix(0))
    model.train()
    gradient_norms(model, TASK, _batch(), haar_rotations(3, torch.Generator().manual_seed(0), torch.float64))
    assert model.training
    assert model.a.grad is None  # autograd.grad does not accumulate into .grad
    model.eval()
    gradient_norms(model, TASK, _batch(), haar_rotations(3, torch.Generator().manual_seed(0), torch.float64))
    assert not model.training
