"""Where metrics go: a tidy local results file (always) and wandb (offline by default).

The results file ``<run_dir>/metrics.csv`` has one row per (step, metric, value): figures and the
results table are built from it and never need wandb. Rows are appended and flushed as they are
logged; on resume the file is atomically rewritten without rows past the checkpoint step, so an
interrupted-and-resumed run has exactly the rows of an uninterrupted one.

The wandb sink (:class:`WandbSink`) adds what a wandb dashboard needs: the training step as every chart's
x-axis, the headline numbers as run summaries, the run's sweep group and task, and the sweep dimensions as
top-level config keys (:func:`sweep_dimensions`).
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from equivrepro.train.checkpoint import atomic_write_text

__all__ = [
    "ResultsFile",
    "WandbSink",
    "Loggers",
    "read_results",
    "STEP_METRIC",
    "DIMENSIONS",
    "dimension_key",
    "dimension_of",
    "sweep_dimensions",
    "run_group",
    "run_job_type",
]

log = logging.getLogger("equivrepro.train.loggers")

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


#: the x-axis of every wandb chart: the training step, logged with every row (wandb only, not in metrics.csv)
STEP_METRIC = "trainer/step"
#: sweep dimensions (columns of :func:`equivrepro.results.run_columns`) copied to top-level wandb config keys
DIMENSIONS = ("task", "family", "model_label", "n_params", "train_size", "optim_label", "augment", "batch_size", "seed")
_DIMENSION_PREFIX = "dim_"


def dimension_key(column: str) -> str:
    """The top-level wandb config key of a sweep dimension (``model_label`` → ``dim_model_label``)."""
    return f"{_DIMENSION_PREFIX}{column}"


def dimension_of(config_key: str) -> str | None:
    """The dimension a top-level config key holds (``dim_model_label`` → ``model_label``), else None."""
    if config_key.startswith(_DIMENSION_PREFIX) and config_key[len(_DIMENSION_PREFIX) :] in DIMENSIONS:
        return config_key[len(_DIMENSION_PREFIX) :]
    return None


def sweep_dimensions(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{dim_<column>: value}`` of a resolved config: the settings a wandb panel can group a sweep by.

    Values are plain scalars: ``train_size`` is its label (``'all'``, ``'160'``, ``'1%'``), ``family`` the
    model family where the config names one (``run_columns``' ``family``), else the model class.
    """
    from equivrepro.results import format_train_size, run_columns

    cols = run_columns(config, run_id="-")
    cols["family"] = cols.get("family") or cols.get("model")
    cols["train_size"] = format_train_size(cols.get("train_size"))
    out = {}
    for c in DIMENSIONS:
        v = cols.get(c)
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[dimension_key(c)] = v
    return out


def run_group(config: Mapping[str, Any], group: str | None = None) -> str | None:
    """The wandb group of a run: the sweep name passed in, else the experiment name (``config['name']``)."""
    return group or config.get("name")


def run_job_type(config: Mapping[str, Any], job_type: str | None = None) -> str | None:
    """The wandb job type of a run: given, else the task name (``config['task']['name']``)."""
    task = config.get("task")
    return job_type or (task.get("name") if isinstance(task, Mapping) else None)


