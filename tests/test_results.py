"""The results table: local collection from real (tiny) runs, file round trips, wandb row conversion, summaries."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from equivrepro.results import (
    GROUP_COLUMNS,
    TABLE_COLUMNS,
    collect_local,
    collect_wandb,
    format_count,
    format_train_size,
    read_table,
    summarize_pct,
    wandb_history_to_tidy,
    write_table,
)
from equivrepro.testing.pointcloud import NonEquivariantMLP
from equivrepro.train.app import compose_config
from equivrepro.train.loggers import read_results
from equivrepro.train.loop import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished points runs (seed 0 and seed 1 at a different lr, no augmentation for the second)."""
    root = tmp_path_factory.mktemp("runs")
    common = [
        "task=points",
        f"paths.runs_dir={root}",
        "logger=none",
        "trainer.progress_bar=false",
        "trainer.max_steps=6",
        "equivariance.every=3",
        "trainer.checkpoint_every=3",
        "trainer.log_every=3",
    ]
    a = train(compose_config(common + ["seed=0"]))
    b = train(compose_config(common + ["seed=1", "optim.lr=1e-2", "trainer.augment=false"]))
    return root, a, b


def test_local_table_holds_every_logged_row_with_run_columns(runs):
    root, a, b = runs
    df = collect_local(root)
    assert list(df.columns) == TABLE_COLUMNS
    assert set(df["run_id"].astype(str)) == {a["run_id"], b["run_id"]}
    for out in (a, b):
        rows = sorted(read_results(Path(out["run_dir"]) / "metrics.csv"))
        mine = df[df["run_id"] == out["run_id"]]
        got = sorted(zip(mine["step"].astype(int), mine["metric"].astype(str), mine["value"].astype(float)))
        assert len(got) == len(rows)
        for (s1, m1, v1), (s2, m2, v2) in zip(got, rows):
            assert (s1, m1) == (s2, m2) and (v1 == v2 or (math.isnan(v1) and math.isnan(v2)))
    run_b = df[df["run_id"] == b["run_id"]].iloc[0]
    assert run_b["task"] == "points" and run_b["status"] == "finished" and run_b["status_step"] == 6
    assert run_b["lr"] == pytest.approx(1e-2) and run_b["optim"] == "AdamW" and run_b["optim_label"] == "AdamW 1e-2"
    assert run_b["augment"] == False and run_b["seed"] == 1 and run_b["batch_size"] == 16 and run_b["max_steps"] == 6  # noqa: E712
    assert run_b["primary_term"] == "mse" and math.isnan(run_b["train_size"])
    n_params = sum(p.numel() for p in NonEquivariantMLP(hidden=32).parameters())
    assert run_b["n_params"] == n_params and run_b["model_label"] == f"NonEquivariantMLP {format_count(n_params)}"
    assert set(df[df["metric"] == "equiv/mse/pct"]["step"].astype(int)) == {0, 3, 6}


def test_metric_filter_and_round_trip(runs, tmp_path):
    root, _, _ = runs
    df = collect_local(root, metrics=["equiv/*/pct", "train/loss"])
    assert set(df["metric"].astype(str)) == {"equiv/mse/pct", "equiv/l2mae/pct", "train/loss"}
    path = write_table(df, tmp_path, fmt="csv")
    assert path.name == "results.csv"
    pd.testing.assert_frame_equal(read_table(path), df, check_categorical=False)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_parquet_round_trip_when_pyarrow_is_installed(runs, tmp_path):
    pytest.importorskip("pyarrow")
    root, _, _ = runs
    df = collect_local(root)
    path = write_table(df, tmp_path)
    assert path.suffix == ".parquet"
    pd.testing.assert_frame_equal(read_table(path), df, check_categorical=False)


def test_bad_directories_are_skipped_and_counted_and_duplicates_dropped(runs, tmp_path):
    root, a, _ = runs
    shutil.copytree(a["run_dir"], tmp_path / "copy" / Path(a["run_dir"]).name)  # the same run twice
    (tmp_path / "copy" / "no_config").mkdir()
    (tmp_path / "copy" / "no_config" / "metrics.csv").write_text("step,metric,value\n1,x,2.0\n")
    (tmp_path / "copy" / "not_ours").mkdir()
    (tmp_path / "copy" / "not_ours" / "metrics.csv").write_text("epoch,loss\n1,2\n")
    (tmp_path / "copy" / "not_ours" / "config.yaml").write_text("name: x\n")
    df = collect_local(tmp_path / "copy")
    assert sorted(Path(p).name for p in df.attrs["skipped"]) == ["no_config", "not_ours"]
    assert set(df["run_id"].astype(str)) == {a["run_id"]}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_local(tmp_path / "nowhere")


