"""Tests of :func:`equivrepro.metrics.twirl_decomposition` on the toy point-cloud task (float64).

The linear per-point model f(x)_n = A x_n with target s·x_n has a closed-form decomposition.
With z_{g,n} = Rᵀ A R x_n (rotate the input by R, rotate the output back by Rᵀ) and the Haar identity
E[R_ij R_kl] = δ_ik δ_jl / 3, one gets E_R[Rᵀ M R] = (tr M / 3)·I for every matrix M. Write a = tr A / 3 and
B = A − a I (traceless). Then, per point,

* twirl:   E_R z_{g,n} = a x_n                        (the twirled model is the equivariant a·I),
* L_equiv = E_R |Rᵀ B R x_n|² = x_nᵀ E_R[Rᵀ BᵀB R] x_n = ‖B‖_F² |x_n|² / 3,
* L_mean  = |(a − s) x_n|² = (a − s)² |x_n|²,          L_mean^{L2-MAE} = |a − s| |x_n|,
* L_total = L_mean + L_equiv (the cross term 2(a − s) x_nᵀ E[RᵀBR] x_n vanishes because tr B = 0).

For isotropic inputs with E[x_i²] = σ² this gives L_equiv = ‖A − (tr A/3) I‖_F² σ². Only degree-2 moments of R
enter, so every rotation 2-design gives the same averages exactly: the 60-element icosahedral group
(a 5-design) reproduces these numbers for a fixed batch to round-off.
"""

from __future__ import annotations

import math

import pytest
import torch

from equivrepro.metrics import TermDecomposition, decompose_term, twirl_decomposition, untwisted_predictions
from equivrepro.rotations import haar_rotations, icosahedral_group, octahedral_group
from equivrepro.task import LossTerm
from equivrepro.testing.pointcloud import LinearPointModel, NonEquivariantMLP, PointCloudTask, RadialModel, make_pointcloud_batch

TASK = PointCloudTask()
SCALE = 2.0  # make_pointcloud_batch's target is SCALE · x


# --------------------------------------------------------------------------------------------------
# helpers shared by the metric tests (imported by test_twirl.py and test_gradients.py)
# --------------------------------------------------------------------------------------------------
def linear_matrix(seed: int = 0, spread: float = 0.5) -> torch.Tensor:
    """A = 1.5·I + spread·G with G standard normal: trace part a ≈ 1.5 (target scale 2), traceless part B ≠ 0."""
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.eye(3, dtype=torch.float64) + spread * torch.randn(3, 3, generator=g, dtype=torch.float64)


def linear_closed_form(a_mat: torch.Tensor, batch: dict, scale: float = SCALE) -> dict[str, torch.Tensor]:
    """Per-sample exact values ``(B,)`` for f(x)_n = A x_n, target s·x_n (module docstring), MSE averaged over points."""
    a = a_mat.diagonal().sum() / 3
    traceless = a_mat - a * torch.eye(3, dtype=a_mat.dtype)
    sq = batch["pos"].pow(2).sum(-1)  # |x_n|², (B, N)
    equiv = traceless.pow(2).sum() * sq.mean(-1) / 3
    mean = (a - scale) ** 2 * sq.mean(-1)
    return {"equiv": equiv, "mean": mean, "total": mean + equiv, "mean_l2mae": (a - scale).abs() * sq.sqrt().mean(-1)}


def replicate(batch: dict, draws: int) -> dict:
    """``draws`` copies of a batch stacked draw-major (row d·B + i is sample i of draw d)."""
    return {k: v.repeat((draws,) + (1,) * (v.dim() - 1)) for k, v in batch.items()}


def draw_means(x: torch.Tensor, draws: int) -> tuple[float, float]:
    """Mean over draws of the per-draw batch mean, and its standard error (draws are independent)."""
    per_draw = x.reshape(draws, -1).mean(1)
    return float(per_draw.mean()), float(per_draw.std() / math.sqrt(draws))