class WandbSink:
    """wandb run with a fixed id so a resumed (or requeued) run continues the same wandb run.

    What it records besides the rows (see :mod:`equivrepro.metrics.headline` and the dashboard,
    :mod:`equivrepro.dashboard`):

    * :data:`STEP_METRIC` (the training step) with every row, and ``define_metric`` with it as ``step_metric``
      for every key family (``train/*``, ``time/*``, ``head/*``, ``compute/*``, ``equiv*/*``, ``spectrum/*``,
      ``attribution/*``; any other key when first seen). Each ``…/pct`` key keeps ``min`` and ``last`` as its
      summary (``{"min": …, "last": …}``); every other key keeps wandb's default summary, the last value;
    * the headline summaries ``headline/[S/]T/…`` (pct first / min / final and their steps, the first step with
      pct ≤ 2 % after the model left its baseline, L/L_base at the end), updated at every evaluation. On resume
      they are seeded from ``history`` (default: the run's ``metrics.csv`` as it stands when the sink is made,
      which :class:`ResultsFile` has cut back to the checkpoint step), so they cover the whole run;
    * ``group`` = the sweep name, else the experiment name; ``job_type`` = the task name; the sweep dimensions as
      top-level config keys ``dim_<column>`` (:func:`sweep_dimensions`) next to the resolved config.
    """

    def __init__(
        self,
        run_dir: str | Path,
        run_id: str,
        name: str,
        config: dict,
        project: str,
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str | None = None,
        *,
        history: list[tuple[int, str, float]] | None = None,
        threshold: float | None = None,
    ):
        import wandb

        from equivrepro.metrics.headline import THRESHOLD, HeadlineTracker
        from equivrepro.runs import RunDir

        self._wandb = wandb
        config = dict(config)
        clash = sorted(k for k in config if dimension_of(k))
        if clash:
            raise ValueError(f"WandbSink: config keys {clash} clash with the sweep-dimension keys {_DIMENSION_PREFIX}*")
        try:
            dims = sweep_dimensions(config)
        except Exception as exc:  # a config run_columns cannot read: log the run anyway, without the dimensions
            log.warning("wandb run %s: no sweep-dimension config keys (%s: %s)", run_id, type(exc).__name__, exc)
            dims = {}
        wandb_config = {**config, **dims}
        self.run = wandb.init(
            project=project,
            entity=entity,
            id=run_id,
            name=name,
            group=run_group(config, group),
            tags=tags,
            job_type=run_job_type(config, job_type),
            resume="allow",
            dir=str(run_dir),
            mode=mode,
            config=wandb_config,
            reinit="finish_previous",
        )
        self._defined: set[str] = set()
        self._define_families()
        self.tracker = HeadlineTracker(threshold=THRESHOLD if threshold is None else threshold)
        if history is None:
            rd = RunDir(run_dir)
            history = rd.read_metrics() if rd.metrics_path.exists() else []
        if history:
            self.tracker.update_rows(history)
            self._write_summary()

    def _define_families(self) -> None:
        self.run.define_metric(STEP_METRIC)
        for family in _families():
            self.run.define_metric(f"{family}/*", step_metric=STEP_METRIC)

    def _define(self, metric: str) -> None:
        """A key's own definition, the first time it is logged: pct keys keep min and last; keys of a family
        without a glob get the step axis."""
        from equivrepro.metrics.keys import HEADLINE_QUANTITY, MetricKey

        self._defined.add(metric)
        k = MetricKey.parse(metric)
        if k is not None and k.quantity == HEADLINE_QUANTITY:
            self.run.define_metric(metric, step_metric=STEP_METRIC, summary="min,last")
        elif metric.split("/", 1)[0] not in _families():
            self.run.define_metric(metric, step_metric=STEP_METRIC)

    def _write_summary(self) -> None:
        from equivrepro.metrics.headline import summary

        self.run.summary.update(summary(self.tracker.headlines()))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for metric in metrics:
            if metric not in self._defined:
                self._define(metric)
        self.run.log({STEP_METRIC: int(step), **metrics}, step=int(step))
        before = self.tracker.headlines()
        try:
            after = self.tracker.update(step, metrics)
        except ValueError as exc:  # a step logged out of order: wandb drops it too; never stop training for a summary
            log.warning("wandb headline summaries not updated at step %s: %s", step, exc)
            return
        if after != before:
            self._write_summary()

    def close(self) -> None:
        self._write_summary()
        self.run.finish()


@functools.lru_cache(maxsize=1)
def _families() -> tuple[str, ...]:
    """Every key family of :mod:`equivrepro.metrics.keys` (imported lazily: reading results needs no torch)."""
    from equivrepro.metrics import keys

    return (keys.TRAIN, keys.TIME, keys.HEAD, keys.COMPUTE, *keys.DECOMPOSITION_FAMILIES)


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
