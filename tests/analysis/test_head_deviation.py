"""The head deviation vs L_equiv correlation over training, from a synthetic metrics file with a known power law."""

from __future__ import annotations

import numpy as np
import pytest

from equivrepro.analysis.head_deviation import block_bootstrap_indices, deviation_correlation
from equivrepro.metrics import keys
from equivrepro.runs import RunDir
from equivrepro.train.loggers import ResultsFile

DEV = keys.scalar_key(keys.HEAD, "deviation")
EQ = keys.key(keys.EQUIV, "forces", "equiv")


def _write_run(tmp_path, exponent: float | None, n: int = 40, noise: float = 0.05, seed: int = 0) -> RunDir:
    """A run directory whose metrics.csv logs head/deviation d_t (decaying) and L_equiv = 3·d_t^exponent·e^{noise·ε}
    (``exponent`` None: L_equiv independent of d_t)."""
    rng = np.random.default_rng(seed)
    results = ResultsFile(tmp_path, resume_step=None)
    for i, step in enumerate(np.unique(np.geomspace(1, 5000, n).astype(int))):
        dev = 2.0 * np.exp(-i / 15) * np.exp(0.02 * rng.standard_normal())
        eq = 3.0 * dev**exponent * np.exp(noise * rng.standard_normal()) if exponent is not None else np.exp(rng.standard_normal())
        results.log(int(step), {DEV: float(dev), EQ: float(eq), "train/loss": 1.0})
    results.log(6000, {"train/loss": 0.5})  # an evaluation-free step: dropped, not a point
    results.close()
    return RunDir(tmp_path)


def test_recovers_a_known_power_law_from_a_metrics_file(tmp_path):
    rd = _write_run(tmp_path, exponent=2.5)
    res = deviation_correlation(rd.metrics_frame(), DEV, EQ, n_boot=500)
    n = len(rd.metrics_frame().dropna(subset=[EQ]))
    assert res["n"] == n and res["n"] > 30
    assert res["slope"] == pytest.approx(2.5, abs=0.1)
    lo, hi = res["bootstrap"]["slope_ci"]
    assert lo < 2.5 < hi and hi - lo < 0.5
    assert res["pearson_r"] > 0.99 and res["spearman_rho"] > 0.95
    assert res["bootstrap"]["pearson_r_ci"][0] > 0.95
    assert list(res["table"].columns) == ["step", "deviation", "l_equiv"] and len(res["table"]) == res["n"]


def test_no_relation_gives_an_interval_around_zero(tmp_path):
    rd = _write_run(tmp_path, exponent=None, seed=3)
    res = deviation_correlation(rd.metrics_frame(), DEV, EQ, n_boot=500)
    lo, hi = res["bootstrap"]["pearson_r_ci"]
    assert lo < 0 < hi and abs(res["spearman_rho"]) < 0.5


def test_non_positive_points_are_dropped_and_too_few_points_fail(tmp_path):
    results = ResultsFile(tmp_path, resume_step=None)
    for step, (d, e) in enumerate([(1.0, 1.0), (0.5, 0.3), (0.25, -0.1), (0.0, 0.2), (0.1, 0.01)]):
        results.log(step, {DEV: d, EQ: e})
    results.close()
    res = deviation_correlation(RunDir(tmp_path).metrics_frame(), DEV, EQ, n_boot=50)
    assert res["n"] == 3 and res["n_dropped"] == 2
    with pytest.raises(ValueError, match="≥ 3"):
        deviation_correlation(RunDir(tmp_path).metrics_frame(), DEV, EQ, min_step=2)
    with pytest.raises(KeyError, match="head/other"):
        deviation_correlation(RunDir(tmp_path).metrics_frame(), "head/other", EQ)


def test_block_bootstrap_resamples_contiguous_blocks():
    idx = block_bootstrap_indices(10, 200, 3, np.random.default_rng(0))
    assert idx.shape == (200, 10) and idx.min() >= 0 and idx.max() <= 9
    # within each block of 3 the indices are consecutive
    blocks = idx[:, :9].reshape(200, 3, 3)
    assert np.all(np.diff(blocks, axis=2) == 1)