def _batch(b: int = 8, n: int = 6, seed: int = 0) -> dict:
    return make_pointcloud_batch(b, n, torch.Generator().manual_seed(seed))


def _mlp(seed: int = 0) -> NonEquivariantMLP:
    torch.manual_seed(seed)
    return NonEquivariantMLP().double()


# --------------------------------------------------------------------------------------------------
# Exact equivariance → zero
# --------------------------------------------------------------------------------------------------
def test_equivariant_radial_model_has_zero_equivariance_error():
    """z_k − z̄ is float64 round-off (~1e-16·|z|), so the quadratic L_equiv / L_total is ~1e-32; we allow 1e-24.
    The jackknife term is a difference of O(1) numbers amplified by K, so |pct| ≲ K·1e-16; we allow 1e-12.
    The non-equivariant MLP is far above both bounds."""
    torch.manual_seed(0)
    model = RadialModel().double()
    batch = _batch(16, 7)
    rot = haar_rotations(16 * 10, torch.Generator().manual_seed(1), torch.float64).reshape(16, 10, 3, 3)
    dec = twirl_decomposition(model, TASK, batch, rot)
    mse, l2 = dec["mse"].summary(), dec["l2mae"].summary()
    assert mse["total"] > 1.0
    assert 0 <= mse["pct"] < 1e-24 and abs(mse["pct_plugin"]) < 1e-24
    assert abs(l2["pct"]) < 1e-12
    assert (dec["mse"].equiv_unbiased.abs() <= 1e-24 * dec["mse"].total).all()
    ref = twirl_decomposition(_mlp(), TASK, batch, rot)
    assert ref["mse"].summary()["pct"] > 1e-4 and ref["l2mae"].summary()["pct"] > 1e-4


def test_oracle_predictor_has_zero_equivariance_error():
    """The targets rotate with the batch, so the untwisted oracle is y: bit for bit for the signed-permutation
    cube rotations (no rounding in their products), up to round-off for Haar rotations. L_total is then exactly
    0 and L_equiv is only the rounding of z̄ = Σ_k z_k / K (≲ (1e-16)²·|y|²; we allow 1e-28·|y|²)."""
    batch = _batch(5, 6)
    scale = batch["target"].pow(2).sum(-1).mean()
    with torch.no_grad():
        z = untwisted_predictions(TASK.targets, TASK, batch, octahedral_group())["vec"]
    assert torch.equal(z, batch["target"][:, None].expand_as(z))
    cube = twirl_decomposition(TASK.targets, TASK, batch, octahedral_group(), exact_group=True)
    assert torch.equal(cube["mse"].total, torch.zeros(5, dtype=torch.float64))
    assert cube["l2mae"].total.max() < 1e-14  # sqrt of the 1e-30 clamp in the L2-MAE definition
    assert cube["mse"].equiv_unbiased.abs().max() < 1e-28 * scale
    assert cube["l2mae"].equiv_unbiased.abs().max() < 1e-15  # a difference of two ~1e-15 clamped values
    haar = twirl_decomposition(TASK.targets, TASK, batch, haar_rotations(10, torch.Generator().manual_seed(0), torch.float64))
    assert haar["mse"].equiv_unbiased.abs().max() < 1e-28 * scale
    assert haar["mse"].total.max() < 1e-28 * scale


# --------------------------------------------------------------------------------------------------
# Per-sample identities
# --------------------------------------------------------------------------------------------------
def _masked_weighted_mse(pred, target, batch):
    """Σ_n w_n |p_n − y_n|² / Σ_n w_n with w_n = mask_n·(1 + n) — a weighted squared error (quadratic term)."""
    w = batch["mask"].to(pred["vec"].dtype) * (1 + torch.arange(pred["vec"].shape[1], dtype=pred["vec"].dtype))
    return ((pred["vec"] - target["vec"]).pow(2).sum(-1) * w).sum(-1) / w.sum(-1)


