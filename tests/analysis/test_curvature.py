"""The Gauss–Newton form of the plug-in losses: the explicit Jacobian formula, equality with the Hessian where the
prediction is linear in θ_S, PSD where the Hessian is not; and the whole-spectrum summary of an operator."""

from __future__ import annotations

import pytest
import torch

from equivrepro.analysis import HessianOperator, SubsetLosses, exact_hessian
from equivrepro.analysis.curvature import GGNOperator, curvature_operator, curvature_operators, curvature_spectrum
from tests.analysis.toys import DirectForceToy, setup


def _losses(subset: str, b: int = 5, k: int = 4):
    task, batch, rot = setup(b=b, k=k)
    torch.manual_seed(0)
    model = DirectForceToy().double()
    return SubsetLosses(model, task, batch, rot, subset, estimator="plugin")


def _matrix(op, n: int) -> torch.Tensor:
    return torch.stack([op(e) for e in torch.eye(n, dtype=torch.float64)])


@pytest.mark.parametrize("which", ["mean", "equiv"])
def test_ggn_equals_the_explicit_jacobian_formula(which):
    losses = _losses("embed")
    n = losses.n_params
    # J_k = ∂z_k/∂θ by brute force; PointCloudTask's MSE weights are 1/N per coordinate
    jac = torch.autograd.functional.jacobian(lambda t: losses.untwisted(t, 0)["vec"], losses.theta0)  # (B, K, N, 3, P)
    b, k, npts = jac.shape[:3]
    w = 1.0 / npts
    jbar = jac.mean(1, keepdim=True)
    if which == "mean":
        want = 2 * w * torch.einsum("bnip,bniq->pq", jbar[:, 0], jbar[:, 0]) / b
    else:
        d = jac - jbar
        want = 2 * w * torch.einsum("bknip,bkniq->pq", d, d) / (b * k)
    got = _matrix(GGNOperator(losses, which), n)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12 * float(want.abs().max()))
    assert GGNOperator(losses, which).value == pytest.approx(float(losses.evaluate()[which]), rel=1e-12)


def test_ggn_is_the_hessian_for_a_linear_head_and_psd_where_the_hessian_is_not():
    head = _losses("out")
    for which in ("mean", "equiv"):
        h = exact_hessian(HessianOperator(head.function(which), head.theta0))
        g = exact_hessian(GGNOperator(head, which))
        assert torch.allclose(g, h, rtol=1e-9, atol=1e-12 * float(h.abs().max()))
    trunk = _losses("embed")
    h = exact_hessian(HessianOperator(trunk.function("mean"), trunk.theta0))
    g = exact_hessian(GGNOperator(trunk, "mean"))
    lam_h, lam_g = torch.linalg.eigvalsh(h), torch.linalg.eigvalsh(g)
    assert float(lam_h[0]) < -1e-3 * float(lam_h[-1])  # the plug-in L_mean is not convex in a trunk block …
    assert float(lam_g[0]) > -1e-12 * float(lam_g[-1])  # … its Gauss–Newton matrix is PSD


def test_ggn_rejects_a_non_quadratic_term():
    task, batch, rot = setup(b=3)
    losses = SubsetLosses(DirectForceToy().double(), task, batch, rot, "out", term="l2mae", estimator="plugin")
    with pytest.raises(ValueError, match="quadratic"):
        GGNOperator(losses, "mean")


def test_curvature_spectrum_exact_and_lanczos_agree_at_the_top():
    losses = _losses("all")
    exact = curvature_spectrum(losses, "equiv", "ggn", exact_max=10_000)
    lz = curvature_spectrum(losses, "equiv", "ggn", exact_max=0, steps=30, probes=3, generator=torch.Generator().manual_seed(0))
    assert exact.method == "exact" and lz.method == "lanczos" and lz.density.probes == 3
    assert lz.condition["lambda_max"] == pytest.approx(exact.condition["lambda_max"], rel=1e-8)
    assert exact.condition["n_resolved_negative"] == 0  # PSD
    top = lz.top(3)
    assert top[0]["resolved"] and top[0]["eigenvalue"] == pytest.approx(float(exact.eigenvalues[-1]), rel=1e-8)
    d = lz.extreme_directions()
    assert d["lambda_max"] == pytest.approx(exact.condition["lambda_max"], rel=1e-8)
    assert torch.allclose(d["max"].abs(), exact.eigenvectors[:, -1].abs(), atol=1e-5)
    # a resolved λ⁺_min of Lanczos is an eigenvalue, and never below the exact smallest positive one
    assert lz.condition["lambda_min_pos"] >= exact.condition["lambda_min_pos"] * (1 - 1e-6)


@pytest.mark.parametrize("form", ["hessian", "ggn"])
def test_operators_sharing_one_forward_pass_equal_separate_ones(form):
    losses = _losses("embed")
    shared = curvature_operators(losses, form)
    v = torch.randn(losses.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for which in ("mean", "equiv"):
        alone = curvature_operator(losses, which, form)
        assert torch.allclose(shared[which](v), alone(v), rtol=1e-10, atol=0)
        assert float(shared[which].value.detach()) == pytest.approx(float(alone.value.detach()), rel=1e-12)
    assert not torch.allclose(shared["mean"](v), shared["equiv"](v))
