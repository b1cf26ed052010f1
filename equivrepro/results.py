"""The tidy results table: one row per (run, step, metric), with the run's settings as columns.

Sources
-------
* **Local runs** (default): every run directory (:class:`equivrepro.runs.RunDir`) under a runs directory
  (searched recursively): its results file, config and status — what the training harness writes.
* **wandb** (when the runs were synced to a server): ``collect_wandb("entity/project")`` reads each
  run's config and full history through ``wandb.Api()``; rows are converted by the same code as local
  runs (:func:`wandb_history_to_tidy`), so figures do not care where the table came from.

Columns
-------
``run_id, run_dir, name, task, status, status_step, step, metric, value`` and, per run,
``model`` (class name), ``model_target``, ``n_params`` (trainable parameters, counted on the meta device
without allocating weights), ``model_label`` (e.g. ``EScAIPForceField 6.2M``), ``data_target``,
``train_size`` (``data.train_size``: a count or a fraction; NaN = all data),
``optim`` (class name), ``lr``, ``optim_label`` (e.g. ``AdamW 1e-05``), ``schedule``, ``augment``,
``seed``, ``batch_size``, ``max_steps`` and ``primary_term`` (the task's headline loss term, whose
``equiv/…/<term>/pct`` the figures show). :data:`GROUP_COLUMNS` are the settings that distinguish
sweep points; runs equal on all of them are replicates (seeds).

The table is written as Parquet when ``pyarrow`` is importable, else as CSV, atomically
(:func:`write_table`); :func:`read_table` reads either back with the same dtypes.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from equivrepro.atomic import atomic_write
from equivrepro.runs import RunDir

log = logging.getLogger("equivrepro.results")

__all__ = [
    "RUN_COLUMNS",
    "GROUP_COLUMNS",
    "TABLE_COLUMNS",
    "run_columns",
    "load_local_run",
    "collect_local",
    "wandb_history_to_tidy",
    "collect_wandb",
    "write_table",
    "read_table",
    "summarize_pct",
    "format_count",
    "format_train_size",
    "main",
]

#: Per-run columns, in table order (after the tidy ``step, metric, value``).
RUN_COLUMNS = [
    "run_id",
    "run_dir",
    "name",
    "task",
    "status",
    "status_step",
    "model",
    "model_target",
    "n_params",
    "model_label",
    "data_target",
    "train_size",
    "optim",
    "lr",
    "optim_label",
    "schedule",
    "augment",
    "seed",
    "batch_size",
    "max_steps",
    "primary_term",
]
#: Settings that tell sweep points apart; runs equal on all of them are replicates (seeds).
GROUP_COLUMNS = ["task", "model_target", "n_params", "train_size", "optim", "lr", "schedule", "augment", "batch_size", "max_steps"]
TABLE_COLUMNS = RUN_COLUMNS[:6] + ["step", "metric", "value"] + RUN_COLUMNS[6:]
_STRING_COLUMNS = [
    "run_id",
    "run_dir",
    "name",
    "task",
    "status",
    "model",
    "model_target",
    "model_label",
    "data_target",
    "optim",
    "optim_label",
    "schedule",
    "primary_term",
    "metric",
]
_FLOAT_COLUMNS = ["train_size", "lr", "value"]
_INT_COLUMNS = ["status_step", "n_params", "seed", "batch_size", "max_steps", "step"]


# ----------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------
def format_count(n: float | int | None) -> str:
    """950000 → '950k', 6_200_000 → '6.2M', 500 → '500'."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "?"
    n = float(n)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def format_train_size(v: float | int | None) -> str:
    """A fraction (≤ 1) as a percentage ('1%', '0.1%', '100%'), a count as '950k'; missing → 'all'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "all"
    v = float(v)
    if 0 < v <= 1:  # fractions of the training set (flow matching, voxels); counts (force field) are ≥ 1 sample
        return f"{100 * v:.3g}%"
    return format_count(v)


def _short_class(target: str | None) -> str | None:
    return target.rsplit(".", 1)[-1] if target else None


# ----------------------------------------------------------------------------------------------------
# Per-run columns from a resolved config
# ----------------------------------------------------------------------------------------------------
def _node(cfg: Mapping, key: str) -> Mapping:
    v = cfg.get(key)
    return v if isinstance(v, Mapping) else {}


@lru_cache(maxsize=256)
def _count_parameters(model_cfg_json: str) -> int | None:
    """Trainable parameters of the model a config builds, instantiated on the meta device (no memory)."""
    import torch
    from hydra.utils import instantiate

    try:
        with torch.device("meta"):
            model = instantiate(json.loads(model_cfg_json), _convert_="all")
        return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    except Exception as exc:  # a model whose constructor cannot run on 'meta' (or an unknown class)
        log.warning("cannot count parameters of %s on the meta device: %s", model_cfg_json[:200], exc)
        return None


def _parameters_from_checkpoint(run_dir: Path) -> int | None:
    path = RunDir(run_dir).last_checkpoint
    if not path.exists():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return int(sum(v.numel() for v in state["model"].values() if torch.is_tensor(v) and v.is_floating_point()))
    except Exception as exc:
        log.warning("cannot read parameter count from %s: %s", path, exc)
        return None


@lru_cache(maxsize=64)
def _primary_term(task_cfg_json: str) -> str | None:
    from hydra.utils import instantiate

    task_cfg = json.loads(task_cfg_json)
    task_cfg.pop("name", None)
    try:
        return instantiate(task_cfg, _convert_="all").primary_term.name
    except Exception as exc:
        log.warning("cannot instantiate task %s to find its primary loss term: %s", task_cfg.get("_target_"), exc)
        return None


def run_columns(
    config: Mapping[str, Any], status: Mapping[str, Any] | None = None, run_dir: str | Path | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """The per-run columns (:data:`RUN_COLUMNS`) of a run with resolved ``config`` (plain dict)."""
    status = dict(status or {})
    task, model, data, optim, trainer = (_node(config, k) for k in ("task", "model", "data", "optim", "trainer"))
    n_params = None
    if model.get("_target_"):
        n_params = _count_parameters(json.dumps(dict(model), sort_keys=True, default=str))
    if n_params is None and run_dir is not None and not str(run_dir).startswith("wandb:"):
        n_params = _parameters_from_checkpoint(Path(run_dir))
    model_name = _short_class(model.get("_target_"))
    optim_name = _short_class(optim.get("_target_"))
    lr = optim.get("lr")
    train_size = data.get("train_size")
    if run_id is None:
        run_id = status.get("run_id")
    if run_id is None:
        from equivrepro.train.build import run_identity

        run_id = run_identity(dict(config))
    return {
        "run_id": str(run_id),
        "run_dir": str(run_dir) if run_dir is not None else None,
        "name": config.get("name"),
        "task": task.get("name"),
        "status": status.get("state"),
        "status_step": status.get("step"),
        "model": model_name,
        "model_target": model.get("_target_"),
        "n_params": n_params,
        "model_label": f"{model_name} {format_count(n_params)}" if model_name else None,
        "data_target": data.get("_target_"),
        "train_size": float(train_size) if train_size is not None else math.nan,
        "optim": optim_name,
        "lr": float(lr) if lr is not None else math.nan,
        "optim_label": f"{optim_name} {float(lr):.0e}".replace("e-0", "e-") if optim_name and lr is not None else optim_name,
        "schedule": _node(config, "schedule").get("name"),
        "augment": bool(trainer["augment"]) if "augment" in trainer else None,
        "seed": config.get("seed"),
        "batch_size": trainer.get("batch_size"),
        "max_steps": trainer.get("max_steps"),
        "primary_term": _primary_term(json.dumps(dict(task), sort_keys=True, default=str)) if task.get("_target_") else None,
    }


# ----------------------------------------------------------------------------------------------------
# Local runs
# ----------------------------------------------------------------------------------------------------
def _metric_filter(patterns: Sequence[str] | None):
    if not patterns:
        return lambda m: True
    return lambda m: any(fnmatch.fnmatchcase(m, p) for p in patterns)


def _tidy(rows: Iterable[tuple[int, str, float]], columns: Mapping[str, Any]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=["step", "metric", "value"])
    for key, v in columns.items():
        df[key] = v
    return df.reindex(columns=TABLE_COLUMNS)


def load_local_run(run_dir: str | Path, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The tidy rows of one run directory (``metrics``: optional glob patterns, e.g. ``['equiv/*/pct']``)."""
    run = RunDir(run_dir)
    config = run.read_config()
    keep = _metric_filter(metrics)
    rows = [r for r in run.read_metrics() if keep(r[1])]
    return _tidy(rows, run_columns(config, run.read_status(), run.path))


