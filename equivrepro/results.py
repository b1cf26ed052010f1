"""The tidy results table: one row per (run, step, metric), with the run's settings as columns.

Sources
-------
* **Local runs** (default): every ``<run_dir>/metrics.csv`` under a runs directory (searched
  recursively) together with its ``config.yaml`` and ``status.json`` — what the training harness writes.
* **wandb** (when the runs were synced to a server): ``collect_wandb("entity/project")`` reads each
  run's config and full history through ``wandb.Api()``; rows are converted by the same code as local
  runs (:func:`wandb_history_to_tidy`), so figures do not care where the table came from.

Columns
-------
``run_id, run_dir, name, task, status, status_step, step, metric, value`` and, per run,
``model`` (class name), ``model_target``, ``n_params`` (trainable parameters, counted on the meta device
without allocating weights), ``model_label`` (e.g. ``EScAIPForceField 6.2M``), ``data_target``,
``train_size`` (``data.train_size`` or ``data.train_subset``: a count or a fraction; NaN = all data),
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
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import yaml

from equivrepro.train.checkpoint import atomic_write
from equivrepro.train.loggers import RESULTS_NAME, read_results

log = logging.getLogger("equivrepro.results")

__all__ = [
    "RUN_COLUMNS", "GROUP_COLUMNS", "TABLE_COLUMNS", "find_run_dirs", "run_columns", "load_local_run",
    "collect_local", "wandb_history_to_tidy", "collect_wandb", "write_table", "read_table",
    "summarize_pct", "parse_equiv_metric", "format_count", "format_train_size",
]

CONFIG_NAME = "config.yaml"
STATUS_NAME = "status.json"

#: Per-run columns, in table order (after the tidy ``step, metric, value``).
RUN_COLUMNS = [
    "run_id", "run_dir", "name", "task", "status", "status_step",
    "model", "model_target", "n_params", "model_label", "data_target", "train_size",
    "optim", "lr", "optim_label", "schedule", "augment", "seed", "batch_size", "max_steps", "primary_term",
]
#: Settings that tell sweep points apart; runs equal on all of them are replicates (seeds).
GROUP_COLUMNS = ["task", "model_target", "n_params", "train_size", "optim", "lr", "schedule", "augment", "batch_size", "max_steps"]
TABLE_COLUMNS = RUN_COLUMNS[:6] + ["step", "metric", "value"] + RUN_COLUMNS[6:]
_STRING_COLUMNS = ["run_id", "run_dir", "name", "task", "status", "model", "model_target", "model_label", "data_target",
                   "optim", "optim_label", "schedule", "primary_term", "metric"]
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


def parse_equiv_metric(metric: str) -> tuple[str, str, str, str] | None:
    """``'equiv/t=0.4/velocity/pct'`` → ``('equiv', 't=0.4', 'velocity', 'pct')``; ``'equiv/mse/pct'`` →
    ``('equiv', '', 'mse', 'pct')``; anything not of the form ``equiv*/[S/]T/Q`` → None."""
    parts = metric.split("/")
    if not parts[0].startswith("equiv") or len(parts) not in (3, 4):
        return None
    if len(parts) == 3:
        return parts[0], "", parts[1], parts[2]
    return parts[0], parts[1], parts[2], parts[3]


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
    path = run_dir / "checkpoints" / "last.pt"
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


def run_columns(config: Mapping[str, Any], status: Mapping[str, Any] | None = None, run_dir: str | Path | None = None,
                run_id: str | None = None) -> dict[str, Any]:
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
    train_size = data.get("train_size", data.get("train_subset"))  # the flow-matching data module calls it train_subset
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


def find_run_dirs(runs_dir: str | Path) -> list[Path]:
    """Directories under ``runs_dir`` (recursively) that hold a results file."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs directory {runs_dir} does not exist")
    return sorted(p.parent for p in runs_dir.rglob(RESULTS_NAME) if p.is_file())


def load_local_run(run_dir: str | Path, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The tidy rows of one run directory (``metrics``: optional glob patterns, e.g. ``['equiv/*/pct']``)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_NAME
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir / RESULTS_NAME} has no {CONFIG_NAME} next to it: not a run directory")
    config = yaml.safe_load(cfg_path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path}: expected a mapping, got {type(config).__name__}")
    status_path = run_dir / STATUS_NAME
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    keep = _metric_filter(metrics)
    rows = [r for r in read_results(run_dir / RESULTS_NAME) if keep(r[1])]
    return _tidy(rows, run_columns(config, status, run_dir))


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
    for run_dir in find_run_dirs(runs_dir):
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
def wandb_history_to_tidy(history: Iterable[Mapping[str, Any]], columns: Mapping[str, Any], metrics: Sequence[str] | None = None) -> pd.DataFrame:
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


def collect_wandb(project: str, filters: Mapping[str, Any] | None = None, metrics: Sequence[str] | None = None, api: Any = None) -> pd.DataFrame:
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
    df["augment"] = df["augment"].map(lambda v: v if isinstance(v, bool) else (str(v) == "True" if v is not None and not pd.isna(v) else pd.NA)).astype("boolean")
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
def summarize_pct(df: pd.DataFrame, metric_glob: str = "equiv/*pct", threshold: float = 0.02) -> pd.DataFrame:
    """Per run and pct metric: pct at the first evaluation, the first step at which pct ≤ ``threshold``
    (``below_step``, NaN if never), the minimum ("dip") and its step, and the final pct — the numbers the
    paper's "≤ 2 % within 1k–10k steps" claim needs. Values are fractions."""
    sel = df[df.metric.astype(str).map(lambda m: fnmatch.fnmatchcase(m, metric_glob) and m.endswith("/pct"))]
    out = []
    for (run_id, metric), g in sel.groupby(["run_id", "metric"], observed=True):
        g = g.dropna(subset=["value"]).sort_values("step")
        if g.empty:
            continue
        i = g["value"].idxmin()
        first = g.iloc[0]
        below = g[g["value"] <= threshold]
        out.append({
            "run_id": run_id, "task": first["task"], "model_label": first["model_label"], "train_size": first["train_size"],
            "optim_label": first["optim_label"], "augment": first["augment"], "seed": first["seed"],
            "primary_term": first.get("primary_term"), "metric": metric,
            "first_step": int(first["step"]), "first_pct": float(first["value"]),
            "below_step": float(below.iloc[0]["step"]) if len(below) else math.nan,
            "dip_step": int(g.loc[i, "step"]), "dip_pct": float(g.loc[i, "value"]),
            "final_step": int(g.iloc[-1]["step"]), "final_pct": float(g.iloc[-1]["value"]),
        })
    return pd.DataFrame(out)
