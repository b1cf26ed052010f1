"""Every figure function writes a non-empty PNG and PDF, and the numbers it drew are the table's numbers.

Two tables: one collected from real ``task=points`` runs (2 seeds × 2 learning rates), and a synthetic one
with the three tasks' metric names (``equiv/forces/pct``, ``equiv/t=…/velocity/pct``, ``equiv/denoise/pct``)
and their sweeps, for the task-specific figures.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from equivrepro.plots import figures as F
from equivrepro.results import TABLE_COLUMNS, collect_local, format_train_size
from equivrepro.train.app import compose_config
from equivrepro.train.loop import train

FLOW_TIMES = ["t=0.0", "t=0.2", "t=0.9", "t=0.99"]


@pytest.fixture(scope="module")
def points_table(tmp_path_factory):
    root = tmp_path_factory.mktemp("points_runs")
    for seed in (0, 1):
        for lr in ("1e-3", "1e-2"):
            train(
                compose_config(
                    [
                        "task=points",
                        f"paths.runs_dir={root}",
                        "logger=none",
                        "trainer.progress_bar=false",
                        "trainer.max_steps=8",
                        "equivariance.every=4",
                        "trainer.checkpoint_every=4",
                        f"seed={seed}",
                        f"optim.lr={lr}",
                    ]
                )
            )
    table = collect_local(root)
    assert table["run_id"].nunique() == 4
    return table


def _run(task, term, run_id, seed, suffixes, quantities=("pct", "total", "mean", "equiv"), steps=(0, 100, 200, 300), **cols):
    base = {
        "task": task,
        "run_id": run_id,
        "run_dir": f"/runs/{run_id}",
        "name": task,
        "status": "finished",
        "status_step": steps[-1],
        "seed": seed,
        "model": "Net",
        "model_target": "x.Net",
        "n_params": 1_000_000,
        "model_label": "Net 1M",
        "data_target": "x.Data",
        "train_size": math.nan,
        "optim": "AdamW",
        "lr": 1e-4,
        "optim_label": "AdamW 1e-4",
        "schedule": "constant",
        "augment": True,
        "batch_size": 8,
        "max_steps": steps[-1],
        "primary_term": term,
    }
    base.update(cols)
    rng = np.random.default_rng(abs(hash((run_id, seed))) % 2**32)
    rows = []
    for s in suffixes:
        for i, step in enumerate(steps):
            total = 10.0 / (1 + i) * (1 + 0.1 * rng.random())
            pct = 0.3 * rng.random() / (1 + i)
            vals = {"pct": pct, "total": total, "mean": total * (1 - pct), "equiv": total * pct}
            for q in quantities:
                rows.append({**base, "step": step, "metric": "/".join(p for p in ("equiv", s, term, q) if p), "value": vals[q]})
    return rows


@pytest.fixture(scope="module")
def synthetic():
    rows = []
    # force field: default (3 seeds) + model, data (500 at batch 1), optimizer and augmentation sweeps
    for seed in (0, 1, 2):
        rows += _run(
            "forcefield",
            "forces",
            f"ff-default-{seed}",
            seed,
            [""],
            n_params=6_100_000,
            model_label="EScAIP 6.1M",
            train_size=math.nan,
            batch_size=64,
            augment=True,
        )
    for label, n in (("EScAIP 4.1M", 4_100_000), ("EScAIP 998k", 998_000)):
        rows += _run("forcefield", "forces", f"ff-{label}", 0, [""], n_params=n, model_label=label, batch_size=64)
    for size, bs in ((50_000, 64), (500, 1)):
        rows += _run(
            "forcefield",
            "forces",
            f"ff-data-{size}",
            0,
            [""],
            n_params=6_100_000,
            model_label="EScAIP 6.1M",
            train_size=float(size),
            batch_size=bs,
        )
    for optim, lr in (("AdamW", 1e-5), ("AdamW", 1e-3), ("SGD", 1e-5)):
        rows += _run(
            "forcefield", "forces", f"ff-{optim}-{lr}", 0, [""], optim=optim, lr=lr, optim_label=f"{optim} {lr:.0e}", batch_size=64
        )
    rows += _run("forcefield", "forces", "ff-noaug", 0, [""], augment=False, batch_size=64)
    # flow matching: 60M (2 seeds) and 400M, and two data fractions, eight flow times in the paper (four here)
    for seed in (0, 1):
        rows += _run("flowmatching", "velocity", f"fm-60m-{seed}", seed, FLOW_TIMES, model_label="Proteina 60M", n_params=60_000_000)
    rows += _run("flowmatching", "velocity", "fm-400m", 0, FLOW_TIMES, model_label="Proteina 400M", n_params=400_000_000)
    rows += _run("flowmatching", "velocity", "fm-1pct", 0, FLOW_TIMES, model_label="Proteina 60M", n_params=60_000_000, train_size=0.01)
    # voxels
    rows += _run("voxels", "denoise", "vx-default", 0, [""], model_label="VoxUNet 111M", n_params=111_000_000)
    return pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)


def _files_ok(stem):
    png, pdf, csv = (stem.with_name(stem.name + ext) for ext in (".png", ".pdf", ".csv"))
    assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.stat().st_size > 1000 and pdf.read_bytes()[:5] == b"%PDF-"
    return pd.read_csv(csv)


def _expected(table, metric, runs=None, scale=100.0):
    sel = table[table["metric"] == metric]
    if runs is not None:
        sel = sel[sel["run_id"].isin(runs)]
    g = sel.groupby("step")["value"]
    return pd.DataFrame({"value": g.mean() * scale, "lo": g.min() * scale, "hi": g.max() * scale, "n_runs": g.size()})


def _assert_matches(data, table, metric, runs=None, scale=100.0, **where):
    d = data[data["metric"] == metric]
    for k, v in where.items():
        d = d[d[k] == v]
    exp = _expected(table, metric, runs, scale)
    got = d.set_index("step")[["value", "lo", "hi", "n_runs"]].sort_index()
    assert list(got.index) == list(exp.index)
    np.testing.assert_allclose(got[["value", "lo", "hi"]].to_numpy(float), exp[["value", "lo", "hi"]].to_numpy(float), rtol=1e-12)
    assert list(got["n_runs"]) == list(exp["n_runs"])


def test_pct_and_loss_curves_on_real_runs(points_table, tmp_path):
    one_lr = points_table[points_table["lr"] == 1e-3]
    data = F.pct_curves(one_lr, tmp_path / "pct")
    written = _files_ok(tmp_path / "pct")  # the CSV next to the figure holds the same numbers
    assert list(written.columns) == F.DATA_COLUMNS and len(written) == len(data)
    np.testing.assert_allclose(written["value"], data["value"], rtol=1e-12)
    _assert_matches(data, one_lr, "equiv/mse/pct")
    assert set(data["n_runs"]) == {2}
    losses = F.loss_decomposition(one_lr, tmp_path / "losses")
    _files_ok(tmp_path / "losses")
    for q in ("total", "mean", "equiv"):
        _assert_matches(losses, one_lr, f"equiv/mse/{q}", scale=1.0, series=q)


def test_vary_optimizer_on_real_runs_and_refusal_to_mix_sweep_points(points_table, tmp_path):
    data = F.vary_optimizer(points_table, tmp_path / "optim")
    _files_ok(tmp_path / "optim")
    assert set(data["series"]) == {"AdamW 1e-3", "AdamW 1e-2"}
    for label in ("AdamW 1e-3", "AdamW 1e-2"):
        runs = set(points_table.loc[points_table["optim_label"] == label, "run_id"])
        _assert_matches(data, points_table, "equiv/mse/pct", runs=runs, series=label)
    with pytest.raises(ValueError, match="differ in lr"):
        F.pct_curves(points_table, tmp_path / "mixed")
    # each series is labelled with its runs' final L_total / L_null, read from the table
    rel = F._final_value(points_table, "equiv/mse/total_rel_null", "optim_label", ["AdamW 1e-3", "AdamW 1e-2"])
    for label, value in rel.items():
        g = points_table[(points_table["optim_label"] == label) & (points_table["metric"] == "equiv/mse/total_rel_null")]
        assert value == pytest.approx(g.sort_values("step").groupby("run_id")["value"].last().mean())
        assert 0 < value < 10


def test_smoothing_is_the_variable_span_ema_of_each_run(points_table, tmp_path):
    one_lr = points_table[points_table["lr"] == 1e-2]
    data = F.pct_curves(one_lr, tmp_path / "smooth", smoothing=0.5)
    per_run = []
    for _, g in one_lr[one_lr["metric"] == "equiv/mse/pct"].groupby("run_id", observed=True):
        g = g.sort_values("step")
        per_run.append(F.ema_smooth(g["step"].to_numpy(float), g["value"].to_numpy(float), 0.5) * 100)
    np.testing.assert_allclose(data.sort_values("step")["value"], np.mean(per_run, axis=0), rtol=1e-12)


def test_ema_smooth_by_hand():
    # spans max(1, 0.5·step) → α = 2/(span+1): step 0 → 1, step 2 → 1, step 4 → 2/3, step 6 → 1/2
    y = F.ema_smooth([0, 2, 4, 6], [1.0, 3.0, float("nan"), 5.0], 0.5)
    np.testing.assert_allclose(y, [1.0, 3.0, 3.0, 4.0])
    y = F.ema_smooth([0, 2, 4], [1.0, 3.0, 6.0], 0.5)
    np.testing.assert_allclose(y, [1.0, 3.0, 2 / 3 * 6 + 1 / 3 * 3])


def test_force_field_sweep_figures(synthetic, tmp_path):
    ff = synthetic[synthetic["task"] == "forcefield"]
    default = ff[ff["run_id"].str.startswith("ff-default")]
    _assert_matches(F.pct_curves(default, tmp_path / "ff_pct"), default, "equiv/forces/pct")
    _files_ok(tmp_path / "ff_pct")

    model_runs = ff[ff["run_id"].str.startswith("ff-default") | ff["run_id"].str.startswith("ff-EScAIP")]
    data = F.vary_model_size(model_runs, tmp_path / "ff_model")
    _files_ok(tmp_path / "ff_model")
    assert list(dict.fromkeys(data["series"])) == ["EScAIP 6.1M", "EScAIP 4.1M", "EScAIP 998k"]  # legend order: largest first
    _assert_matches(data, model_runs, "equiv/forces/pct", runs={"ff-EScAIP 4.1M"}, series="EScAIP 4.1M")
    _assert_matches(data, model_runs, "equiv/forces/pct", runs={f"ff-default-{s}" for s in range(3)}, series="EScAIP 6.1M")

    data_runs = ff[ff["run_id"].str.startswith("ff-default") | ff["run_id"].str.startswith("ff-data")]
    data = F.vary_data_size(data_runs, tmp_path / "ff_data")
    _files_ok(tmp_path / "ff_data")
    _assert_matches(data, data_runs, "equiv/forces/pct", runs={"ff-data-500"}, series=500.0)
    losses = F.loss_decomposition(data_runs, tmp_path / "ff_losses_data", panel_by="train_size", label=format_train_size)
    _files_ok(tmp_path / "ff_losses_data")
    assert set(losses["panel"]) == {"all", "50k", "500"}
    _assert_matches(losses, data_runs, "equiv/forces/equiv", runs={"ff-data-500"}, scale=1.0, panel="500", series="equiv")

    optim_runs = ff[ff["run_id"].str.startswith("ff-AdamW") | ff["run_id"].str.startswith("ff-SGD")]
    data = F.vary_optimizer(optim_runs, tmp_path / "ff_optim")
    _files_ok(tmp_path / "ff_optim")
    assert list(dict.fromkeys(data["series"])) == ["AdamW 1e-05", "AdamW 1e-03", "SGD 1e-05"]
    _assert_matches(data, optim_runs, "equiv/forces/pct", runs={"ff-SGD-1e-05"}, series="SGD 1e-05")

    aug_runs = ff[ff["run_id"].isin(["ff-noaug", "ff-default-0"])]
    data = F.vary_augmentation(aug_runs, tmp_path / "ff_aug")
    _files_ok(tmp_path / "ff_aug")
    _assert_matches(data, aug_runs, "equiv/forces/pct", runs={"ff-noaug"}, series=False)


def test_flow_matching_figures_have_one_line_per_flow_time(synthetic, tmp_path):
    fm = synthetic[synthetic["task"] == "flowmatching"]
    default = fm[fm["run_id"].str.startswith("fm-60m")]
    data = F.pct_curves(default, tmp_path / "fm_pct")
    _files_ok(tmp_path / "fm_pct")
    assert list(dict.fromkeys(data["series"])) == FLOW_TIMES
    for t in FLOW_TIMES:
        _assert_matches(data, default, f"equiv/{t}/velocity/pct", series=t)
    losses = F.loss_decomposition(default, tmp_path / "fm_losses")
    _files_ok(tmp_path / "fm_losses")
    assert sorted(set(losses["panel"])) == sorted(t.replace("=", " = ") for t in FLOW_TIMES)

    sizes = fm[fm["train_size"].isna()]
    data = F.vary_model_size(sizes, tmp_path / "fm_model")
    _files_ok(tmp_path / "fm_model")
    assert set(data["panel"]) == {"Proteina 60M", "Proteina 400M"}
    _assert_matches(data, sizes, "equiv/t=0.9/velocity/pct", runs={"fm-400m"}, panel="Proteina 400M", series="t=0.9")

    data_runs = fm[fm["model_label"] == "Proteina 60M"]
    data = F.vary_data_size(data_runs, tmp_path / "fm_data")
    _files_ok(tmp_path / "fm_data")
    assert set(data["panel"]) == {"all", "1%"}

    bars = F.final_pct_bars(sizes, tmp_path / "fm_bars")
    _files_ok(tmp_path / "fm_bars")
    last = sizes[(sizes["step"] == 300) & sizes["metric"].str.endswith("/pct")]
    for (label, metric), g in last.groupby(["model_label", "metric"]):
        row = bars[(bars["series"] == label) & (bars["metric"] == metric)].iloc[0]
        assert row["value"] == pytest.approx(100 * g["value"].mean()) and row["n_runs"] == len(g)
        assert (row["lo"], row["hi"]) == (pytest.approx(100 * g["value"].min()), pytest.approx(100 * g["value"].max()))


def test_headline_has_one_panel_per_task(synthetic, tmp_path):
    default = synthetic[
        synthetic["run_id"].str.contains("default") | synthetic["run_id"].str.startswith("fm-60m") | (synthetic["run_id"] == "vx-default")
    ]
    data = F.headline(default, tmp_path / "headline")
    _files_ok(tmp_path / "headline")
    assert list(dict.fromkeys(data["panel"])) == ["forcefield", "flowmatching", "voxels"]
    _assert_matches(data, default, "equiv/denoise/pct", panel="voxels")
    _assert_matches(data, default, "equiv/t=0.99/velocity/pct", runs={"fm-60m-0", "fm-60m-1"}, panel="flowmatching")
    with pytest.raises(ValueError, match="differ in n_params"):
        F.headline(
            synthetic[synthetic["task"] == "voxels"].pipe(lambda d: pd.concat([d, d.assign(run_id="other", n_params=7)])), tmp_path / "bad"
        )
