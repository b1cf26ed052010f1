"""End-to-end behaviour of the training harness on the synthetic self-check task (seconds each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equivrepro.testing.pointcloud import PointCloudTask
from equivrepro.train.app import compose_config
from equivrepro.train.checkpoint import load_checkpoint
from equivrepro.train.loggers import read_results
from equivrepro.train.loop import NonFiniteLossError, TrainingInterrupted, train

ROOT = Path(__file__).resolve().parents[2]


#: the tests that count training_loss calls keep the compute profile (which calls it) out of the count
COUNTED = "trainer.profile_compute=false"


def _cfg(runs_dir: Path, *extra: str):
    return compose_config(["task=points", f"paths.runs_dir={runs_dir}", "trainer.progress_bar=false", "logger=none", *extra])


def _rows(run_dir: str | Path) -> list[tuple[int, str, float | str]]:
    # wall-clock timings differ between runs by nature; everything else must match exactly (NaN as a marker, since
    # NaN != NaN: e.g. L/L_base of the self-check task, whose baseline c·x is exact)
    # compute/* is measured once per session (a resumed run measures its new machine again)
    return [
        (s, m, "nan" if v != v else v) for s, m, v in read_results(Path(run_dir) / "metrics.csv") if not m.startswith(("time/", "compute/"))
    ]


def test_interrupted_run_resumes_exactly(tmp_path):
    ref = train(_cfg(tmp_path / "a", "trainer.ema_decay=0.9"))
    cfg = _cfg(tmp_path / "b", "trainer.ema_decay=0.9", "trainer.interrupt_after_step=25")
    with pytest.raises(TrainingInterrupted):
        train(cfg)
    # rows logged after the last checkpoint (step 20) exist now and must be replaced, not duplicated
    partial = _rows(Path(ref["run_dir"].replace(str(tmp_path / "a"), str(tmp_path / "b"))))
    assert max(s for s, _, _ in partial) == 25
    assert (
        load_checkpoint(Path(partial and ref["run_dir"].replace(str(tmp_path / "a"), str(tmp_path / "b"))) / "checkpoints/last.pt")["step"]
        == 20
    )
    resumed = train(_cfg(tmp_path / "b", "trainer.ema_decay=0.9"))
    assert resumed["run_id"] == ref["run_id"] and not resumed["skipped"]
    assert _rows(resumed["run_dir"]) == _rows(ref["run_dir"])
    a = load_checkpoint(Path(ref["run_dir"]) / "checkpoints/last.pt")
    b = load_checkpoint(Path(resumed["run_dir"]) / "checkpoints/last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"][key], b["ema"][key]), key


def test_finished_run_is_skipped_and_identity_tracks_config(tmp_path):
    first = train(_cfg(tmp_path))
    again = train(_cfg(tmp_path))
    assert again["skipped"] and again["run_dir"] == first["run_dir"]
    other = train(_cfg(tmp_path, "trainer.max_steps=10"))
    assert other["run_dir"] != first["run_dir"] and not other["skipped"]
    # settings that do not change results do not change identity
    assert train(_cfg(tmp_path, "trainer.log_every=7"))["run_dir"] == first["run_dir"]


def test_equivariance_metrics_are_logged(tmp_path):
    out = train(_cfg(tmp_path, "equivariance.grad_norms=true", "equivariance.floor=true", "equivariance.cube_group=true"))
    rows = _rows(out["run_dir"])
    steps = sorted({s for s, m, _ in rows if m == "equiv/mse/pct"})
    assert steps == [0, 10, 20, 30, 40]
    names = {m for _, m, _ in rows}
    for key in (
        "equiv/mse/total",
        "equiv/mse/mean",
        "equiv/mse/equiv",
        "equiv/mse/pct_q90",
        "equiv/mse/pct_se",
        "equiv/mse/total_rel_null",
        "equiv/mse/grad_norm_ratio",
        "equiv_floor/mse/equiv",
        "equiv/mse/pct_net",
        "equiv_cube/mse/pct",
        "equiv/l2mae/pct",
        "train/loss",
        "train/lr",
    ):
        assert key in names, key
    floor = [v for _, m, v in rows if m == "equiv_floor/mse/equiv"]
    assert max(abs(v) for v in floor) < 1e-10  # the fitted equivariant baseline c·x rotates back exactly
    base = [v for _, m, v in rows if m == "equiv/mse/baseline_total"]
    assert base and max(base) < 1e-10  # c·x fits the target 2·x exactly (on training data, scored held out)
    assert "equiv/mse/pct_ci_lo" in names
    assert any(m == "time/equivariance_share" for _, m, _ in read_results(Path(out["run_dir"]) / "metrics.csv"))
    pct0 = [v for s, m, v in rows if m == "equiv/mse/pct" and s == 0][0]
    assert pct0 > 1e-3  # a per-point MLP on raw coordinates is not equivariant at initialisation


def test_nan_loss_names_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    original = PointCloudTask.training_loss
    calls = {"n": 0}

    def flaky(self, model, batch, generator):
        calls["n"] += 1
        loss, logs = original(self, model, batch, generator)
        return (loss * float("nan"), logs) if calls["n"] == 14 else (loss, logs)

    monkeypatch.setattr(PointCloudTask, "training_loss", flaky)
    cfg = _cfg(tmp_path, COUNTED)
    with pytest.raises(NonFiniteLossError, match="at step 14"):
        train(cfg)
    run_dir = next(p for p in tmp_path.iterdir() if p.name.startswith("points-"))
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["step"] == 10
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_mixed_precision_paths_run_on_cpu(tmp_path, precision):
    out = train(_cfg(tmp_path, f"trainer.precision={precision}", "trainer.max_steps=6", "equivariance.every=3", "trainer.pin_memory=true"))
    pct = out["metrics"]["equiv/mse/pct"]
    assert 0 < pct < 1


def test_config_typo_fails_with_hydra_message(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "equivrepro.train", "task=points", "trainer.max_stpes=3", f"paths.runs_dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Could not override 'trainer.max_stpes'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "equivrepro.train", "task=points", "model=no_such_model", f"paths.runs_dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "no_such_model" in proc.stderr and "Traceback" not in proc.stderr


def test_ddp_on_cpu_with_gloo(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "equivrepro.train",
        "task=points",
        "trainer.max_steps=6",
        "equivariance.every=3",
        "trainer.progress_bar=false",
        "logger=none",
        f"paths.runs_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next(p for p in tmp_path.iterdir() if p.name.startswith("points-"))
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    steps = {s for s, m, _ in read_results(run_dir / "metrics.csv") if m == "equiv/mse/pct"}
    assert steps == {0, 3, 6}


def test_preemption_signal_checkpoints_then_resumes(tmp_path, monkeypatch):
    import signal

    original = PointCloudTask.training_loss
    calls = {"n": 0}

    def signalled(self, model, batch, generator):
        calls["n"] += 1
        if calls["n"] == 13:
            os.kill(os.getpid(), signal.SIGTERM)  # what SLURM sends on preemption
        return original(self, model, batch, generator)

    monkeypatch.setattr(PointCloudTask, "training_loss", signalled)
    prev = signal.signal(signal.SIGTERM, lambda *a: None)  # stands in for submitit's requeue handler
    try:
        with pytest.raises(TrainingInterrupted, match="preempted after step 13"):
            train(_cfg(tmp_path, COUNTED))
    finally:
        signal.signal(signal.SIGTERM, prev)
    run_dir = next(p for p in tmp_path.iterdir() if p.name.startswith("points-"))
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["step"] == 13
    monkeypatch.setattr(PointCloudTask, "training_loss", original)
    out = train(_cfg(tmp_path, COUNTED))
    assert out["step"] == 40 and not out["skipped"]
