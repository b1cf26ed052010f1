"""Compute scaling of held-out loss: power-law fits, the compute-optimal frontier over model sizes, and the
comparison of model families at equal compute (which wins, by how much, and the break-even slowdown).

* :func:`fit_power_law` — ``L(C) = L∞ + A·C^(−γ)`` with ``L∞ ≥ 0, A > 0, γ > 0``, fitted by least squares on
  log L (relative errors: losses spanning decades weigh equally), bootstrap intervals over points.
* :func:`compute_optimal_frontier` — for each budget C, the model size with the lowest loss at C (each
  size's loss–compute curve interpolated in log–log), and :meth:`Frontier.fit_optimal_size`:
  N_opt(C) = k·C^a (Brehmer et al. 2024, "Does equivariance matter at scale?"; Hoffmann et al. 2022's
  approach 1).
* :func:`compare_families` — per budget, every family's loss, the winner and the loss ratio.
* :func:`break_even_slowdown` — s* = (1 − pct)^(−1/γ): an equivariant model that reaches the loss
  (1 − pct)·L of the augmented one at equal steps ties with it per unit compute when its per-step cost is
  s* times higher (paper digest §6.4); :func:`break_even_slowdown_with_floor` includes L∞.
* :func:`measured_slowdown` — the ratio of two families' per-step cost (seconds or FLOPs) at matched size.

Everything takes plain arrays (numpy or anything ``np.asarray`` accepts), so the study can pass columns of
its results table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

__all__ = [
    "PowerLawFit",
    "fit_power_law",
    "Frontier",
    "compute_optimal_frontier",
    "compare_families",
    "break_even_slowdown",
    "break_even_slowdown_with_floor",
    "measured_slowdown",
    "loglog_interpolate",
    "MIN_POINTS_FULL",
]

#: Points needed for the three-parameter fit; with 2 or 3 points the fit falls back to L∞ = 0.
MIN_POINTS_FULL = 4
_GAMMA_MAX = 5.0


def _as_positive(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size and (not np.all(np.isfinite(a)) or np.any(a <= 0)):
        raise ValueError(f"{name} must be finite and positive, got {a}")
    return a


@dataclass
class PowerLawFit:
    """``L(C) = l_inf + a·C^(−gamma)``; ``kind`` is ``"full"`` (3 parameters) or ``"pure"`` (l_inf fixed at 0).

    ``intervals`` hold percentile bootstrap intervals (``level``) of ``l_inf``, ``a`` and ``gamma``;
    ``boot`` the bootstrap parameter rows ``(l_inf, a, gamma)`` that succeeded. ``rmse_log``: RMS residual
    of log L. ``c0``: the geometric-mean compute used to condition the fit (no effect on the result).
    """

    l_inf: float
    a: float
    gamma: float
    kind: str
    n_points: int
    rmse_log: float
    c0: float
    level: float = 0.95
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    boot: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), repr=False)

    def predict(self, c) -> np.ndarray:
        """L at compute ``c`` (same unit as the fitted compute)."""
        c = np.asarray(c, dtype=float)
        return self.l_inf + self.a * self.c0 ** (-self.gamma) * (c / self.c0) ** (-self.gamma)

    def band(self, c, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap band of L(C) at ``c``: ``(lower, upper)`` (the point prediction twice without bootstrap)."""
        c = np.asarray(c, dtype=float)
        if len(self.boot) < 2:
            p = self.predict(c)
            return p, p
        q = 1 - (level or self.level)
        curves = self.boot[:, :1] + self.boot[:, 1:2] * (c.ravel()[None, :] ** (-self.boot[:, 2:3]))
        lo, hi = np.nanquantile(curves, [q / 2, 1 - q / 2], axis=0)
        return lo.reshape(c.shape), hi.reshape(c.shape)

    def as_dict(self) -> dict[str, float | str | int]:
        out: dict[str, float | str | int] = {
            "l_inf": self.l_inf,
            "a": self.a,
            "gamma": self.gamma,
            "kind": self.kind,
            "n_points": self.n_points,
            "rmse_log": self.rmse_log,
            "n_boot": len(self.boot),
        }
        for name, (lo, hi) in self.intervals.items():
            out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
        return out


