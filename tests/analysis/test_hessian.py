"""Hessian-vector products, the exact Hessian, Lanczos, power iteration and condition numbers."""

from __future__ import annotations

import pytest
import torch

from equivrepro.analysis import (
    HessianOperator,
    SubsetLosses,
    condition_numbers,
    exact_hessian,
    hessian_spectrum,
    lanczos,
    power_iteration,
)
from equivrepro.testing.pointcloud import LinearPointModel, NonEquivariantMLP
from tests.analysis.toys import DirectForceToy, setup


def _mlp_losses(hidden: int = 8):
    task, batch, rot = setup()
    torch.manual_seed(0)
    model = NonEquivariantMLP(hidden=hidden).double()
    return SubsetLosses(model, task, batch, rot, "all")


@pytest.mark.parametrize("which", ["mean", "equiv"])
def test_hvp_matches_central_finite_differences_of_the_gradient(which):
    losses = _mlp_losses()
    fn = losses.function(which)
    theta0 = losses.theta0
    v = torch.randn(losses.n_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hv = HessianOperator(fn, theta0)(v)

    def grad(theta):
        t = theta.clone().requires_grad_(True)
        return torch.autograd.grad(fn(t), t)[0]

    eps = 1e-5
    fd = (grad(theta0 + eps * v) - grad(theta0 - eps * v)) / (2 * eps)
    assert float((hv - fd).norm() / hv.norm()) < 1e-7


def test_exact_hessian_is_symmetric_and_agrees_with_hvps():
    losses = _mlp_losses()
    op = HessianOperator(losses.function("equiv"), losses.theta0)
    h = exact_hessian(op, chunk=32)
    v = torch.randn(losses.n_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.allclose(h, h.T)
    assert torch.allclose(h @ v, op(v), rtol=1e-10, atol=1e-12)
    assert torch.allclose(exact_hessian(op, chunk=1), h, rtol=1e-12, atol=1e-13)  # unbatched path


@pytest.mark.parametrize("which", ["mean", "equiv"])
def test_lanczos_extreme_eigenvalues_match_eigvalsh(which):
    losses = _mlp_losses()
    assert losses.n_params == 131
    op = HessianOperator(losses.function(which), losses.theta0)
    exact = torch.linalg.eigvalsh(exact_hessian(op))
    res = lanczos(op, losses.n_params, 50, generator=torch.Generator().manual_seed(1))
    assert res.steps == 50 and not res.breakdown
    for got, want in [(res.values[-3:], exact[-3:]), (res.values[:3], exact[:3])]:
        assert torch.all((got - want).abs() <= 1e-6 * want.abs()), (got, want)
    # their residuals say they converged; full-dimension Lanczos recovers the whole spectrum
    assert float(res.residuals[-3:].max()) < 1e-6 * float(exact.abs().max())
    full = lanczos(op, losses.n_params, losses.n_params, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(full.values, exact, rtol=0, atol=1e-10 * float(exact.abs().max()))
    # the Ritz vectors are eigenvectors
    y = res.vectors[:, -1]
    assert float((op(y) - res.values[-1] * y).norm()) < 1e-6 * float(exact.abs().max())


def test_power_iteration_finds_both_ends_of_a_psd_spectrum():
    task, batch, rot = setup(b=16)
    model = LinearPointModel(torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    losses = SubsetLosses(model, task, batch, rot, "a")
    op = HessianOperator(losses.function("total"), losses.theta0)
    exact = torch.linalg.eigvalsh(exact_hessian(op))
    lam_max, _, _, ok = power_iteration(op, 9, generator=torch.Generator().manual_seed(0), iters=3000, tol=1e-12)
    assert ok and lam_max == pytest.approx(float(exact[-1]), rel=1e-8)
    lam_low, _, _, ok = power_iteration(op, 9, shift=lam_max, generator=torch.Generator().manual_seed(0), iters=3000, tol=1e-12)
    assert ok and lam_low == pytest.approx(float(exact[0]), rel=1e-6)


def test_linear_model_equiv_hessian_has_exactly_the_equivariant_direction_flat():
    """f(x) = A x is equivariant iff A = a·I: ∇²L_equiv has one zero eigenvalue, eigenvector vec(I)/√3."""
    task, batch, rot = setup(b=16)
    model = LinearPointModel(torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    losses = SubsetLosses(model, task, batch, rot, "a")
    spec = hessian_spectrum(losses, "equiv")
    cond = spec.condition()
    assert spec.method == "exact" and cond["n_zero"] == 1 and cond["n_positive"] == 8 and cond["n_negative"] == 0
    flat = spec.eigenvectors[:, spec.eigenvalues.abs().argmin()]
    assert torch.allclose(flat.abs(), torch.eye(3, dtype=torch.float64).reshape(-1) / 3**0.5, atol=1e-12)
    assert cond["lambda_min_pos"] > 0.1 * cond["lambda_max"]  # well conditioned: κ ≈ 1.5 on this toy
    # unbiased L_mean may be indefinite, the plug-in one is PSD for a model linear in θ_S
    plug = SubsetLosses(model, task, batch, rot, "a", estimator="plugin")
    assert float(hessian_spectrum(plug, "mean").eigenvalues.min()) > -1e-12


def test_condition_numbers_exact_and_lanczos_agree_on_the_resolved_ends():
    task, batch, rot = setup(b=8)
    torch.manual_seed(0)
    model = DirectForceToy().double()
    losses = SubsetLosses(model, task, batch, rot, "all")
    exact = condition_numbers(losses, method="exact")
    lz = condition_numbers(losses, method="lanczos", k=losses.n_params, generator=torch.Generator().manual_seed(0))
    for w in ("mean", "equiv"):
        e, lc = exact[w], lz[w]
        assert e["n_eigenvalues"] == losses.n_params and lc["method"] == "lanczos"
        assert lc["n_resolved"] >= lc["n_positive"] > 0
        assert lc["lambda_max"] == pytest.approx(e["lambda_max"], rel=1e-8)
        assert e["kappa"] == pytest.approx(e["lambda_max"] / e["lambda_min_pos"])
        assert e["n_positive"] + e["n_zero"] + e["n_negative"] == losses.n_params
    assert exact["kappa_ratio_mean_over_equiv"] == pytest.approx(exact["mean"]["kappa"] / exact["equiv"]["kappa"])
