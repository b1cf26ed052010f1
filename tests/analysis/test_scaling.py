"""Scaling fits: the power law recovers known parameters from noisy data (inside its bootstrap intervals), the
fallback with few points, the frontier picks the right size on a synthetic grid, the break-even slowdown."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from equivrepro.analysis.scaling import (
    PowerLawFit,
    break_even_slowdown,
    break_even_slowdown_with_floor,
    compare_families,
    compute_optimal_frontier,
    fit_power_law,
    loglog_interpolate,
    measured_slowdown,
)

TRUE = dict(l_inf=0.4, a=2.0e4, gamma=0.35)


def _law(c, l_inf=TRUE["l_inf"], a=TRUE["a"], gamma=TRUE["gamma"]):
    return l_inf + a * np.asarray(c, dtype=float) ** (-gamma)


def test_fit_recovers_known_parameters_within_the_bootstrap_interval():
    """Over 6 noisy data sets the 95 % intervals cover each true parameter in at least 4 (percentile
    bootstrap intervals under-cover a little at 16 points: ~85–90 % measured over 20 seeds)."""
    c = np.logspace(11, 16, 16)
    covered = {name: 0 for name in TRUE}
    for seed in range(6):
        loss = _law(c) * np.exp(np.random.default_rng(seed).normal(0.0, 0.02, c.size))  # 2 % multiplicative noise
        fit = fit_power_law(c, loss, n_boot=80, seed=seed)
        assert fit.kind == "full" and len(fit.boot) > 60
        for name, value in TRUE.items():
            lo, hi = fit.intervals[name]
            covered[name] += lo <= value <= hi
        assert abs(fit.gamma - TRUE["gamma"]) < 0.1 and abs(fit.l_inf - TRUE["l_inf"]) < 0.15
        lo, hi = fit.band(c)
        assert np.all(lo <= fit.predict(c) + 1e-12) and np.all(fit.predict(c) <= hi + 1e-12)
        np.testing.assert_allclose(fit.predict(c), _law(c), rtol=0.03)
    assert min(covered.values()) >= 4, covered


def test_noiseless_data_is_fitted_exactly_in_any_compute_unit():
    c = np.logspace(12, 15, 8)
    for scale in (1.0, 1e-9):  # FLOPs or GFLOPs: the same curve
        fit = fit_power_law(c * scale, _law(c), n_boot=0)
        assert fit.gamma == pytest.approx(TRUE["gamma"], rel=1e-5) and fit.l_inf == pytest.approx(TRUE["l_inf"], rel=1e-4)
        np.testing.assert_allclose(fit.predict(c * scale), _law(c), rtol=1e-7)
        assert fit.a == pytest.approx(TRUE["a"] * scale ** TRUE["gamma"], rel=1e-4)


def test_few_points_fall_back_to_a_pure_power_law():
    c = np.array([1e12, 1e13, 1e14])
    fit = fit_power_law(c, 3.0 * c**-0.2, n_boot=50)
    assert fit.kind == "pure" and fit.l_inf == 0.0
    assert fit.gamma == pytest.approx(0.2, rel=1e-9) and fit.a == pytest.approx(3.0, rel=1e-9)
    with pytest.raises(ValueError, match="2 or more distinct"):
        fit_power_law([1e12, 1e12], [1.0, 0.9])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1e12, 1e13, -1.0], [1.0, 0.9, 0.8])


def _chinchilla(n, c, e=0.3, a=400.0, alpha=0.34, b=4000.0, beta=0.28):
    """L(N, D) = E + A/N^α + B/D^β at D = C/(6N) (Hoffmann et al.'s form)."""
    return e + a / n**alpha + b / (c / (6 * n)) ** beta


def test_frontier_picks_the_optimal_size_on_a_synthetic_grid():
    """On a grid of sizes × budgets the frontier's size is the grid size with the lowest loss, which lies
    within one grid step of the analytic optimum N*(C) ∝ C^(β/(α+β)); the fitted exponent matches."""
    alpha, beta, a, b = 0.34, 0.28, 400.0, 4000.0
    sizes = np.logspace(3, 9, 49)
    budgets = np.logspace(13, 19, 7)
    n_grid, c_grid = np.meshgrid(sizes, budgets)
    frontier = compute_optimal_frontier(n_grid.ravel(), c_grid.ravel(), _chinchilla(n_grid, c_grid).ravel())
    # analytic optimum: dL/dN = 0 ⇒ N* = G (C/6)^(β/(α+β)), G = (αA / (βB))^(1/(α+β))
    g = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
    n_star = g * (budgets / 6) ** (beta / (alpha + beta))
    step = np.log(sizes[1] / sizes[0])
    assert np.all(np.abs(np.log(frontier.best_size) - np.log(n_star)) <= step)
    brute = sizes[np.argmin(_chinchilla(sizes[None, :], budgets[:, None]), axis=1)]
    np.testing.assert_array_equal(frontier.best_size, brute)
    fit = frontier.fit_optimal_size(n_boot=100)
    assert fit["a"] == pytest.approx(beta / (alpha + beta), abs=0.02)
    assert fit["a_lo"] <= fit["a"] <= fit["a_hi"] and fit["edge_fraction"] == 0.0


def test_frontier_interpolates_curves_and_does_not_extrapolate():
    """Each size's checkpoints form a loss–compute curve; a size competes only inside its compute range."""
    small = (np.array([1e10, 1e11, 1e12]), np.array([2.0, 1.0, 0.8]))
    large = (np.array([1e11, 1e12, 1e13]), np.array([1.2, 0.5, 0.3]))
    size = np.r_[np.full(3, 1e5), np.full(3, 1e7)]
    frontier = compute_optimal_frontier(size, np.r_[small[0], large[0]], np.r_[small[1], large[1]], budgets=[1e10, 10**11.5, 1e13])
    np.testing.assert_array_equal(frontier.best_size, [1e5, 1e7, 1e7])
    assert frontier.best_loss[1] == pytest.approx(np.sqrt(1.2 * 0.5))  # log–log midpoint of the large model's curve
    assert frontier.losses[1, 0] == pytest.approx(np.sqrt(1.0 * 0.8))  # … above the small model's there
    assert np.isnan(frontier.losses[2, 0]) and np.isnan(frontier.losses[0, 1])
    assert np.isnan(loglog_interpolate([1.0, 10.0], [1.0, 0.1], [20.0]))[0]


def test_compare_families_names_the_winner_and_the_factor():
    budgets = np.logspace(12, 16, 5)
    fast = fit_power_law(budgets, 1.0 * (budgets / 1e12) ** -0.3, n_boot=0)
    slow = (budgets, 0.6 * (budgets / 1e12) ** -0.2)  # lower loss at small budgets, higher beyond C = 1e12 · 0.6^(−10)
    table = compare_families({"augmented": fast, "equivariant": slow}, budgets)
    assert list(table["winner"]) == ["equivariant", "equivariant", "equivariant", "augmented", "augmented"]
    ratio = table["ratio"].to_numpy()
    l_fast, l_slow = table["loss/augmented"].to_numpy(), table["loss/equivariant"].to_numpy()
    np.testing.assert_allclose(ratio, np.maximum(l_fast, l_slow) / np.minimum(l_fast, l_slow))
    assert np.all(ratio >= 1)
    alone = compare_families({"augmented": fast, "equivariant": (budgets[:2], slow[1][:2])}, budgets)
    assert pd.isna(alone["winner"].iloc[-1]) and np.isnan(alone["ratio"].iloc[-1])  # one family only at the largest budget


def test_break_even_slowdown_against_hand_computation():
    # paper digest §6.4: pct = 2 %, γ = 0.1 → 0.98^(−10) = 1.2239; γ = 0.3 → 0.98^(−1/0.3) = 1.0697
    np.testing.assert_allclose(break_even_slowdown(0.02, [0.1, 0.3]), [1.2238811, 1.0696616], rtol=1e-6)
    assert break_even_slowdown(0.0, 0.2) == 1.0
    # with a floor: pct 0.1, γ 0.5, L∞ = 1, A·C^(−γ) = 1 → s*^0.5 = (1 + 0.1)/(0.9 · 1) → s* = 1.4938
    fit = PowerLawFit(l_inf=1.0, a=1.0, gamma=0.5, kind="full", n_points=4, rmse_log=0.0, c0=1.0)
    s = float(break_even_slowdown_with_floor(0.1, fit, 1.0))
    assert s == pytest.approx((1.1 / 0.9) ** 2, rel=1e-12)
    assert 0.9 * float(fit.predict(1.0 / s)) == pytest.approx(float(fit.predict(1.0)), rel=1e-12)  # it ties
    pure = PowerLawFit(l_inf=0.0, a=1.0, gamma=0.5, kind="pure", n_points=3, rmse_log=0.0, c0=1.0)
    assert float(break_even_slowdown_with_floor(0.1, pure, 7.0)) == pytest.approx(float(break_even_slowdown(0.1, 0.5)))
    with pytest.raises(ValueError):
        break_even_slowdown(1.0, 0.2)


def test_measured_slowdown_at_matched_size():
    ref_size, ref_cost = np.array([1e5, 1e6, 1e7]), np.array([0.1, 0.4, 1.6])  # cost ∝ size^0.6
    table = measured_slowdown(ref_size, ref_cost, [1e5, 10**6.5, 1e8], [0.3, 1.6, 9.0])
    np.testing.assert_allclose(table["slowdown"].to_numpy()[:2], [3.0, 1.6 / 0.8])
    assert np.isnan(table["slowdown"].iloc[2])  # outside the reference's size range
