"""The spectrum figures draw from the keys the callback logs, write the numbers they drew, and name the setting that
is missing when a run did not log them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from equivrepro import catalog
from equivrepro.metrics import keys
from equivrepro.plots import spectrum as S
from equivrepro.results import TABLE_COLUMNS

STEPS = (0, 10, 100, 1000)
L_MAX = 4
ANGLES = (15, 90, 180)


def _base(task: str, term: str, run_id: str, seed: int) -> dict:
    return {
        "task": task,
        "run_id": run_id,
        "run_dir": f"/runs/{run_id}",
        "name": task,
        "status": "finished",
        "status_step": STEPS[-1],
        "seed": seed,
        "model": "Net",
        "model_target": "x.Net",
        "n_params": 1000,
        "model_label": "Net 1k",
        "data_target": "x.Data",
        "train_size": math.nan,
        "optim": "AdamW",
        "lr": 1e-3,
        "optim_label": "AdamW 1e-3",
        "schedule": "constant",
        "augment": True,
        "batch_size": 8,
        "max_steps": STEPS[-1],
        "primary_term": term,
    }


def _run(task: str, term: str, run_id: str, seed: int, suffixes=("",), spectrum=True, angle=True, attribution=True) -> list[dict]:
    rng = np.random.default_rng(seed + 7)
    base = _base(task, term, run_id, seed)
    rows = []

    def add(step, metric, value):
        rows.append({**base, "step": step, "metric": metric, "value": float(value)})

    for s in suffixes:
        for step in STEPS:
            total, pct = 2.0 / (1 + step), 0.05 * (1 + rng.random())
            equiv = pct * total
            add(step, keys.key(keys.EQUIV, term, "pct", s), pct)
            add(step, keys.key(keys.EQUIV, term, "equiv", s), equiv)
            if spectrum:
                parts = rng.dirichlet(np.ones(L_MAX + 1)) * equiv  # E_1..E_L and the remainder
                parts[0] = -0.02 * equiv  # a small negative estimate (noise) at l = 1
                parts[-1] = equiv - parts[:-1].sum()
                for deg in range(1, L_MAX + 1):
                    add(step, keys.degree_key(term, deg, s), parts[deg - 1])
                    add(step, keys.degree_key(term, deg, s) + "_se", 0.1 * abs(parts[deg - 1]))
                    add(step, keys.key(keys.SPECTRUM, term, f"share_l={deg}", s), parts[deg - 1] / total)
                add(step, keys.key(keys.SPECTRUM, term, "remainder", s), parts[-1])
                add(step, keys.key(keys.SPECTRUM, term, "remainder_se", s), 0.1 * abs(parts[-1]))
                add(step, keys.key(keys.SPECTRUM, term, "share_remainder", s), parts[-1] / total)
            if attribution:
                shares = rng.dirichlet(np.ones(3))
                for (lab, n), sh in zip((("H", 40), ("C", 25), ("O", 5)), shares):
                    add(step, keys.attribution_key(term, "element", lab, s), sh)
                    add(step, keys.attribution_key(term, "element", lab, s, "se"), 0.01)
                    add(step, keys.attribution_key(term, "element", lab, s, "per_entity"), sh * equiv / n)
                    add(step, keys.attribution_key(term, "element", lab, s, "count"), n)
                for lab, sh in zip(("0-1", "1-2", "2+"), rng.dirichlet(np.ones(3))):
                    add(step, keys.attribution_key(term, "centroid_distance_A", lab, s), sh)
                    add(step, keys.attribution_key(term, "centroid_distance_A", lab, s, "count"), 10)
        if angle:
            for a in ANGLES:
                for kind in ("measured", "predicted"):
                    add(STEPS[-1], keys.angle_key(term, kind, a, s), a / 180 * (1.0 + 0.1 * (kind == "measured")))
                    add(STEPS[-1], keys.angle_key(term, kind, a, s, "se"), 0.01)
                add(STEPS[-1], keys.angle_key(term, "predicted", a, s, "upper"), a / 180 * 1.5)
    return rows


def _table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)


@pytest.fixture(scope="module")
def forcefield():
    return _table(_run("forcefield", "forces", "ff-0", 0) + _run("forcefield", "forces", "ff-1", 1))


@pytest.fixture(scope="module")
def flow():
    return _table(_run("flowmatching", "velocity", "fm-0", 0, suffixes=("t=0.2", "t=0.9"), attribution=False))


def _value(table: pd.DataFrame, metric: str, step: int) -> float:
    """Mean over runs of ``metric`` at ``step``."""
    rows = table[(table["metric"] == metric) & (table["step"] == step)]
    assert len(rows), metric
    return float(rows["value"].mean())


def _files_ok(stem, data: pd.DataFrame) -> pd.DataFrame:
    for ext in (".png", ".pdf"):
        assert stem.with_name(stem.name + ext).stat().st_size > 5000
    csv = pd.read_csv(stem.with_name(stem.name + ".csv"), keep_default_na=True)
    assert list(csv.columns) == list(data.columns) and len(csv) == len(data)
    np.testing.assert_allclose(csv["value"].to_numpy(float), data["value"].to_numpy(float), rtol=1e-12)
    return csv


def test_degree_shares_stack_the_logged_shares(forcefield, tmp_path):
    stem = tmp_path / "shares"
    data = S.degree_shares(forcefield, stem)
    csv = _files_ok(stem, data)
    for step in (0, 1000):
        got = csv[(csv["series"] == "l=2") & (csv["step"] == step)]["value"].item()
        assert math.isclose(got, 100 * _value(forcefield, "spectrum/forces/share_l=2", step), rel_tol=1e-12)
        mean = csv[(csv["series"] == "mean") & (csv["step"] == step)]["value"].item()
        assert math.isclose(mean, 100 * (1 - _value(forcefield, "equiv/forces/pct", step)), rel_tol=1e-12)
    assert set(csv["series"]) == {"l=1", "l=2", "l=3", "l=4", "remainder", "mean"}
    assert (csv[csv["series"] == "l=1"]["value"] < 0).all()  # negative estimates are kept in the numbers
    assert set(csv["n_runs"]) == {2}


def test_degree_shares_has_a_panel_per_flow_time(flow, tmp_path):
    data = S.degree_shares(flow, tmp_path / "fm", smoothing=0.001)
    assert list(pd.unique(data["panel"])) == ["t = 0.2", "t = 0.9"]
    one = S.degree_shares(flow, tmp_path / "fm1", suffixes="t=0.9")
    assert set(one["panel"]) == {"t = 0.9"}
    with pytest.raises(ValueError, match="not in the table"):
        S.degree_shares(flow, tmp_path / "x", suffixes="t=0.5")


def test_final_spectrum_is_the_last_evaluation_over_l_equiv(forcefield, tmp_path):
    stem = tmp_path / "spec"
    data = S.final_spectrum(forcefield, stem)
    csv = _files_ok(stem, data)
    assert list(csv["series"]) == ["l=1", "l=2", "l=3", "l=4", "remainder"]
    assert set(csv["step"]) == {1000}
    ratios, ses = [], []
    for run in ("ff-0", "ff-1"):
        sub = forcefield[forcefield["run_id"] == run]
        eq = sum(_value(sub, keys.degree_key("forces", d), 1000) for d in range(1, L_MAX + 1))
        eq += _value(sub, "spectrum/forces/remainder", 1000)
        ratios.append(100 * _value(sub, "spectrum/forces/l=3", 1000) / eq)
        ses.append(100 * _value(sub, "spectrum/forces/l=3_se", 1000) / eq)
    row = csv[csv["series"] == "l=3"].iloc[0]
    assert math.isclose(row["value"], np.mean(ratios), rel_tol=1e-12)
    assert math.isclose(row["hi"] - row["value"], math.sqrt(sum(s * s for s in ses)) / 2, rel_tol=1e-9)
    assert math.isclose(float(csv["value"].sum()), 100.0, rel_tol=1e-9)  # the degrees and the remainder make up L_equiv


def test_final_spectrum_and_angle_curve_have_a_panel_per_flow_time(flow, tmp_path):
    for draw in (S.final_spectrum, S.angle_curve):
        assert list(pd.unique(draw(flow, tmp_path / draw.__name__)["panel"])) == ["t = 0.2", "t = 0.9"]


def test_angle_curve_shows_measured_and_predicted_at_the_end(forcefield, tmp_path):
    stem = tmp_path / "angle"
    data = S.angle_curve(forcefield, stem)
    csv = _files_ok(stem, data)
    assert set(csv["series"]) == {"measured", "predicted", "predicted_upper"} and set(csv["step"]) == {1000}
    m90 = csv[(csv["series"] == "measured") & (csv["metric"] == "angle/forces/measured_deg=90")].iloc[0]
    assert math.isclose(m90["value"], 0.5 * 1.1, rel_tol=1e-12)
    assert math.isclose(m90["hi"] - m90["value"], math.sqrt(2 * 0.01**2) / 2, rel_tol=1e-9)
    upper = csv[csv["series"] == "predicted_upper"]
    assert len(upper) == len(ANGLES) and upper["lo"].isna().all()


def test_attribution_draws_shares_and_per_entity_means(forcefield, tmp_path):
    stem = tmp_path / "att"
    data = S.attribution(forcefield, stem)
    csv = _files_ok(stem, data)
    shares = csv[csv["series"] == "share"]
    elem = shares[shares["metric"].str.contains("element=")]
    assert list(elem["metric"]) == [keys.attribution_key("forces", "element", e) for e in ("H", "C", "O")]  # by count
    assert math.isclose(float(elem["value"].sum()), 100.0, rel_tol=1e-9)
    for m, v in zip(elem["metric"], elem["value"]):
        assert math.isclose(v, 100 * _value(forcefield, m, 1000), rel_tol=1e-12)
    dist = shares[shares["metric"].str.contains("centroid_distance_A")]
    assert [keys.attribution_of(m).bin for m in dist["metric"]] == ["0-1", "1-2", "2+"]  # by value
    per = csv[csv["series"] == "per_entity"]
    h = _value(forcefield, "attribution/forces/element=H_per_entity", 1000)
    assert len(per) == 3 and math.isclose(per["value"].iloc[0], h, rel_tol=1e-12)


@pytest.mark.parametrize("draw", ["degree_shares", "final_spectrum", "angle_curve", "attribution"])
def test_a_run_without_the_spectrum_names_the_setting(draw, tmp_path):
    table = _table(_run("forcefield", "forces", "ff-0", 0, spectrum=False, angle=False, attribution=False))
    with pytest.raises(ValueError, match=r"equivariance\.spectrum_l_max"):
        getattr(S, draw)(table, tmp_path / draw)


def test_the_figures_are_standard_figures_of_every_task():
    drawn = {draw for draw, _ in catalog.STANDARD_FIGURES.values()}
    assert {"spectrum.degree_shares", "spectrum.final_spectrum", "spectrum.angle_curve", "spectrum.attribution"} <= drawn
    for draw in drawn:
        assert callable(catalog.drawing_function(draw))
    figs = catalog.figures()
    for task, card in catalog.cards().items():
        wanted = {f"{task}-spectrum-shares", f"{task}-spectrum", f"{task}-angle", f"{task}-attribution"}
        skipped = {f"{task}-{s}" for s in card.without_figures}
        assert wanted - skipped <= set(figs) and not skipped & set(figs), task