def test_total_equals_mean_plus_equiv_per_sample():
    """Plug-in: mean_k ℓ(z_k, y) = ℓ(z̄, y) + mean_k ℓ(z_k, z̄) for a weighted squared error (Pythagoras; a
    genuine identity since the library computes the last term separately). Unbiased: mean + equiv = total.
    Jensen: the plug-in Jensen gap of the convex L2-MAE is ≥ 0 per sample. For MSE, equiv_unbiased =
    K/(K−1)·equiv_plugin."""
    batch = _batch(6, 5)
    batch["mask"] = torch.arange(5)[None] < torch.tensor([5, 4, 3, 5, 2, 5])[:, None]
    terms = TASK.terms + (LossTerm("wmse", _masked_weighted_mse, quadratic=True),)
    k = 7
    rot = haar_rotations(6 * k, torch.Generator().manual_seed(3), torch.float64).reshape(6, k, 3, 3)
    dec = twirl_decomposition(_mlp(), TASK, batch, rot, terms=terms)
    for d in dec.values():
        rel = lambda x, d=d: (x - d.total).abs().max() / d.total.abs().max()  # noqa: E731
        assert rel(d.mean_plugin + d.equiv_plugin) < 1e-12, d.name
        assert rel(d.mean_unbiased + d.equiv_unbiased) < 1e-12, d.name
        assert (d.equiv_plugin >= 0).all()
        assert (d.equiv_plugin > 0).all()  # a generic non-equivariant model
    for name in ("mse", "wmse"):
        assert torch.allclose(dec[name].equiv_unbiased, dec[name].equiv_plugin * k / (k - 1), rtol=1e-14, atol=0)
    assert dec["mse"].estimator == "u-statistic" and dec["l2mae"].estimator == "jackknife"