def test_wandb_history_rows_become_tidy_rows():
    history = [
        {"_step": 0, "_runtime": 1.5, "_timestamp": 1e9, "equiv/mse/pct": 0.5, "train/loss": None},
        {
            "_step": 10,
            "_runtime": 2.5,
            "equiv/mse/pct": 0.25,
            "train/loss": 3.0,
            "flag": True,
            "text": "x",
            "equiv/mse/total": float("nan"),
        },
        {"_step": 10, "train/loss": 2.0},  # the same step logged again: the last value wins
        {"train/loss": 1.0},  # no step: not a history row
    ]
    df = wandb_history_to_tidy(history, {"run_id": "abc", "task": "points"})
    got = {(int(s), m): v for s, m, v in zip(df["step"], df["metric"], df["value"])}
    assert set(got) == {(0, "equiv/mse/pct"), (10, "equiv/mse/pct"), (10, "train/loss"), (10, "equiv/mse/total")}
    assert got[(10, "train/loss")] == 2.0 and got[(0, "equiv/mse/pct")] == 0.5 and math.isnan(got[(10, "equiv/mse/total")])
    assert set(df["run_id"]) == {"abc"} and list(df.columns) == TABLE_COLUMNS
    only = wandb_history_to_tidy(history, {"run_id": "abc"}, metrics=["equiv/*/pct"])
    assert set(only["metric"]) == {"equiv/mse/pct"}


class _FakeRun:
    def __init__(self, run_id, config, history, state="finished"):
        self.id, self.config, self._history, self.state = run_id, config, history, state
        self.path = ["ent", "proj", run_id]
        self.summary = {"_step": max(r["_step"] for r in history)}

    def scan_history(self):
        return iter(self._history)


class _FakeApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return list(self._runs)


def test_collect_wandb_uses_the_same_columns_as_local_runs():
    config = {
        "_wandb": {"value": {"cli_version": "0.31"}},
        "name": "points",
        "seed": {"value": 3},
        "task": {"_target_": "equivrepro.testing.pointcloud.PointCloudTask", "name": "points"},
        "model": {"_target_": "equivrepro.testing.pointcloud.NonEquivariantMLP", "hidden": 8},
        "data": {"_target_": "equivrepro.testing.pointcloud.PointCloudDataModule", "train_size": 0.5},
        "optim": {"_target_": "torch.optim.SGD", "lr": 0.1},
        "schedule": {"name": "constant"},
        "trainer": {"augment": True, "batch_size": 4, "max_steps": 20},
    }
    api = _FakeApi([_FakeRun("r1", config, [{"_step": 0, "equiv/mse/pct": 0.4}, {"_step": 20, "equiv/mse/pct": 0.1}], state="running")])
    df = collect_wandb("ent/proj", filters={"state": "finished"}, api=api)
    assert api.calls == [("ent/proj", {"state": "finished"})]
    row = df.iloc[-1]
    assert row["run_id"] == "r1" and row["run_dir"] == "wandb:ent/proj/r1" and row["status"] == "running" and row["status_step"] == 20
    assert row["seed"] == 3 and row["optim_label"] == "SGD 1e-1" and row["train_size"] == 0.5 and row["primary_term"] == "mse"
    assert row["n_params"] == sum(p.numel() for p in NonEquivariantMLP(hidden=8).parameters())
    assert sorted(zip(df["step"].astype(int), df["value"])) == [(0, 0.4), (20, 0.1)]


def test_pct_summary_finds_the_dip_the_end_and_the_first_low_pct_after_leaving_the_baseline():
    steps = [0, 10, 20, 30, 40]
    pct = [0.20, 0.01, 0.001, 0.01, 0.03]
    rel = [1.3, 1.05, 0.9, 0.7, 0.6]  # L_total / L_base: the model leaves its baseline at step 20
    base = {"run_id": "r", "task": "points", "model_label": "m", "train_size": math.nan, "optim_label": "o", "augment": True, "seed": 0}
    df = pd.concat(
        [
            pd.DataFrame({**base, "step": steps, "metric": "equiv/t=0.4/velocity/pct", "value": pct}),
            pd.DataFrame({**base, "step": steps, "metric": "equiv/t=0.4/velocity/total_rel_baseline", "value": rel}),
        ]
    )
    s = summarize_pct(df).iloc[0]
    assert (s["first_pct"], s["min_step"], s["min_pct"], s["final_step"], s["final_pct"]) == (0.20, 20, 0.001, 40, 0.03)
    assert s["reference"] == "total_rel_baseline" and s["left_step"] == 20
    assert s["below_step"] == 20 and s["below_step_any"] == 10  # 0.01 at step 10 is below 2 % but still above the baseline
    assert s["total_rel_baseline"] == 0.6
    assert summarize_pct(df, threshold=0.015).iloc[0]["below_step"] == 20
    assert summarize_pct(df, threshold=1e-4).iloc[0]["below_step"] is None  # never reached


def test_labels():
    assert format_count(950_000) == "950k" and format_count(6_137_225) == "6.14M" and format_count(500) == "500"
    assert format_train_size(0.01) == "1%" and format_train_size(0.001) == "0.1%" and format_train_size(1.0) == "100%"
    assert format_train_size(50000) == "50k" and format_train_size(None) == "all" and format_train_size(float("nan")) == "all"
    assert "seed" not in GROUP_COLUMNS