def _finish(frames: list[pd.DataFrame], source: str) -> pd.DataFrame:
    if not frames:
        return _typed(pd.DataFrame(columns=TABLE_COLUMNS))
    df = pd.concat(frames, ignore_index=True)
    # the same run found twice (a copied directory): keep the copy that got furthest
    steps = df.groupby(["run_id", "run_dir"], observed=True)["step"].max().reset_index()
    best = steps.sort_values("step").drop_duplicates("run_id", keep="last")
    if len(best) < len(steps):
        dropped = sorted(set(steps.run_dir) - set(best.run_dir))
        log.warning("%s: %d duplicate run directories ignored (same run id, fewer steps): %s", source, len(dropped), dropped)
        df = df[df.run_dir.isin(best.run_dir)]
    return _typed(df.sort_values(["task", "run_id", "metric", "step"], kind="stable").reset_index(drop=True))


def collect_local(runs_dir: str | Path, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The results table of every run under ``runs_dir``. Results files without a ``config.yaml`` or that
    are not harness results files are skipped with a warning; the count is in ``df.attrs['skipped']``."""
    frames, skipped = [], []
    for run_dir in (r.path for r in RunDir.find(runs_dir)):
        try:
            frames.append(load_local_run(run_dir, metrics))
        except (FileNotFoundError, ValueError, yaml.YAMLError) as exc:
            skipped.append(str(run_dir))
            log.warning("skipping %s: %s", run_dir, exc)
    df = _finish(frames, str(runs_dir))
    df.attrs["skipped"] = skipped
    return df


# ----------------------------------------------------------------------------------------------------
# wandb
# ----------------------------------------------------------------------------------------------------
def wandb_history_to_tidy(
    history: Iterable[Mapping[str, Any]], columns: Mapping[str, Any], metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """Tidy rows from wandb history rows (dicts with ``_step`` and metric keys; keys starting with ``_`` are
    wandb's own; ``None`` means "not logged at this step" and is dropped; NaN is kept as in the local file)."""
    keep = _metric_filter(metrics)
    rows: dict[tuple[int, str], float] = {}
    for rec in history:
        if "_step" not in rec or rec["_step"] is None:
            continue
        step = int(rec["_step"])
        for key, v in rec.items():
            if key.startswith("_") or v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not keep(key):
                continue
            rows[(step, key)] = float(v)  # a repeated (step, metric) keeps the last value, as the local file does
    return _tidy(((s, m, v) for (s, m), v in rows.items()), columns)


def _unwrap_wandb_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """wandb's run.config without its private keys; old servers wrap values as {'value': …}."""
    out = {}
    for k, v in cfg.items():
        if str(k).startswith("_"):
            continue
        if isinstance(v, Mapping) and set(v) == {"value"}:
            v = v["value"]
        out[k] = v
    return out


def collect_wandb(
    project: str, filters: Mapping[str, Any] | None = None, metrics: Sequence[str] | None = None, api: Any = None
) -> pd.DataFrame:
    """The results table of the runs of a wandb project (``"entity/project"``), read with ``wandb.Api()``.

    ``filters`` is a wandb/MongoDB run filter (e.g. ``{"config.task.name": "forcefield"}``). Our runs'
    wandb ids are their run identities, so ``run_id`` matches the local table. ``run_dir`` is
    ``wandb:<entity>/<project>/<id>``.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    frames = []
    for run in api.runs(project, filters=dict(filters or {})):
        config = _unwrap_wandb_config(run.config)
        summary = getattr(run, "summary", {}) or {}
        status = {"state": getattr(run, "state", None), "step": summary.get("_step")}
        path = getattr(run, "path", None)
        where = "wandb:" + ("/".join(path) if path else f"{project}/{run.id}")
        columns = run_columns(config, status, where, run_id=run.id)
        frames.append(wandb_history_to_tidy(run.scan_history(), columns, metrics))
    return _finish(frames, f"wandb:{project}")


# ----------------------------------------------------------------------------------------------------
# I/O
# ----------------------------------------------------------------------------------------------------
def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reindex(columns=TABLE_COLUMNS).copy()
    for c in _STRING_COLUMNS:
        df[c] = df[c].astype("string").astype("category")
    for c in _FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in _INT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    df["augment"] = (
        df["augment"]
        .map(lambda v: v if isinstance(v, bool) else (str(v) == "True" if v is not None and not pd.isna(v) else pd.NA))
        .astype("boolean")
    )
    return df


def _have_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str = "results", fmt: str = "auto") -> Path:
    """Write ``<out_dir>/<stem>.parquet`` (pyarrow available, ``fmt='auto'|'parquet'``) or ``.csv``, atomically."""
    if fmt not in ("auto", "parquet", "csv"):
        raise ValueError(f"fmt must be 'auto', 'parquet' or 'csv', got {fmt!r}")
    if fmt == "parquet" and not _have_pyarrow():
        raise ImportError("writing Parquet needs pyarrow (pip install pyarrow); use fmt='csv'")
    use_parquet = fmt == "parquet" or (fmt == "auto" and _have_pyarrow())
    path = Path(out_dir) / f"{stem}.{'parquet' if use_parquet else 'csv'}"
    if use_parquet:
        atomic_write(path, lambda f: df.to_parquet(f, index=False), mode="wb")
    else:
        atomic_write(path, lambda f: df.to_csv(f, index=False), mode="w")
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (Parquet or CSV) with the table's dtypes."""
    path = Path(path)
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix == ".csv":
        df = pd.read_csv(path, dtype={"run_id": str})
    else:
        raise ValueError(f"{path}: expected a .parquet or .csv results table")
    missing = [c for c in ("run_id", "step", "metric", "value") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a results table (missing columns {missing})")
    return _typed(df)


# ----------------------------------------------------------------------------------------------------
# Summary numbers: the early dip and the end of training
# ----------------------------------------------------------------------------------------------------
def summarize_pct(df: pd.DataFrame, threshold: float = 0.02) -> pd.DataFrame:
    """One row per run and ``equiv/[S/]T/pct`` series: the headline numbers of :mod:`equivrepro.metrics.headline`
    (first, minimum and final pct with their steps; ``left_step``, the first evaluation below the reference
    predictor — the fitted equivariant baseline, else the trivial one, named in ``reference``; ``below_step``, the
    first step at or after it with pct ≤ ``threshold``; the final L/L_base and L/L_null), plus ``below_step_any``
    (the first step with pct ≤ ``threshold`` whether or not the model had left its reference). Fractions."""
    from equivrepro.metrics.headline import headlines

    out = []
    run_cols = ["task", "model_label", "train_size", "optim_label", "augment", "seed", "primary_term"]
    for run_id, g in df.groupby("run_id", observed=True):
        rows = list(zip(g["step"].astype(int), g["metric"].astype(str), g["value"].astype(float)))
        first = g.iloc[0]
        for metric, h in headlines(rows, threshold=threshold).items():
            pct = sorted((s, v) for s, m, v in rows if m == metric and math.isfinite(v))
            d = h.as_dict()
            out.append(
                {
                    "run_id": run_id,
                    **{c: first.get(c) for c in run_cols},
                    "metric": metric,
                    **d,
                    "below_step_any": next((s for s, v in pct if v <= threshold), math.nan),
                }
            )
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------------
# Command line: equivrepro-collect
# ----------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Collect the tidy results table from local runs or a wandb project (``equivrepro-collect``)::

        equivrepro-collect --runs-dir runs/smoke --out results/smoke
        equivrepro-collect --runs-dir /shared/runs --metrics 'equiv/*' 'train/loss' --out results/paper
        equivrepro-collect --wandb my-entity/equivrepro --filter '{"config.task.name": "flowmatching"}' --out results/paper

    Writes ``<out>/results.parquet`` (or ``.csv``) and ``<out>/pct_summary.csv``. Load the table in Python with
    :func:`read_table`.
    """
    import argparse

    from equivrepro.atomic import atomic_write_text

    p = argparse.ArgumentParser(
        prog="equivrepro-collect",
        description=main.__doc__.split("\n\n")[0],
        epilog=main.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs-dir", type=Path, help="directory searched recursively for run directories")
    src.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs and histories with wandb.Api() (needs network and a login)")
    p.add_argument("--filter", default=None, help='wandb run filter as JSON (MongoDB syntax), e.g. \'{"state": "finished"}\'')
    p.add_argument("--metrics", nargs="*", default=None, help="glob patterns of metrics to keep (default: all)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--format", choices=["auto", "parquet", "csv"], default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[collect] %(message)s")
    logging.getLogger("equivrepro").setLevel(logging.INFO)
    if args.wandb:
        table = collect_wandb(args.wandb, filters=json.loads(args.filter) if args.filter else None, metrics=args.metrics)
    else:
        if args.filter:
            p.error("--filter applies to --wandb only")
        table = collect_local(args.runs_dir, metrics=args.metrics)
    path = write_table(table, args.out, fmt=args.format)
    atomic_write_text(args.out / "pct_summary.csv", summarize_pct(table).to_csv(index=False))
    skipped = table.attrs.get("skipped", [])
    print(
        f"{path}: {len(table)} rows from {table['run_id'].nunique()} runs"
        + (f"; {len(skipped)} directories skipped (see warnings)" if skipped else "")
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
