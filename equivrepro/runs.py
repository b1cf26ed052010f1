"""The run directory: the one owner of its layout, its status record and "is this run finished?".

``<runs_dir>/<name>-<hash>/`` (the hash is :func:`equivrepro.train.build.run_identity`) holds

* ``config.yaml`` — the resolved config;
* ``status.json`` — ``{"state": "running" | "finished" | "failed", "step", "run_id", "wandb_id", …}``
  (failed runs also carry ``error`` and ``error_type``);
* ``metrics.csv`` — the tidy ``step,metric,value`` results file (:mod:`equivrepro.train.loggers`);
* ``checkpoints/last.pt`` (atomic) and ``checkpoints/step_<8 digits>.pt`` snapshots;
* ``wandb/`` — the offline wandb run; ``analysis/`` — default output of the analyses.

Everything that reads or writes one of these goes through :class:`RunDir`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from equivrepro.atomic import atomic_write_json, atomic_write_text

__all__ = ["RunDir", "RunState", "STATES"]

log = logging.getLogger("equivrepro.runs")

RunState = str
STATES = ("running", "finished", "failed")


class RunDir:
    """Paths and status of one run directory (nothing is created until something is written)."""

    CONFIG = "config.yaml"
    STATUS = "status.json"
    METRICS = "metrics.csv"
    CHECKPOINTS = "checkpoints"
    LAST = "last.pt"
    WANDB = "wandb"
    ANALYSIS = "analysis"
    #: temporaries of :mod:`equivrepro.atomic` older than this are left over from a killed writer
    STALE_TMP_SECONDS = 60.0

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # --- paths --------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def status_path(self) -> Path:
        return self.path / self.STATUS

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / self.LAST

    @property
    def wandb_dir(self) -> Path:
        return self.path / self.WANDB

    @property
    def analysis_dir(self) -> Path:
        return self.path / self.ANALYSIS

    def snapshot(self, step: int) -> Path:
        """``checkpoints/step_<8-digit step>.pt``."""
        return self.checkpoint_dir / f"step_{int(step):08d}.pt"

    def snapshots(self) -> dict[int, Path]:
        """The step snapshots on disk, by step."""
        out = {}
        if self.checkpoint_dir.is_dir():
            for p in self.checkpoint_dir.glob("step_*.pt"):
                try:
                    out[int(p.stem.split("_", 1)[1])] = p
                except ValueError:
                    continue
        return dict(sorted(out.items()))

    def checkpoint(self, step: int | None = None) -> Path:
        """``last.pt`` (``step=None``) or the snapshot of ``step``; FileNotFoundError saying what exists."""
        if step is None:
            if not self.last_checkpoint.exists():
                raise FileNotFoundError(
                    f"no checkpoint {self.last_checkpoint}: has the run {self.path} started? "
                    f"(status: {self.read_status().get('state', 'none')})"
                )
            return self.last_checkpoint
        path = self.snapshot(step)
        if not path.exists():
            have = [p.name for p in self.snapshots().values()]
            raise FileNotFoundError(
                f"no snapshot {path}; snapshots of this run: {have or 'none'} "
                f"(set trainer.snapshot_steps=[{int(step)}] before training to keep one)"
            )
        return path

    def exists(self) -> bool:
        return self.path.is_dir()

    def is_run(self) -> bool:
        """Whether this directory looks like a harness run (a config and a results file)."""
        return self.config_path.is_file() and self.metrics_path.is_file()

    # --- status ------------------------------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        """The status record, ``{}`` when there is none (or it cannot be parsed: logged)."""
        try:
            return json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", self.status_path, exc)
            return {}

    def write_status(self, state: RunState, step: int, **fields: Any) -> dict[str, Any]:
        """Atomically record ``state`` at ``step`` (plus ``fields``, e.g. ``run_id``, ``data``, ``error``)."""
        if state not in STATES:
            raise ValueError(f"run state must be one of {STATES}, got {state!r}")
        record = {"state": state, "step": int(step), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.status_path, record)
        return record

    def update_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the existing record (keeps state and step)."""
        record = {**self.read_status(), **fields}
        if "state" not in record:
            raise ValueError(f"{self.status_path}: no status to update")
        return self.write_status(record.pop("state"), record.pop("step", 0), **{k: v for k, v in record.items() if k != "updated"})

    @property
    def state(self) -> RunState | None:
        return self.read_status().get("state")

    def is_finished(self, max_steps: int | None = None) -> bool:
        """Finished, and (when given) at least ``max_steps`` steps: the one definition used everywhere."""
        s = self.read_status()
        if s.get("state") != "finished":
            return False
        return max_steps is None or int(s.get("step", -1)) >= int(max_steps)

    # --- config and metrics ------------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        from omegaconf import OmegaConf

        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, OmegaConf.to_yaml(OmegaConf.create(dict(config))))

    def read_config(self) -> dict[str, Any]:
        import yaml

        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.path} has no {self.CONFIG}: not a run directory")
        config = yaml.safe_load(self.config_path.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"{self.config_path}: expected a mapping, got {type(config).__name__}")
        return config

    def read_metrics(self) -> list[tuple[int, str, float]]:
        """Rows ``(step, metric, value)`` of ``metrics.csv``."""
        from equivrepro.train.loggers import read_results

        return read_results(self.metrics_path)

    def metrics_frame(self, metrics: list[str] | None = None):
        """``metrics.csv`` as a wide DataFrame: one row per step, one column per metric (optionally only
        the glob patterns in ``metrics``); None when the run has no results file."""
        import fnmatch

        import pandas as pd

        if not self.metrics_path.exists():
            return None
        rows = self.read_metrics()
        if metrics:
            rows = [r for r in rows if any(fnmatch.fnmatchcase(r[1], p) for p in metrics)]
        if not rows:
            return pd.DataFrame()
        df = pd.DataFrame(rows, columns=["step", "metric", "value"])
        return df.pivot_table(index="step", columns="metric", values="value", aggfunc="last").sort_index()

    # --- housekeeping ------------------------------------------------------------------------------
    def clean_stale_temporaries(self, older_than: float | None = None) -> list[Path]:
        """Delete ``.<name>.*.tmp`` files left by an interrupted atomic write (checkpoints, status, config).

        Only files older than ``older_than`` seconds (default :data:`STALE_TMP_SECONDS`) go, so a writer
        of another live process is never disturbed. Returns what was removed.
        """
        limit = self.STALE_TMP_SECONDS if older_than is None else float(older_than)
        removed = []
        now = time.time()
        for folder in (self.path, self.checkpoint_dir):
            if not folder.is_dir():
                continue
            for p in folder.glob(".*.tmp"):
                try:
                    if now - p.stat().st_mtime >= limit:
                        p.unlink()
                        removed.append(p)
                except FileNotFoundError:
                    continue
        if removed:
            log.info(
                "removed %d stale temporary file(s) from an interrupted write in %s: %s",
                len(removed),
                self.path,
                ", ".join(p.name for p in removed),
            )
        return removed

    @staticmethod
    def find(runs_dir: str | Path) -> list[RunDir]:
        """Run directories under ``runs_dir`` (recursively): those that hold a results file."""
        runs_dir = Path(runs_dir)
        if not runs_dir.is_dir():
            raise FileNotFoundError(f"runs directory {runs_dir} does not exist")
        return [RunDir(p.parent) for p in sorted(runs_dir.rglob(RunDir.METRICS)) if p.is_file()]
