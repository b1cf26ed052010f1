"""Does ‖∇L_equiv‖ / ‖∇L_mean‖ track pct over training? (paper §5.4, §6.2)

Near an equivariant solution L_equiv ≈ δᵀ H_eq δ, so ‖∇L_equiv‖ ≈ 2‖H_eq δ‖ ∝ √L_equiv, and the ratio
of gradient norms follows the relative equivariance error. The harness logs
``equiv/[S/]T/grad_norm_ratio`` next to ``equiv/[S/]T/pct`` (:func:`equivrepro.metrics.gradient_norms`);
this module correlates the two over training:

* :func:`ratio_correlation` — Pearson and Spearman correlations of log10(ratio) and log10(pct) (scipy),
  on rows where both are finite and > 0 (the others are counted in ``n_dropped``). Spearman does not
  depend on the log.
* :func:`ema_trajectory` — a variable-span EMA of both series in log space, span = max(1, step/100)
  evaluations (the paper's EScAIP smoothing; use ``span_fraction=1/1000`` for Proteina), via
  :func:`equivrepro.plots.figures.ema_smooth`.
* :func:`wide_from_results` — the two metrics of one run from the tidy results table
  (:mod:`equivrepro.results`) as a ``step, pct, grad_norm_ratio`` frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from equivrepro.plots.figures import ema_smooth

__all__ = ["ratio_correlation", "ema_trajectory", "wide_from_results"]


def _clean(df: pd.DataFrame, step_col: str, pct_col: str, ratio_col: str) -> tuple[pd.DataFrame, int]:
    for col in (step_col, pct_col, ratio_col):
        if col not in df.columns:
            raise KeyError(f"results table has no column {col!r}; columns: {list(df.columns)}")
    sub = df[[step_col, pct_col, ratio_col]].astype(float).sort_values(step_col, kind="stable")
    ok = np.isfinite(sub[pct_col]) & np.isfinite(sub[ratio_col]) & (sub[pct_col] > 0) & (sub[ratio_col] > 0)
    return sub[ok].reset_index(drop=True), int((~ok).sum())


def ratio_correlation(
    df: pd.DataFrame,
    *,
    step_col: str = "step",
    pct_col: str = "pct",
    ratio_col: str = "grad_norm_ratio",
    min_step: float | None = None,
) -> dict[str, float]:
    """``{'pearson_r', 'pearson_p', 'spearman_rho', 'spearman_p', 'n', 'n_dropped'}`` in log space.

    ``min_step`` drops evaluations before that step (e.g. the step-0 point).
    """
    sub, dropped = _clean(df, step_col, pct_col, ratio_col)
    if min_step is not None:
        sub = sub[sub[step_col] >= min_step]
    if len(sub) < 3:
        raise ValueError(f"need ≥ 3 evaluations with positive {pct_col} and {ratio_col}, got {len(sub)} ({dropped} dropped)")
    lx, ly = np.log10(sub[ratio_col].to_numpy()), np.log10(sub[pct_col].to_numpy())
    pr = stats.pearsonr(lx, ly)
    sr = stats.spearmanr(lx, ly)
    return {
        "pearson_r": float(pr.statistic),
        "pearson_p": float(pr.pvalue),
        "spearman_rho": float(sr.statistic),
        "spearman_p": float(sr.pvalue),
        "n": int(len(sub)),
        "n_dropped": dropped,
    }


def ema_trajectory(
    df: pd.DataFrame,
    *,
    step_col: str = "step",
    pct_col: str = "pct",
    ratio_col: str = "grad_norm_ratio",
    span_fraction: float = 0.01,
) -> pd.DataFrame:
    """``step, grad_norm_ratio, pct, ratio_ema, pct_ema``: geometric (log-space) variable-span EMAs."""
    sub, _ = _clean(df, step_col, pct_col, ratio_col)
    steps = sub[step_col].to_numpy()
    out = pd.DataFrame({"step": steps, "grad_norm_ratio": sub[ratio_col].to_numpy(), "pct": sub[pct_col].to_numpy()})
    out["ratio_ema"] = 10 ** ema_smooth(steps, np.log10(out["grad_norm_ratio"].to_numpy()), span_fraction)
    out["pct_ema"] = 10 ** ema_smooth(steps, np.log10(out["pct"].to_numpy()), span_fraction)
    return out


def wide_from_results(
    table: pd.DataFrame,
    *,
    pct_metric: str,
    ratio_metric: str,
    run_id: str | None = None,
) -> pd.DataFrame:
    """Rows of one run of the tidy results table → ``step, pct, grad_norm_ratio`` (inner join on step).

    Metric names as logged, e.g. ``'equiv/forces/pct'`` and ``'equiv/forces/grad_norm_ratio'``.
    """
    need = {"step", "metric", "value"}
    if not need <= set(table.columns):
        raise KeyError(f"results table needs columns {sorted(need)}; has {list(table.columns)}")
    if run_id is not None:
        table = table[table["run_id"] == run_id]
    elif "run_id" in table.columns and table["run_id"].nunique() > 1:
        raise ValueError(f"table holds {table['run_id'].nunique()} runs; pass run_id=")
    parts = []
    for metric, col in ((pct_metric, "pct"), (ratio_metric, "grad_norm_ratio")):
        rows = table[table["metric"] == metric]
        if rows.empty:
            raise KeyError(f"metric {metric!r} not in the results table")
        parts.append(rows.groupby("step", as_index=False)["value"].mean().rename(columns={"value": col}))
    return parts[0].merge(parts[1], on="step", how="inner").sort_values("step").reset_index(drop=True)