def _fit_pure(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """log L = log A' − γ·log x by linear least squares; returns (0, A', γ) in normalised compute x."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return 0.0, float(np.exp(intercept)), float(-slope)


def _fit_full(x: np.ndarray, y: np.ndarray, starts: Sequence[tuple[float, float, float]]) -> tuple[float, float, float] | None:
    """Least squares on log L over (L∞, log A', γ) with L∞ ∈ [0, min L), γ ∈ (0, γ_max]; best of several starts."""
    ly, lx = np.log(y), np.log(x)
    upper_linf = float(y.min()) * (1 - 1e-9)

    def resid(p):
        linf, log_a, gamma = p
        return np.log(linf + np.exp(log_a - gamma * lx)) - ly

    best, best_cost = None, np.inf
    for linf0, a0, g0 in starts:
        p0 = [min(max(linf0, 0.0), upper_linf * 0.999), np.log(max(a0, 1e-300)), min(max(g0, 1e-3), _GAMMA_MAX * 0.999)]
        try:
            r = least_squares(resid, p0, bounds=([0.0, -np.inf, 1e-6], [upper_linf, np.inf, _GAMMA_MAX]), method="trf")
        except ValueError:
            continue
        if r.success and r.cost < best_cost:
            best, best_cost = r.x, r.cost
    if best is None:
        return None
    return float(best[0]), float(np.exp(best[1])), float(best[2])


def _starts(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float]]:
    """Initial points: L∞ at fractions of min L; γ and A' then from the log–log slope of L − L∞."""
    out = []
    for frac in (0.0, 0.3, 0.6, 0.9):
        linf = frac * float(y.min())
        _, a, g = _fit_pure(x, y - linf)
        out.append((linf, a, g if g > 0 else 0.1))
    return out


def fit_power_law(compute, loss, n_boot: int = 500, level: float = 0.95, seed: int = 0) -> PowerLawFit:
    """Fit ``L(C) = L∞ + A·C^(−γ)`` to points ``(compute, loss)`` (both positive; any compute unit).

    Least squares on log L with L∞ ∈ [0, min L), A > 0, γ ∈ (0, 5]; several starts. Bootstrap: ``n_boot``
    resamples of the points with replacement, each refitted (a resample with fewer distinct compute
    values than the fit needs is skipped); percentile intervals at ``level``.

    Fallback with few points: 4 or more distinct compute values give the three-parameter ``"full"`` fit;
    2 or 3 give the ``"pure"`` power law L = A·C^(−γ) (L∞ = 0, a straight line in log–log: with three
    points three parameters would interpolate, not fit); fewer than 2 raise ``ValueError``. A pure fit
    reports its intervals from the bootstrap too (with 2 points they are degenerate).
    """
    c, y = _as_positive("compute", compute), _as_positive("loss", loss)
    if c.size != y.size:
        raise ValueError(f"compute and loss differ in length ({c.size} vs {y.size})")
    distinct = np.unique(c).size
    if distinct < 2:
        raise ValueError(f"a power law needs losses at 2 or more distinct compute values, got {distinct}")
    kind = "full" if distinct >= MIN_POINTS_FULL else "pure"
    c0 = float(np.exp(np.mean(np.log(c))))
    x = c / c0

    def fit(xs, ys, starts=None):
        if kind == "pure":
            return _fit_pure(xs, ys)
        return _fit_full(xs, ys, starts or _starts(xs, ys))

    est = fit(x, y)
    if est is None:  # pragma: no cover - least_squares failing from every start
        raise RuntimeError("power-law fit failed from every start")
    linf, a_n, gamma = est
    rmse = float(np.sqrt(np.mean((np.log(linf + a_n * x ** (-gamma)) - np.log(y)) ** 2)))
    rng = np.random.default_rng(seed)
    need = MIN_POINTS_FULL if kind == "full" else 2
    rows = []
    for _ in range(int(n_boot)):
        idx = rng.integers(0, c.size, c.size)
        if np.unique(c[idx]).size < need:
            continue
        r = fit(x[idx], y[idx], starts=[est, *_starts(x[idx], y[idx])[:1]] if kind == "full" else None)
        if r is not None:
            rows.append((r[0], r[1] * c0 ** r[2], r[2]))  # A in the caller's compute unit
    boot = np.asarray(rows, dtype=float).reshape(-1, 3)
    q = 1 - level
    intervals = {}
    if len(boot) >= 2:
        for i, name in enumerate(("l_inf", "a", "gamma")):
            lo, hi = np.quantile(boot[:, i], [q / 2, 1 - q / 2])
            intervals[name] = (float(lo), float(hi))
    return PowerLawFit(
        l_inf=linf,
        a=float(a_n * c0**gamma),
        gamma=gamma,
        kind=kind,
        n_points=int(c.size),
        rmse_log=rmse,
        c0=c0,
        level=level,
        intervals=intervals,
        boot=boot,
    )


# --------------------------------------------------------------------------------------------------
# The compute-optimal frontier
# --------------------------------------------------------------------------------------------------
def loglog_interpolate(x_known, y_known, x_new) -> np.ndarray:
    """Piecewise-linear interpolation of log y against log x; NaN outside [min x, max x] (no extrapolation)."""
    xk, yk = _as_positive("x", x_known), _as_positive("y", y_known)
    order = np.argsort(xk)
    xk, yk = xk[order], yk[order]
    xn = np.asarray(x_new, dtype=float)
    out = np.full(xn.shape, np.nan)
    inside = (xn >= xk[0] * (1 - 1e-12)) & (xn <= xk[-1] * (1 + 1e-12))
    if xk.size == 1:
        out[inside] = yk[0]
        return out
    out[inside] = np.exp(np.interp(np.log(xn[inside]), np.log(xk), np.log(yk)))
    return out


@dataclass
class Frontier:
    """Per budget: the best size and its loss, and every size's loss at that budget (NaN: not reached).

    ``budgets (K,)``, ``sizes (S,)`` (sorted), ``losses (K, S)``, ``best_size (K,)``, ``best_loss (K,)``.
    """

    budgets: np.ndarray
    sizes: np.ndarray
    losses: np.ndarray
    best_size: np.ndarray
    best_loss: np.ndarray

    def fit_optimal_size(self, n_boot: int = 500, level: float = 0.95, seed: int = 0) -> dict[str, float]:
        """N_opt(C) = k·C^a by least squares in log–log over the budgets with a winner; bootstrap over budgets.

        Returns ``{"a", "k", "a_lo", "a_hi", "n_budgets"}``. A winner at the smallest or largest size of the
        grid is a lower / upper bound only (the true optimum may lie outside): such budgets still enter,
        and ``edge_fraction`` says how many there were.
        """
        ok = np.isfinite(self.best_loss)
        c, n = self.budgets[ok], self.best_size[ok]
        if np.unique(c).size < 2:
            raise ValueError("the optimal-size fit needs winners at 2 or more budgets")
        slope, intercept = np.polyfit(np.log(c), np.log(n), 1)
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(int(n_boot)):
            idx = rng.integers(0, c.size, c.size)
            if np.unique(c[idx]).size >= 2:
                boots.append(np.polyfit(np.log(c[idx]), np.log(n[idx]), 1)[0])
        q = 1 - level
        lo, hi = np.quantile(boots, [q / 2, 1 - q / 2]) if len(boots) >= 2 else (np.nan, np.nan)
        edge = np.isin(n, [self.sizes.min(), self.sizes.max()]).mean() if self.sizes.size > 1 else 1.0
        return {
            "a": float(slope),
            "k": float(np.exp(intercept)),
            "a_lo": float(lo),
            "a_hi": float(hi),
            "n_budgets": int(c.size),
            "edge_fraction": float(edge),
        }

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"budget": self.budgets, "best_size": self.best_size, "best_loss": self.best_loss})


