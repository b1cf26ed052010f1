"""The paper's linear-head measurement: the head's deviation from its equivariant subspace against L_equiv over training.

Shen et al. (§5.4, figure ``escaip-linear_head_deviation_scatter``) plot a statistic of the EScAIP force head's
weights against the validation equivariance error across training, log–log, and report Pearson R = 0.94 and
Spearman ρ = 0.99. Here the x-axis is one of the ``head/…`` metrics the training-time evaluation logs for the run's
``equivariance.linear_head`` (default ``head/deviation`` = ‖θ_⊥‖; ``head/relative_deviation``,
``head/row_variance``, … are the alternatives, :func:`equivrepro.analysis.linear_head.deviation_norm`) and the
y-axis L_equiv of the headline term, ``equiv/[S/]T/equiv``, at the same evaluations.

:func:`deviation_correlation` fits ``log10 L_equiv = slope · log10 x + intercept`` and gives the log-space Pearson r,
the Spearman ρ, the number of points, and percentile intervals from a **moving-block bootstrap** over evaluations
(blocks of ``⌈n^{1/3}⌉`` consecutive evaluations, because successive evaluations of one run are not independent; an
i.i.d. bootstrap would give intervals that are too narrow). The α² law (L_equiv(θ_∥ + αθ_⊥) = α²·L_equiv for a linear
head, an identity) is a unit test of :func:`~equivrepro.analysis.linear_head.deviation_scaling`, not a finding.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["deviation_correlation", "block_bootstrap_indices"]


def block_bootstrap_indices(n: int, n_boot: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n)`` indices of moving-block bootstrap resamples of a series of length n (blocks of ``block``)."""
    block = max(1, min(int(block), n))
    n_blocks = math.ceil(n / block)
    starts = rng.integers(0, n - block + 1, size=(n_boot, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(n_boot, -1)
    return idx[:, :n]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return float("nan")
    return float(np.clip(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy), -1.0, 1.0))


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    vx = x.var()
    return float(((x - x.mean()) * (y - y.mean())).mean() / vx) if vx > 0 else float("nan")


def deviation_correlation(
    frame: pd.DataFrame,
    x: str,
    y: str,
    *,
    step_col: str = "step",
    n_boot: int = 2000,
    block: int | None = None,
    level: float = 0.95,
    seed: int = 0,
    min_step: float | None = None,
) -> dict:
    """Log–log fit and correlations of column ``y`` (L_equiv) against column ``x`` (a head deviation) of ``frame``
    (one row per evaluation; ``step_col`` a column or the index). Rows with a non-finite or non-positive value, or
    before ``min_step``, are dropped (counted). Returns the numbers and ``table`` (step, x, y of the points used)."""
    df = frame.reset_index() if step_col not in frame.columns and frame.index.name == step_col else frame
    for col in (step_col, x, y):
        if col not in df.columns:
            raise KeyError(f"metrics have no column {col!r}; columns: {sorted(map(str, df.columns))[:12]} …")
    sub = df[[step_col, x, y]].astype(float).sort_values(step_col, kind="stable")
    if min_step is not None:
        sub = sub[sub[step_col] >= min_step]
    ok = np.isfinite(sub[x]) & np.isfinite(sub[y]) & (sub[x] > 0) & (sub[y] > 0)
    used = sub[ok].reset_index(drop=True)
    n = len(used)
    if n < 3:
        raise ValueError(f"need ≥ 3 evaluations with positive {x} and {y}, got {n} ({int((~ok).sum())} dropped)")
    lx, ly = np.log10(used[x].to_numpy()), np.log10(used[y].to_numpy())
    slope = _slope(lx, ly)
    intercept = float(ly.mean() - slope * lx.mean())
    resid = ly - (slope * lx + intercept)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    pr, sr = stats.pearsonr(lx, ly), stats.spearmanr(lx, ly)
    block = int(block or max(1, math.ceil(n ** (1 / 3))))
    rng = np.random.default_rng(seed)
    idx = block_bootstrap_indices(n, int(n_boot), block, rng)
    rx, ry = stats.rankdata(lx), stats.rankdata(ly)
    boot = {"pearson_r": [], "spearman_rho": [], "slope": []}
    for row in idx:
        boot["pearson_r"].append(_pearson(lx[row], ly[row]))
        boot["spearman_rho"].append(_pearson(stats.rankdata(rx[row]), stats.rankdata(ry[row])))
        boot["slope"].append(_slope(lx[row], ly[row]))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    ci = {k: [float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))] for k, v in boot.items()}
    return {
        "x": x,
        "y": y,
        "n": n,
        "n_dropped": int((~ok).sum()),
        "slope": slope,
        "intercept": intercept,
        "r2": 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
        "pearson_r": float(pr.statistic),
        "pearson_p": float(pr.pvalue),
        "spearman_rho": float(sr.statistic),
        "spearman_p": float(sr.pvalue),
        "bootstrap": {
            "method": "moving-block",
            "block": block,
            "n_boot": int(n_boot),
            "level": level,
            **{f"{k}_ci": v for k, v in ci.items()},
        },
        "x_range": [float(used[x].min()), float(used[x].max())],
        "y_range": [float(used[y].min()), float(used[y].max())],
        "table": used.rename(columns={step_col: "step", x: "deviation", y: "l_equiv"}),
    }
