"""Gradient-norm ratio vs pct: log-space correlations, the variable-span EMA, the tidy-table pivot, the figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from equivrepro.analysis import ema_trajectory, ratio_correlation, wide_from_results
from equivrepro.plots.analysis import gradient_ratio_scatter


def _synthetic(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    steps = np.sort(rng.choice(np.arange(1, 50_000), size=n, replace=False))
    ratio = 0.3 * np.exp(-steps / 8000.0) + 1e-3 * rng.random(n)  # not monotone in step
    pct = ratio**1.5 / (1 + 5 * ratio)  # a known strictly increasing function of the ratio
    return pd.DataFrame({"step": steps, "pct": pct, "grad_norm_ratio": ratio})


def test_monotone_relation_gives_spearman_one():
    df = _synthetic()
    c = ratio_correlation(df)
    assert c["spearman_rho"] == pytest.approx(1.0, abs=1e-12)
    assert 0.95 < c["pearson_r"] < 1.0 and c["n"] == 200 and c["n_dropped"] == 0
    # anti-monotone → −1; unrelated → near 0
    anti = df.assign(pct=1.0 / df["pct"])
    assert ratio_correlation(anti)["spearman_rho"] == pytest.approx(-1.0, abs=1e-12)
    rng = np.random.default_rng(1)
    noise = df.assign(pct=rng.lognormal(size=len(df)))
    assert abs(ratio_correlation(noise)["spearman_rho"]) < 0.2


def test_pearson_is_computed_on_log_values_and_bad_rows_are_counted():
    df = pd.DataFrame({"s": np.arange(1, 11), "p": 10.0 ** np.arange(10), "r": 10.0 ** (2 * np.arange(10))})
    df.loc[3, "p"] = 0.0
    df.loc[5, "r"] = np.nan
    c = ratio_correlation(df, step_col="s", pct_col="p", ratio_col="r")
    assert c["pearson_r"] == pytest.approx(1.0, abs=1e-12)  # linear in log space (not in linear space)
    assert c["n"] == 8 and c["n_dropped"] == 2
    with pytest.raises(KeyError, match="no column 'step'"):
        ratio_correlation(df)


def test_ema_uses_span_max_one_step_over_100():
    df = _synthetic()
    traj = ema_trajectory(df)
    early = traj["step"] <= 100  # span 1 → α = 1: no smoothing
    assert np.allclose(traj.loc[early, "ratio_ema"], traj.loc[early, "grad_norm_ratio"])
    const = df.assign(pct=0.02)
    assert np.allclose(ema_trajectory(const)["pct_ema"], 0.02)
    # late points are smoothed: the EMA is less rough than the raw series
    late = traj[traj["step"] > 20_000]
    assert np.abs(np.diff(np.log(late["ratio_ema"]))).mean() < np.abs(np.diff(np.log(late["grad_norm_ratio"]))).mean()
    # EMA step by step, in log space, with α = 2/(max(1, step/100) + 1)
    x = np.log10(traj["grad_norm_ratio"].to_numpy())
    y = x[0]
    for s, v in zip(traj["step"].to_numpy()[1:], x[1:]):
        a = 2.0 / (max(1.0, s / 100.0) + 1.0)
        y = a * v + (1 - a) * y
    assert np.log10(traj["ratio_ema"].iloc[-1]) == pytest.approx(y, rel=1e-12)


def test_wide_from_tidy_results_and_figure(tmp_path):
    df = _synthetic(50)
    tidy = pd.concat(
        [
            pd.DataFrame({"run_id": "r1", "step": df["step"], "metric": "equiv/forces/pct", "value": df["pct"]}),
            pd.DataFrame({"run_id": "r1", "step": df["step"], "metric": "equiv/forces/grad_norm_ratio", "value": df["grad_norm_ratio"]}),
            pd.DataFrame({"run_id": "r1", "step": df["step"], "metric": "train/loss", "value": 1.0}),
        ]
    )
    wide = wide_from_results(tidy, pct_metric="equiv/forces/pct", ratio_metric="equiv/forces/grad_norm_ratio")
    assert list(wide.columns) == ["step", "pct", "grad_norm_ratio"] and len(wide) == 50
    assert np.allclose(wide["pct"], df.sort_values("step")["pct"])
    two = pd.concat([tidy, tidy.assign(run_id="r2")])
    with pytest.raises(ValueError, match="2 runs; pass run_id="):
        wide_from_results(two, pct_metric="equiv/forces/pct", ratio_metric="equiv/forces/grad_norm_ratio")
    corr = gradient_ratio_scatter(wide, tmp_path / "ratio")
    assert corr["spearman_rho"] == pytest.approx(1.0) and (tmp_path / "ratio.png").exists() and (tmp_path / "ratio.pdf").exists()
    assert len(pd.read_csv(tmp_path / "ratio.csv")) == 50
