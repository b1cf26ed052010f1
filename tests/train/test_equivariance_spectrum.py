"""The equivariance callback with the spectrum on: spectrum and attribution at every evaluation, the angle curve at the
run's last evaluation only, nothing of the three with it off."""

from __future__ import annotations

import math
from pathlib import Path

from equivrepro.metrics import keys
from equivrepro.train.app import compose_config
from equivrepro.train.loggers import read_results
from equivrepro.train.loop import train


def _rows(tmp: Path, *extra: str):
    out = train(compose_config(["task=points", "logger=none", "trainer.progress_bar=false", f"paths.runs_dir={tmp}", *extra]))
    return read_results(Path(out["run_dir"]) / "metrics.csv")


def _steps(rows, family: str) -> list[int]:
    return sorted({s for s, m, _ in rows if keys.parse(m) is not None and keys.parse(m).family == family})


def test_a_run_with_the_spectrum_logs_degrees_attribution_and_the_final_angle_curve(tmp_path):
    rows = _rows(tmp_path, "equivariance.spectrum_l_max=2")
    evals = [0, 10, 20, 30, 40]
    assert _steps(rows, keys.EQUIV) == evals
    assert _steps(rows, keys.SPECTRUM) == evals and _steps(rows, keys.ATTRIBUTION) == evals
    assert _steps(rows, keys.ANGLE) == [40]  # the last step only
    last = {m: v for s, m, v in rows if s == 40}
    assert {keys.degree_key("mse", 1), keys.degree_key("mse", 2), "spectrum/mse/remainder", "spectrum/mse/lie"} <= set(last)
    angles = {keys.angle_of(m) for m in last if keys.angle_of(m) is not None}
    assert {a.degrees for a in angles} == {15.0, 30.0, 60.0, 90.0, 120.0, 180.0}
    assert {(a.kind, a.stat) for a in angles} == {
        ("measured", ""),
        ("measured", "se"),
        ("predicted", ""),
        ("predicted", "se"),
        ("predicted", "upper"),
    }
    assert all(keys.parse(m).term == "mse" for m in last if keys.angle_of(m) is not None)  # the primary term
    for deg in (90, 180):  # a non-equivariant MLP: a real, positive measured error
        assert last[keys.angle_key("mse", "measured", deg)] > 0
    # the attribution's shares of one step sum to 1 and its counts to every held-out point
    for step in (0, 40):
        att = [(keys.attribution_of(m), v) for s, m, v in rows if s == step and keys.attribution_of(m) is not None]
        assert math.isclose(sum(v for a, v in att if a.stat == ""), 1.0, rel_tol=1e-9)
        assert sum(v for a, v in att if a.stat == "count") == 16 * 8  # equivariance.num_samples × points per cloud


def test_without_the_spectrum_none_of_it_is_logged(tmp_path):
    rows = _rows(tmp_path, "trainer.max_steps=10")
    assert _steps(rows, keys.EQUIV) == [0, 10]
    assert not _steps(rows, keys.SPECTRUM) and not _steps(rows, keys.ATTRIBUTION) and not _steps(rows, keys.ANGLE)


def test_angle_suffixes_restrict_the_angle_curve_to_those_evaluations(tmp_path):
    import pytest

    from equivrepro.train.validate import ConfigError

    rows = _rows(tmp_path / "a", "trainer.max_steps=10", "equivariance.spectrum_l_max=2", "+equivariance.angle_suffixes=['t=0.6']")
    assert _steps(rows, keys.SPECTRUM) == [0, 10] and not _steps(rows, keys.ANGLE)  # the points task has only suffix ""
    rows = _rows(tmp_path / "b", "trainer.max_steps=10", "equivariance.spectrum_l_max=2", "+equivariance.angle_suffixes=['']")
    assert _steps(rows, keys.ANGLE) == [10]
    with pytest.raises(ConfigError, match="equivariance.angle_suffixes"):
        _rows(tmp_path / "c", "trainer.max_steps=10", "+equivariance.angle_suffixes=3")
