"""The wandb sink's metadata, read back from the offline run's transaction log (``run-<id>.wandb``).

wandb ≥ 0.2x has no Python reader for that file any more; it is a LevelDB-style log (7-byte file header
``:W&B``, 0xBEE1, version; 32 KiB blocks of records with a 7-byte header: CRC32, length, type FULL/FIRST/
MIDDLE/LAST) of ``wandb_internal_pb2.Record`` protos, read here in a few lines.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from equivrepro.metrics import keys
from equivrepro.metrics.headline import PCT_FIRST_STEP, PCT_MIN, headlines, summary, summary_key
from equivrepro.results import run_columns
from equivrepro.runs import RunDir
from equivrepro.train.app import compose_config
from equivrepro.train.loggers import STEP_METRIC, WandbSink, dimension_key, sweep_dimensions
from equivrepro.train.loop import TrainingInterrupted, train

_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a wandb transaction log"
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def _read_offline_run(wandb_dir: Path, which: int = -1) -> dict:
    """The run record, metric definitions, final summary and history of one offline run (the newest by default)."""
    (path,) = sorted(wandb_dir.glob("offline-run-*"))[which].glob("run-*.wandb")
    out = {"run": None, "metrics": {}, "globs": {}, "summary": {}, "history": []}
    for r in _records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
        elif kind == "metric":
            m = r.metric
            (out["globs"] if m.glob_name else out["metrics"])[m.glob_name or m.name] = m
        elif kind == "summary":
            for u in r.summary.update:
                name = u.key or "/".join(u.nested_key)  # wandb writes logged keys as a one-element nested_key
                out["summary"][name] = json.loads(u.value_json)
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
    return out


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))


def _cfg(runs_dir: Path, *extra: str):
    return compose_config(
        ["task=points", "logger=wandb", "logger.mode=offline", f"paths.runs_dir={runs_dir}", "trainer.progress_bar=false", *extra]
    )


def test_offline_run_carries_metric_definitions_summaries_group_and_dimensions(tmp_path, offline_wandb):
    out = train(_cfg(tmp_path))
    rd = RunDir(out["run_dir"])
    rows = rd.read_metrics()
    logged = _read_offline_run(rd.wandb_dir)

    # every family plots against the training step; pct keys keep their minimum and last value
    for family in (keys.TRAIN, keys.TIME, keys.HEAD, keys.COMPUTE, *keys.DECOMPOSITION_FAMILIES):
        assert logged["globs"][f"{family}/*"].step_metric == STEP_METRIC, family
    pct_keys = sorted({m for _, m, _ in rows if keys.matches(m, family=keys.EQUIV, quantity="pct")})
    assert pct_keys, "the points task logs pct"
    for k in pct_keys:
        d = logged["metrics"][k]
        assert d.step_metric == STEP_METRIC and d.summary.min and d.summary.last, k
        values = [v for _, m, v in sorted(rows) if m == k]
        assert logged["summary"][k] == {"min": min(values), "last": values[-1]}
    # the step axis is logged with every row and equals the step of the results file
    assert all(h[STEP_METRIC] == h["_step"] for h in logged["history"])
    assert {h["_step"] for h in logged["history"]} == {s for s, _, _ in rows}

    # headline summaries: the same numbers as the pure function over the results file
    expected = summary(headlines(rows))
    assert expected
    for name, value in expected.items():
        assert logged["summary"][name] == value, name
    main = keys.key(keys.EQUIV, "mse", "pct")
    assert logged["summary"][summary_key(main, PCT_MIN)] == min(v for _, m, v in rows if m == main)

    # grouped by the experiment name, typed by task, with the sweep dimensions as top-level config keys
    config = rd.read_config()
    run = logged["run"]
    assert run.run_group == config["name"] and run.job_type == config["task"]["name"] == "points"
    cfg = {u.key: json.loads(u.value_json) for u in run.config.update}
    dims = sweep_dimensions(config)
    cols = run_columns(config, run_id="-")
    assert dims[dimension_key("model_label")] == cols["model_label"] and cols["model_label"]
    assert dims[dimension_key("optim_label")] == cols["optim_label"] and dims[dimension_key("augment")] is True
    for name, value in dims.items():
        assert cfg[name] == value, name
    assert cfg["trainer"] == config["trainer"]  # the resolved config is there too


def test_resumed_run_summarises_the_whole_run(tmp_path, offline_wandb):
    with pytest.raises(TrainingInterrupted):
        train(_cfg(tmp_path, "trainer.interrupt_after_step=25", "logger.group=my-sweep"))
    out = train(_cfg(tmp_path, "logger.group=my-sweep"))
    rd = RunDir(out["run_dir"])
    assert len(list(rd.wandb_dir.glob("offline-run-*"))) == 2
    resumed = _read_offline_run(rd.wandb_dir)
    assert resumed["run"].run_group == "my-sweep"
    # this offline run only logged steps from the checkpoint on (at the checkpoint step: its own compute profile)
    assert min(h["_step"] for h in resumed["history"]) >= 20
    assert all(k.startswith(("compute/", "_", "trainer/")) for h in resumed["history"] if h["_step"] == 20 for k in h)
    main = keys.key(keys.EQUIV, "mse", "pct")
    # ...but its summaries start at step 0 (seeded from metrics.csv) and match the uninterrupted definition
    assert resumed["summary"][summary_key(main, PCT_FIRST_STEP)] == 0
    for name, value in summary(headlines(rd.read_metrics())).items():
        assert resumed["summary"][name] == value, name


def test_sink_rejects_a_config_that_clashes_with_the_dimension_keys(tmp_path, offline_wandb):
    with pytest.raises(ValueError, match="dim_model_label"):
        WandbSink(tmp_path, "abc", "n", {"name": "x", dimension_key("model_label"): 1}, project="p", mode="offline")