def compute_optimal_frontier(size, compute, loss, budgets=None) -> Frontier:
    """The compute-optimal frontier of points ``(size, compute, loss)`` (one row per evaluated point).

    Each size's points form a loss–compute curve (its runs or checkpoints); at every budget its loss is
    that curve interpolated in log–log (no extrapolation: a size that never reached a budget, or started
    above it, does not compete there). ``budgets`` default: every distinct compute value of the points.
    """
    s = _as_positive("size", size)
    c, y = _as_positive("compute", compute), _as_positive("loss", loss)
    if not s.size == c.size == y.size:
        raise ValueError(f"size, compute and loss differ in length ({s.size}, {c.size}, {y.size})")
    grid = np.unique(c) if budgets is None else np.sort(_as_positive("budgets", budgets))
    sizes = np.unique(s)
    table = np.full((grid.size, sizes.size), np.nan)
    for j, n in enumerate(sizes):
        sel = s == n
        cs, ls = c[sel], y[sel]
        # several points at one compute (seeds): their mean
        uc = np.unique(cs)
        ul = np.array([ls[cs == v].mean() for v in uc])
        table[:, j] = loglog_interpolate(uc, ul, grid)
    has = np.isfinite(table).any(1)
    best_idx = np.where(has, np.nanargmin(np.where(np.isfinite(table), table, np.inf), axis=1), 0)
    best_size = np.where(has, sizes[best_idx], np.nan)
    best_loss = np.where(has, table[np.arange(grid.size), best_idx], np.nan)
    return Frontier(budgets=grid, sizes=sizes, losses=table, best_size=best_size, best_loss=best_loss)


