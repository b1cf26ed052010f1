"""Runs that fail leave a true record, bad config values fail before any data is touched, and an interrupted
atomic write leaves nothing behind after the next start."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from equivrepro.runs import RunDir
from equivrepro.testing.pointcloud import PointCloudDataModule, PointCloudTask
from equivrepro.train.app import compose_config
from equivrepro.train.build import run_dir_for
from equivrepro.train.loop import NonFiniteLossError, train
from equivrepro.train.validate import ConfigError

#: the tests that count training_loss calls keep the compute profile (which calls it) out of the count
COUNTED = "trainer.profile_compute=false"


def _cfg(runs_dir: Path, *extra: str):
    return compose_config(["task=points", f"paths.runs_dir={runs_dir}", "trainer.progress_bar=false", "logger=none", *extra])


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.batch_size=0", "trainer.batch_size must be an integer ≥ 1, got 0"),
        ("trainer.batch_size=-3", "trainer.batch_size must be an integer ≥ 1, got -3"),
        ("equivariance.k=0", "equivariance.k must be an integer ≥ 2, got 0"),
        ("equivariance.num_samples=0", "equivariance.num_samples must be an integer ≥ 1, got 0"),
        ("trainer.ema_decay=1.5", "trainer.ema_decay must be a number > 0 and < 1 or null, got 1.5"),
        ("trainer.precision=fp8", "trainer.precision must be one of ['32', 'bf16', '16'], got 'fp8'"),
        ("equivariance.spectrum_l_max=4", None),  # valid with k = 4 (the points preset)
    ],
)
def test_bad_config_values_name_the_key_before_any_data_is_touched(tmp_path, monkeypatch, override, message):
    touched = []
    monkeypatch.setattr(PointCloudDataModule, "setup", lambda self: touched.append(1) or None)
    cfg = _cfg(tmp_path, override, "trainer.max_steps=2")
    if message is None:
        with pytest.raises(Exception) as info:  # gets past validation, then fails in the stubbed data
            train(cfg)
        assert not isinstance(info.value, ConfigError) and touched
        return
    with pytest.raises(ConfigError) as info:
        train(cfg)
    assert message in str(info.value) and not touched
    assert not RunDir(run_dir_for(cfg)).exists()  # nothing written either


def test_a_crash_records_failed_with_the_error_and_a_relaunch_resumes(tmp_path, monkeypatch):
    original = PointCloudTask.training_loss
    calls = {"n": 0}

    def broken(self, model, batch, generator):
        calls["n"] += 1
        if calls["n"] == 13:
            raise RuntimeError("injected failure in the loss")
        return original(self, model, batch, generator)

    monkeypatch.setattr(PointCloudTask, "training_loss", broken)
    cfg = _cfg(tmp_path, COUNTED)
    with pytest.raises(RuntimeError, match="injected failure"):
        train(cfg)
    run = RunDir(run_dir_for(cfg))
    status = run.read_status()
    assert status["state"] == "failed" and status["step"] == 10 and status["error_type"] == "RuntimeError"
    assert "injected failure in the loss" in status["error"] and status["checkpoint"] == str(run.last_checkpoint)
    assert not run.is_finished()
    monkeypatch.setattr(PointCloudTask, "training_loss", original)
    out = train(cfg)  # the relaunch resumes from the step-10 checkpoint and finishes
    assert out["step"] == 40 and run.is_finished(40)


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    original = PointCloudTask.training_loss
    monkeypatch.setattr(PointCloudTask, "training_loss", lambda self, m, b, g: (original(self, m, b, g)[0] * float("inf"), {}))
    cfg = _cfg(tmp_path, COUNTED)
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet"):
        train(cfg)
    assert RunDir(run_dir_for(cfg)).read_status()["state"] == "failed"


def test_non_finite_loss_after_a_checkpoint_names_it(tmp_path, monkeypatch):
    original = PointCloudTask.training_loss
    calls = {"n": 0}

    def late_nan(self, m, b, g):
        calls["n"] += 1
        loss, logs = original(self, m, b, g)
        return (loss * float("nan"), logs) if calls["n"] == 24 else (loss, logs)

    monkeypatch.setattr(PointCloudTask, "training_loss", late_nan)
    with pytest.raises(NonFiniteLossError, match=r"last checkpoint on disk is .*last\.pt \(step 20\), unchanged"):
        train(_cfg(tmp_path, COUNTED))


def test_stale_temporaries_are_cleaned_when_a_run_starts(tmp_path):
    cfg = _cfg(tmp_path, "trainer.max_steps=10", "equivariance.every=5")
    run = RunDir(run_dir_for(cfg))
    run.checkpoint_dir.mkdir(parents=True)
    stale = run.checkpoint_dir / ".last.pt.x1y2z3.tmp"  # what a SIGKILL during torch.save leaves
    stale.write_bytes(b"\0" * 128)
    past = time.time() - 3600
    os.utime(stale, (past, past))
    train(cfg)
    assert not stale.exists() and run.is_finished(10)
