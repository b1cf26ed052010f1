"""Tests of test-time twirling, :class:`equivrepro.metrics.TwirledPredictor` (paper §6.4).

For MSE and K i.i.d. Haar rotations, f̄_K(x) = (1/K) Σ_k z_k with E z_k = f̄(x) and E‖z_k − f̄‖² = L_equiv(x):
E‖f̄_K(x) − y‖² = ‖f̄(x) − y‖² + E‖f̄_K − f̄‖² = L_mean(x) + L_equiv(x)/K (cross term zero, variance of a mean of
K independent copies). With the icosahedral group the twirl of a linear map is exact (2-design), so f̄_60 = a·I.
"""

from __future__ import annotations

import math

import pytest
import torch

from equivrepro.metrics import TwirledPredictor, twirl_decomposition
from equivrepro.rotations import haar_rotations, icosahedral_group, rotate_points
from equivrepro.testing.pointcloud import LinearPointModel, NonEquivariantMLP, PointCloudTask, make_pointcloud_batch
from tests.metrics.test_decomposition import draw_means, linear_closed_form, linear_matrix, replicate

TASK = PointCloudTask()
MSE = TASK.terms[0].fn
DRAWS = 400


def _batch(b: int = 8, n: int = 6, seed: int = 0) -> dict:
    return make_pointcloud_batch(b, n, torch.Generator().manual_seed(seed))


def _twirled_mse(model, batch: dict, k: int, seed: int) -> tuple[float, float]:
    """Mean over DRAWS independent K-rotation twirls of the batch MSE, and its SE."""
    big = replicate(batch, DRAWS)
    n = big["pos"].shape[0]
    rot = haar_rotations(n * k, torch.Generator().manual_seed(seed), torch.float64).reshape(n, k, 3, 3)
    twirled = TwirledPredictor(model, TASK, rot)
    assert twirled.k == k
    with torch.no_grad():
        per_sample = MSE(twirled(big), TASK.targets(big), big)
    return draw_means(per_sample, DRAWS)


def test_twirled_mse_is_l_mean_plus_l_equiv_over_k_linear():
    """MSE(K) = L_mean + L_equiv/K within 4 SE for K = 1, 2, 4, 8 (closed-form L's of the linear model); K = 1 is
    the plain model's L_total. A wrong law (e.g. L_mean + L_equiv/√K) is many SE away at K = 8."""
    batch = _batch()
    a_mat = linear_matrix(0)
    exact = {k: float(v.mean()) for k, v in linear_closed_form(a_mat, batch).items()}
    model = LinearPointModel(a_mat)
    for i, k in enumerate((1, 2, 4, 8)):
        mse, se = _twirled_mse(model, batch, k, seed=10 + i)
        predicted = exact["mean"] + exact["equiv"] / k
        assert abs(mse - predicted) < 4 * se, (k, mse, predicted, se)
        if k == 8:
            assert abs(mse - (exact["mean"] + exact["equiv"] / math.sqrt(k))) > 10 * se


def test_twirled_mse_law_for_a_nonlinear_model():
    """Same law for the MLP, with L_mean and L_equiv estimated by the unbiased decomposition (K = 10, 400 draws,
    independent rotations); the comparison allows 4 combined SE."""
    torch.manual_seed(0)
    model = NonEquivariantMLP().double()
    batch = _batch()
    big = replicate(batch, DRAWS)
    n = big["pos"].shape[0]
    rot = haar_rotations(n * 10, torch.Generator().manual_seed(99), torch.float64).reshape(n, 10, 3, 3)
    d = twirl_decomposition(model, TASK, big, rot)["mse"]
    per_draw_mean = d.mean_unbiased.reshape(DRAWS, -1).mean(1)
    per_draw_equiv = d.equiv_unbiased.reshape(DRAWS, -1).mean(1)
    for i, k in enumerate((1, 2, 4, 8)):
        mse, se = _twirled_mse(model, batch, k, seed=20 + i)
        pred = per_draw_mean + per_draw_equiv / k
        pred_mean, pred_se = float(pred.mean()), float(pred.std() / math.sqrt(DRAWS))
        assert abs(mse - pred_mean) < 4 * math.hypot(se, pred_se), (k, mse, pred_mean)


def test_icosahedral_twirl_of_linear_model_is_exact():
    """Averaging Rᵀ A R over the 60 icosahedral rotations gives (tr A / 3)·I exactly, so the twirled prediction is
    a·x and its MSE is the exact L_mean of the Haar twirl."""
    batch = _batch(6, 5, seed=3)
    a_mat = linear_matrix(4)
    twirled = TwirledPredictor(LinearPointModel(a_mat), TASK, icosahedral_group())
    with torch.no_grad():
        pred = twirled(batch)["vec"]
    a = a_mat.trace() / 3
    assert torch.allclose(pred, a * batch["pos"], rtol=0, atol=1e-12)
    mse = MSE({"vec": pred}, TASK.targets(batch), batch)
    assert torch.allclose(mse, linear_closed_form(a_mat, batch)["mean"], rtol=1e-10, atol=0)


def test_group_twirl_is_equivariant_and_idempotent():
    """f̄ = mean over a finite group G of the twists is exactly G-equivariant: f̄(R·x) = R f̄(x) for R ∈ G
    (the twists of f̄ by R are a re-indexing of the group). Hence its G-decomposition has L_equiv ≈ 0
    (twirl ∘ twirl = twirl), while the untwirled MLP's is large. Chunking does not change f̄."""
    torch.manual_seed(1)
    model = NonEquivariantMLP().double()
    group = icosahedral_group()
    twirled = TwirledPredictor(model, TASK, group)
    batch = _batch(4, 6)
    r = group[[7, 31, 52, 11]]
    with torch.no_grad():
        lhs = twirled(TASK.rotate_batch(batch, r))["vec"]
        rhs = rotate_points(twirled(batch)["vec"], r)
        assert torch.allclose(lhs, rhs, rtol=0, atol=1e-12)
        chunked = TwirledPredictor(model, TASK, group, chunk_size=7)(batch)["vec"]
        assert torch.allclose(chunked, twirled(batch)["vec"], rtol=0, atol=1e-14)
    dec_twirled = twirl_decomposition(twirled, TASK, batch, group, exact_group=True)["mse"].summary()
    dec_plain = twirl_decomposition(model, TASK, batch, group, exact_group=True)["mse"].summary()
    assert dec_twirled["pct"] < 1e-24 and dec_plain["pct"] > 1e-4
    # the twirled model's loss is the plain model's L_mean under the same group
    assert dec_twirled["total"] == pytest.approx(dec_plain["mean"], rel=1e-10)