# --------------------------------------------------------------------------------------------------
# Families at equal compute
# --------------------------------------------------------------------------------------------------
def compare_families(curves: Mapping[str, tuple[np.ndarray, np.ndarray] | PowerLawFit], budgets) -> pd.DataFrame:
    """Every family's loss at every budget, the winner and by what factor.

    ``curves``: family → either ``(compute, loss)`` points of its frontier (interpolated in log–log, NaN
    outside its range) or a :class:`PowerLawFit` (evaluated anywhere: extrapolation, so say so). Columns:
    ``budget``, ``loss/<family>`` …, ``winner`` (lowest loss; missing — NaN in the frame — where fewer than
    two families have a loss), ``ratio`` = runner-up loss / winner loss (≥ 1), ``runner_up``.
    """
    grid = _as_positive("budgets", budgets)
    cols: dict[str, np.ndarray] = {}
    for name, curve in curves.items():
        if isinstance(curve, PowerLawFit):
            cols[name] = np.asarray(curve.predict(grid), dtype=float)
        else:
            cc, ll = curve
            cols[name] = loglog_interpolate(cc, ll, grid)
    names = list(cols)
    mat = np.stack([cols[n] for n in names], axis=1) if names else np.zeros((grid.size, 0))
    rows = []
    for i, budget in enumerate(grid):
        vals = mat[i]
        ok = np.isfinite(vals)
        row: dict[str, object] = {"budget": float(budget)}
        row.update({f"loss/{n}": float(v) for n, v in zip(names, vals)})
        if ok.sum() >= 2:
            order = np.argsort(np.where(ok, vals, np.inf))
            row.update(winner=names[order[0]], runner_up=names[order[1]], ratio=float(vals[order[1]] / vals[order[0]]))
        else:
            row.update(winner=None, runner_up=None, ratio=float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def break_even_slowdown(pct, gamma) -> np.ndarray:
    """s* = (1 − pct)^(−1/γ): the per-step slowdown at which an equivariant model whose loss at equal steps is
    (1 − pct)·L ties, at equal compute, with an augmented model whose loss falls as L ∝ C^(−γ)
    (paper digest §6.4; e.g. pct 2 %, γ 0.1 → 1.22; γ 0.3 → 1.07). Vectorised; pct ∈ [0, 1), γ > 0."""
    p, g = np.asarray(pct, dtype=float), np.asarray(gamma, dtype=float)
    if np.any((p < 0) | (p >= 1)) or np.any(g <= 0):
        raise ValueError(f"break_even_slowdown needs 0 <= pct < 1 and gamma > 0 (got pct={pct}, gamma={gamma})")
    return (1 - p) ** (-1 / g)


def break_even_slowdown_with_floor(pct, fit: PowerLawFit, compute) -> np.ndarray:
    """s* with an irreducible loss: solves (1 − pct)·L(C/s) = L(C) for L = L∞ + A·C^(−γ):

    ``s*^γ = (a + pct·L∞) / ((1 − pct)·a)`` with ``a = A·C^(−γ)``; equals :func:`break_even_slowdown` at
    L∞ = 0 and grows with C as the reducible part a shrinks (near the floor even a large slowdown ties).
    """
    p = np.asarray(pct, dtype=float)
    if np.any((p < 0) | (p >= 1)):
        raise ValueError(f"pct must lie in [0, 1), got {pct}")
    a = fit.a * np.asarray(compute, dtype=float) ** (-fit.gamma)
    return ((a + p * fit.l_inf) / ((1 - p) * a)) ** (1 / fit.gamma)


def measured_slowdown(size_ref, cost_ref, size_other, cost_other) -> pd.DataFrame:
    """Per-step cost of ``other`` over ``ref`` at matched size (seconds or FLOPs per step).

    ``ref``'s cost is interpolated in log–log at each of ``other``'s sizes (NaN outside ``ref``'s size
    range). Columns ``size``, ``cost_ref``, ``cost_other``, ``slowdown``.
    """
    so, co = _as_positive("size_other", size_other), _as_positive("cost_other", cost_other)
    ref = loglog_interpolate(size_ref, cost_ref, so)
    return pd.DataFrame({"size": so, "cost_ref": ref, "cost_other": co, "slowdown": co / ref})