def test_u_statistic_equals_its_pairwise_form():
    """Unbiased MSE terms as order-2 U-statistics over copy pairs k ≠ l (paper §3.2):
    L_equiv^U = 1/(2K(K−1)) Σ_{k≠l} ‖z_k − z_l‖²,  L_mean^U = 1/(K(K−1)) Σ_{k≠l} ⟨z_k − y, z_l − y⟩ (per point, averaged)."""
    batch = _batch(4, 5)
    k = 6
    rot = haar_rotations(k, torch.Generator().manual_seed(0), torch.float64)
    model = _mlp()
    dec = twirl_decomposition(model, TASK, batch, rot)["mse"]
    with torch.no_grad():
        z = untwisted_predictions(model, TASK, batch, rot)["vec"]  # (B, K, N, 3)
    off = ~torch.eye(k, dtype=torch.bool)
    pair_sq = (z[:, :, None] - z[:, None]).pow(2).sum(-1).mean(-1)  # (B, K, K)
    equiv = (pair_sq * off).sum((1, 2)) / (2 * k * (k - 1))
    e = z - batch["target"][:, None]
    inner = torch.einsum("bknd,blnd->bkln", e, e).mean(-1)
    mean = (inner * off).sum((1, 2)) / (k * (k - 1))
    assert torch.allclose(dec.equiv_unbiased, equiv, rtol=1e-12, atol=0)
    assert torch.allclose(dec.mean_unbiased, mean, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# Closed form with an exact 2-design
# --------------------------------------------------------------------------------------------------
def test_linear_model_with_icosahedral_group_matches_closed_form():
    """With the 60 icosahedral rotations and exact_group=True the plug-in values are the exact group averages,
    which for a linear map equal the Haar averages (2-design): equal to the closed form for this batch."""
    batch = _batch(8, 6, seed=1)
    a_mat = linear_matrix(1)
    exact = linear_closed_form(a_mat, batch)
    dec = twirl_decomposition(LinearPointModel(a_mat), TASK, batch, icosahedral_group(), exact_group=True)
    mse = dec["mse"]
    assert mse.estimator == "exact-group"
    for got, want in ((mse.equiv_unbiased, exact["equiv"]), (mse.mean_unbiased, exact["mean"]), (mse.total, exact["total"])):
        assert torch.allclose(got, want, rtol=1e-10, atol=0)
    assert torch.allclose(dec["l2mae"].mean_unbiased, exact["mean_l2mae"], rtol=1e-10, atol=0)
    # without exact_group the same 60 rotations are treated as random draws and get the K/(K−1) correction
    unb = twirl_decomposition(LinearPointModel(a_mat), TASK, batch, icosahedral_group())["mse"]
    assert torch.allclose(unb.equiv_unbiased, exact["equiv"] * 60 / 59, rtol=1e-10, atol=0)


def test_linear_model_population_closed_form_for_isotropic_inputs():
    """E_x over isotropic N(0, I) points of L_equiv is ‖B‖_F²·E[x_i²]; make_pointcloud_batch centres each cloud
    of N points, so E[x_i²] = (N−1)/N. The estimate from 4096 clouds agrees within 4 SE."""
    n = 6
    batch = make_pointcloud_batch(4096, n, torch.Generator().manual_seed(5))
    a_mat = linear_matrix(2)
    b_norm2 = float((a_mat - a_mat.trace() / 3 * torch.eye(3, dtype=torch.float64)).pow(2).sum())
    rot = haar_rotations(4096 * 4, torch.Generator().manual_seed(6), torch.float64).reshape(4096, 4, 3, 3)
    s = twirl_decomposition(LinearPointModel(a_mat), TASK, batch, rot)["mse"].summary()
    expected = b_norm2 * (n - 1) / n
    assert abs(s["equiv"] - expected) < 4 * s["equiv_se"], (s["equiv"], expected, s["equiv_se"])
    a = float(a_mat.trace() / 3)
    assert abs(s["mean"] - 3 * (a - SCALE) ** 2 * (n - 1) / n) < 4 * s["mean_se"]


# --------------------------------------------------------------------------------------------------
# Unbiasedness over independent rotation draws
# --------------------------------------------------------------------------------------------------
DRAWS = 400
KS = (2, 4, 10, 50)


def _decompose_draws(model, batch, k: int, seed: int) -> dict[str, TermDecomposition]:
    """DRAWS independent K-rotation decompositions of the same batch, computed as one replicated batch with
    per-sample rotations (B·DRAWS, K, 3, 3)."""
    big = replicate(batch, DRAWS)
    n = big["pos"].shape[0]
    rot = haar_rotations(n * k, torch.Generator().manual_seed(seed), torch.float64).reshape(n, k, 3, 3)
    return twirl_decomposition(model, TASK, big, rot)


def test_unbiased_estimators_do_not_depend_on_k_linear_model():
    """Mean over 400 draws of the U-statistic L_equiv and L_mean equals the closed form within 4 SE for every K;
    the plug-in L_equiv equals (K−1)/K of it and the plug-in L_mean is L_mean + L_equiv/K (also 4 SE). At K = 2
    the plug-in is off by half of L_equiv, which is > 10 SE: the check can fail."""
    batch = _batch(8, 6)
    a_mat = linear_matrix(0)
    exact = {k: float(v.mean()) for k, v in linear_closed_form(a_mat, batch).items()}
    model = LinearPointModel(a_mat)
    for i, k in enumerate(KS):
        d = _decompose_draws(model, batch, k, seed=100 + i)["mse"]
        eu, eu_se = draw_means(d.equiv_unbiased, DRAWS)
        ep, ep_se = draw_means(d.equiv_plugin, DRAWS)
        mu, mu_se = draw_means(d.mean_unbiased, DRAWS)
        mp, mp_se = draw_means(d.mean_plugin, DRAWS)
        assert abs(eu - exact["equiv"]) < 4 * eu_se, (k, eu, exact["equiv"], eu_se)
        assert abs(mu - exact["mean"]) < 4 * mu_se, (k, mu, exact["mean"], mu_se)
        assert abs(ep - (k - 1) / k * exact["equiv"]) < 4 * ep_se, (k, ep)
        assert abs(mp - (exact["mean"] + exact["equiv"] / k)) < 4 * mp_se, (k, mp)
        if k == 2:
            assert abs(ep - exact["equiv"]) > 10 * ep_se and abs(mp - exact["mean"]) > 10 * mp_se


def test_unbiased_equiv_agrees_across_k_nonlinear_model():
    """For the MLP (no closed form) the U-statistic means for K = 2, 4, 10, 50 agree pairwise within 4 combined SE,
    and the plug-in means sit at (K−1)/K of the pooled value (4 SE)."""
    batch = _batch(8, 6)
    model = _mlp()
    est = {}
    for i, k in enumerate(KS):
        d = _decompose_draws(model, batch, k, seed=200 + i)["mse"]
        est[k] = (draw_means(d.equiv_unbiased, DRAWS), draw_means(d.equiv_plugin, DRAWS))
    for k1 in KS:
        for k2 in KS:
            (m1, s1), (m2, s2) = est[k1][0], est[k2][0]
            assert abs(m1 - m2) < 4 * math.hypot(s1, s2), (k1, k2, m1, m2)
    w = {k: 1 / est[k][0][1] ** 2 for k in KS}
    pooled = sum(w[k] * est[k][0][0] for k in KS) / sum(w.values())
    for k in KS:
        ep, ep_se = est[k][1]
        assert abs(ep - (k - 1) / k * pooled) < 4 * ep_se + 1e-3 * pooled, (k, ep, pooled)


def test_jackknife_reduces_the_plugin_bias_of_the_l2mae_mean(capsys):
    """ℓ = per-point Euclidean error is convex, so the plug-in ℓ(z̄, y) is biased up by O(1/K) (Jensen); the
    leave-one-out jackknife removes the O(1/K) term. Exact L_mean^{L2-MAE} = |a − s|·mean_n|x_n| for the linear
    model. Measured here (A spread 0.2, exact L_mean = 0.7506, 400 draws; jackknife SE 0.002 → 0.0003):

        K    plug-in bias   jackknife bias
        2      +0.088          +0.0036
        4      +0.044          +0.0002
        10     +0.018          +0.0002
        50     +0.0033         −0.0003

    We assert the jackknife bias is at most 0.5× (K = 2) / 0.3× (K ≥ 4) of the plug-in bias and that the
    jackknife L_equiv is on average larger than the plug-in one (it adds back the removed bias)."""
    batch = _batch(8, 6)
    a_mat = linear_matrix(0, spread=0.2)
    exact = float(linear_closed_form(a_mat, batch)["mean_l2mae"].mean())
    model = LinearPointModel(a_mat)
    rows = []
    for i, k in enumerate(KS):
        d = _decompose_draws(model, batch, k, seed=300 + i)["l2mae"]
        mp, _ = draw_means(d.mean_plugin, DRAWS)
        mj, mj_se = draw_means(d.mean_unbiased, DRAWS)
        rows.append((k, mp - exact, mj - exact, mj_se))
        assert mp - exact > 0  # Jensen: the plug-in over-estimates
        assert abs(mj - exact) < (0.5 if k == 2 else 0.3) * (mp - exact), (k, mp - exact, mj - exact)
        assert draw_means(d.equiv_unbiased, DRAWS)[0] > draw_means(d.equiv_plugin, DRAWS)[0]
    with capsys.disabled():
        print(
            f"\n[l2mae L_mean bias] exact={exact:.4f} "
            + "  ".join(f"K={k}: plug-in {p:+.4f} jackknife {j:+.4f}(±{s:.4f})" for k, p, j, s in rows)
        )


# --------------------------------------------------------------------------------------------------
# Mechanics: chunking, rotation layouts, summary, errors
# --------------------------------------------------------------------------------------------------
def test_chunk_size_does_not_change_results():
    batch = _batch(5, 6)
    k = 7
    rot = haar_rotations(5 * k, torch.Generator().manual_seed(0), torch.float64).reshape(5, k, 3, 3)
    model = _mlp()
    ref = twirl_decomposition(model, TASK, batch, rot)
    for chunk in (1, 3, k, 100):
        got = twirl_decomposition(model, TASK, batch, rot, chunk_size=chunk)
        for name, d in ref.items():
            for attr in ("total", "mean_plugin", "equiv_plugin", "mean_unbiased", "equiv_unbiased"):
                assert torch.allclose(getattr(got[name], attr), getattr(d, attr), rtol=1e-12, atol=1e-15), (chunk, name, attr)


def test_shared_and_per_sample_rotations():
    """Shared (K,3,3) rotations are the per-sample layout with every row equal; per-sample rotations give each
    sample its own draw (sample i of a batch equals the 1-sample batch with its rotations)."""
    batch = _batch(4, 6)
    model = _mlp()
    shared = haar_rotations(5, torch.Generator().manual_seed(1), torch.float64)
    a = twirl_decomposition(model, TASK, batch, shared)["mse"]
    b = twirl_decomposition(model, TASK, batch, shared.expand(4, 5, 3, 3).clone())["mse"]
    assert torch.allclose(a.equiv_unbiased, b.equiv_unbiased, rtol=1e-13)
    per = haar_rotations(20, torch.Generator().manual_seed(2), torch.float64).reshape(4, 5, 3, 3)
    c = twirl_decomposition(model, TASK, batch, per)["mse"]
    for i in range(4):
        one = twirl_decomposition(model, TASK, {k: v[i : i + 1] for k, v in batch.items()}, per[i])["mse"]
        assert torch.allclose(c.equiv_unbiased[i : i + 1], one.equiv_unbiased, rtol=1e-12)
        assert torch.allclose(c.total[i : i + 1], one.total, rtol=1e-12)
    assert not torch.allclose(a.equiv_unbiased, c.equiv_unbiased, rtol=1e-3)
    with pytest.raises(ValueError, match="rotations must be"):
        twirl_decomposition(model, TASK, batch, per[:3])
    with pytest.raises(ValueError, match="at least K = 2"):
        twirl_decomposition(model, TASK, batch, shared[:1])


def test_summary_keys_and_standard_errors():
    """summary() reports means, SEs and quantiles; the delta-method pct_se shrinks like 1/√n (64 → 1024
    samples: factor 4, accepted in [2.5, 6.5]) and agrees with the spread of pct over independent batches."""
    model = _mlp()
    keys = {
        "total",
        "mean",
        "equiv",
        "mean_plugin",
        "equiv_plugin",
        "pct",
        "pct_plugin",
        "total_se",
        "mean_se",
        "equiv_se",
        "pct_se",
        "pct_q50",
        "pct_q90",
        "pct_max",
        "n",
        "equiv_max_share",
    }
    rot = lambda n, s: haar_rotations(n * 4, torch.Generator().manual_seed(s), torch.float64).reshape(n, 4, 3, 3)  # noqa: E731
    small = twirl_decomposition(model, TASK, _batch(64, 6, seed=1), rot(64, 1))["mse"].summary()
    large = twirl_decomposition(model, TASK, _batch(1024, 6, seed=2), rot(1024, 2))["mse"].summary()
    assert set(small) == keys and all(isinstance(v, float) for v in small.values())
    assert small["pct_q50"] <= small["pct_q90"] <= small["pct_max"]
    assert small["pct"] == pytest.approx(small["equiv"] / small["total"])
    assert small["mean"] + small["equiv"] == pytest.approx(small["total"], rel=1e-12)
    assert 2.5 < small["pct_se"] / large["pct_se"] < 6.5
    # delta-method SE vs the empirical spread of pct over 32 independent 64-sample batches
    big = twirl_decomposition(model, TASK, _batch(64 * 32, 6, seed=3), rot(64 * 32, 3))["mse"]
    pcts = big.equiv_unbiased.reshape(32, 64).sum(1) / big.total.reshape(32, 64).sum(1)
    spread = float(pcts.std())
    assert 0.6 < small["pct_se"] / spread < 1.6, (small["pct_se"], spread)


def test_concat_pools_chunks_and_grad_flag():
    batch = _batch(6, 5)
    model = _mlp()
    rot = haar_rotations(6 * 4, torch.Generator().manual_seed(0), torch.float64).reshape(6, 4, 3, 3)
    whole = twirl_decomposition(model, TASK, batch, rot)["mse"]
    parts = [twirl_decomposition(model, TASK, {k: v[s] for k, v in batch.items()}, rot[s])["mse"] for s in (slice(0, 2), slice(2, 6))]
    pooled = TermDecomposition.concat(parts)
    assert torch.allclose(pooled.equiv_unbiased, whole.equiv_unbiased, rtol=1e-13)
    assert pooled.summary()["pct"] == pytest.approx(whole.summary()["pct"], rel=1e-12)
    assert not whole.pct.requires_grad
    with_grad = twirl_decomposition(model, TASK, batch, rot, grad=True)["mse"]
    assert with_grad.pct.requires_grad
    with_grad.pct.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_decompose_term_directly_from_untwisted_predictions():
    """decompose_term works on any (B, K, ...) predictions: identical copies give zero equivariance error and the
    plug-in L_mean equals the loss of the copy."""
    batch = _batch(3, 4)
    z = {"vec": batch["pos"][:, None].expand(3, 5, 4, 3) * 1.7}
    d = decompose_term(TASK.terms[0], z, TASK.targets(batch), batch)
    assert d.equiv_plugin.max() < 1e-30  # only the rounding of z̄ = Σ z_k / K
    expected = (0.3**2) * batch["pos"].pow(2).sum(-1).mean(-1)
    assert torch.allclose(d.mean_unbiased, expected, rtol=1e-12) and torch.allclose(d.total, expected, rtol=1e-12)


def test_bootstrap_interval_of_pct_covers_the_population_value():
    """The percentile bootstrap of Σe/Σt over samples covers the population ratio at close to its level on
    well-behaved data (200 repetitions of n = 64), and the summary reports it around the point estimate."""
    from equivrepro.metrics.decomposition import ratio_bootstrap_interval

    g = torch.Generator().manual_seed(0)
    pop = 0.1 / 1.5  # t ~ 1 + U(0, 1), e = 0.1·t·X/1.5 with X ~ Exp(1) independent: E e = 0.1, E t = 1.5
    hits = 0
    for _ in range(200):
        t = 1.0 + torch.rand(64, generator=g, dtype=torch.float64)
        e = 0.1 * t * torch.empty(64, dtype=torch.float64).exponential_(1.0, generator=g) / 1.5
        lo, hi = ratio_bootstrap_interval(e, t, 400, g)
        hits += lo <= pop <= hi
    assert 0.86 <= hits / 200 <= 0.99, hits
    model = _mlp()
    rot = haar_rotations(48 * 4, torch.Generator().manual_seed(5), torch.float64).reshape(48, 4, 3, 3)
    s = twirl_decomposition(model, TASK, _batch(48, 6, seed=5), rot)["mse"].summary(
        bootstrap=500, generator=torch.Generator().manual_seed(1)
    )
    assert s["pct_ci_lo"] < s["pct"] < s["pct_ci_hi"]
    assert 0.5 < (s["pct_ci_hi"] - s["pct_ci_lo"]) / (2 * 1.96 * s["pct_se"]) < 2.0
