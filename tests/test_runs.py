"""The run directory owns its layout, its status record and the one definition of "finished"."""

from __future__ import annotations

import os
import time

import pytest

from equivrepro.runs import RunDir


def test_status_round_trip_and_finished(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.read_status() == {} and not run.is_finished() and run.state is None
    run.write_status("running", 5, run_id="abc")
    assert run.state == "running" and not run.is_finished(5)
    run.write_status("finished", 10, run_id="abc")
    assert run.is_finished(10) and run.is_finished() and not run.is_finished(11)
    assert run.update_status(note="x")["note"] == "x" and run.read_status()["step"] == 10
    with pytest.raises(ValueError, match="run state must be one of"):
        run.write_status("done", 1)


def test_checkpoint_paths_and_errors(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="has the run .* started"):
        run.checkpoint()
    run.checkpoint_dir.mkdir(parents=True)
    run.snapshot(500).write_bytes(b"x")
    run.snapshot(20).write_bytes(b"x")
    assert list(run.snapshots()) == [20, 500] and run.snapshot(500).name == "step_00000500.pt"
    with pytest.raises(FileNotFoundError, match=r"snapshots of this run: \['step_00000020.pt', 'step_00000500.pt'\]"):
        run.checkpoint(100)


def test_stale_temporaries_of_an_interrupted_write_are_removed_fresh_ones_kept(tmp_path):
    run = RunDir(tmp_path / "r")
    run.checkpoint_dir.mkdir(parents=True)
    old = run.checkpoint_dir / ".last.pt.abc123.tmp"
    new = run.path / ".status.json.def456.tmp"
    old.write_bytes(b"partial")
    new.write_bytes(b"being written")
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert run.clean_stale_temporaries() == [old]
    assert not old.exists() and new.exists()


def test_find_and_metrics_frame(tmp_path):
    for name in ("a", "sub/b"):
        r = RunDir(tmp_path / name)
        r.path.mkdir(parents=True)
        r.metrics_path.write_text("step,metric,value\n0,equiv/x/pct,0.5\n10,equiv/x/pct,0.1\n10,train/loss,2.0\n")
    found = RunDir.find(tmp_path)
    assert [r.path.relative_to(tmp_path).as_posix() for r in found] == ["a", "sub/b"]
    wide = found[0].metrics_frame(["equiv/*"])
    assert list(wide.columns) == ["equiv/x/pct"] and wide.loc[10, "equiv/x/pct"] == 0.1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunDir.find(tmp_path / "nope")
