"""Where metrics go: a tidy local results file (always) and wandb (offline by default).

The results file ``<run_dir>/metrics.csv`` has one row per (step, metric, value): figures and the
results table are built from it and never need wandb. Rows are appended and flushed as they are
logged; on resume the file is atomically rewritten without rows past the checkpoint step, so an
interrupted-and-resumed run has exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping

from equivrepro.train.checkpoint import atomic_write_text

__all__ = ["ResultsFile", "WandbSink", "Loggers", "read_results"]

RESULTS_NAME = "metrics.csv"
_HEADER = ["step", "metric", "value"]


def read_results(path: str | Path) -> list[tuple[int, str, float]]:
    """Rows of a results file. Only newline-terminated lines count: a torn last line (a crash
    mid-write) is ignored."""
    text = Path(path).read_text()
    lines = text.split("\n")
    complete = lines[:-1]  # the piece after the last newline is either empty or torn
    if not complete or complete[0].split(",") != _HEADER:
        raise ValueError(f"{path}: not an equivrepro results file (header {complete[:1]})")
    rows = []
    for rec in csv.reader(complete[1:]):
        if len(rec) != 3:
            continue
        try:
            rows.append((int(rec[0]), rec[1], float(rec[2])))
        except ValueError:
            continue
    return rows


class ResultsFile:
    def __init__(self, run_dir: str | Path, resume_step: int | None):
        self.path = Path(run_dir) / RESULTS_NAME
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_results(self.path) if r[0] <= resume_step]
        else:
            kept = []
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(_HEADER)
        w.writerows((s, m, repr(v)) for s, m, v in kept)
        atomic_write_text(self.path, buf.getvalue())
        self._f = open(self.path, "a", newline="")
        self._w = csv.writer(self._f, lineterminator="\n")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for k, v in metrics.items():
            v = float(v)
            if math.isfinite(v) or math.isnan(v):
                self._w.writerow((int(step), k, repr(v)))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class WandbSink:
    """wandb run with a fixed id so a resumed (or requeued) run continues the same wandb run."""

    def __init__(self, run_dir: str | Path, run_id: str, name: str, config: dict, project: str, entity: str | None, mode: str, group: str | None, tags: list[str] | None):
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=project, entity=entity, id=run_id, name=name, group=group, tags=tags,
            resume="allow", dir=str(run_dir), mode=mode, config=config, reinit="finish_previous",
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=int(step))

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """Fan-out to the results file and the optional wandb sink."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if metrics:
            for s in self.sinks:
                s.log(step, metrics)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
