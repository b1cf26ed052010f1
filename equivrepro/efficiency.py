"""The efficiency gap, measured: model families of a task compared at equal training compute.

    equivrepro-efficiency --scale smoke                        # what `make reproduce-efficiency-gap` runs
    equivrepro-efficiency --scale smoke --tasks forcefield     # one task's study
    equivrepro-efficiency --scale paper --launcher slurm -- hydra.launcher.partition=gpu   # submit the paper grid
    equivrepro-efficiency --scale paper --runs-dir /shared/runs                         # fit and draw what is there

What a task's study contains is declared in its card (``efficiency`` block, :class:`~equivrepro.catalog.EfficiencySpec`):
families (the non-equivariant model with augmentation, the equivariant ones) with their model configs at a few
sizes, the base overrides, the headline loss, and the derived test-time-twirled family.

**One run per (family, size)**, evaluated at log-spaced steps. The cards use schedules that do not depend on
``trainer.max_steps`` (constant after a fixed warm-up), and neither do the data order and the per-step seeds, so
the held-out loss at step s of a run *is* that of an s-step run (``tests/test_efficiency.py`` checks it): one
run gives the loss at every budget along it. Training compute at step s is ``s × compute/flops_per_step`` (FLOPs,
:mod:`equivrepro.compute`; forward + backward, 2 per multiply–add) or s × seconds per step (wall clock). The
seconds per step come from :func:`time_steps` — every model of the study timed in turn in one process, so that all
share the machine's load of the moment (``--timing timed``, the default at smoke scale: a shared CPU makes runs'
own timings differ several-fold for one model) — or from each run's median ``time/step_s`` (``--timing runs``,
the default at paper scale, where runs have their GPUs to themselves). A constant LR is not the best schedule
for every budget (a cosine tuned to each budget would lower every family's loss somewhat); it is the same for all.

**The twirled family** needs no run: for a run of the twirl's source family, test-time twirling over K Haar
rotations has expected loss ``L_mean + L_equiv / K`` on a quadratic loss term (:mod:`equivrepro.metrics.twirl`),
at the same training compute and K× the inference cost (``inference_flops``).

**Analysis**, per task and per compute axis (FLOPs, seconds): each family's compute-optimal frontier over its
sizes (the lowest loss reachable with at most C: :func:`~equivrepro.analysis.scaling.compute_optimal_frontier`
made monotone by :func:`best_within_budget`), a power law
``L(C) = L∞ + A·C^(−γ)`` fitted to it with bootstrap intervals, the optimal size against budget; at log-spaced
budgets the winning family and its factor (:func:`~equivrepro.analysis.scaling.compare_families`, interpolated
between measured points, never extrapolated), and the break-even per-step slowdown s* = (1 − pct)^(−1/γ) of the
reference family against the slowdown measured at matched size (ratio of FLOPs and of seconds per step).

Outputs: ``<results_dir>/efficiency_points.csv`` (every point), ``<results_dir>/efficiency_comparison.csv`` (every
budget: each family's loss, winner and factor, pct of the reference, s*), ``<results_dir>/efficiency_summary.json``,
``<results_dir>/efficiency_timing.csv`` (the side-by-side timings, reused by later calls; ``--timing retime`` redoes them), and
``<figures_dir>/efficiency-{flops,seconds,frontier}.{png,pdf,csv}``; a short table on stdout. Runs live under
the runs directory like all others: finished runs are reused, interrupted ones resume, relaunching runs nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from equivrepro import catalog
from equivrepro.catalog import MEAN_OVER_SUFFIXES, EfficiencySpec
from equivrepro.metrics import keys
from equivrepro.sweeps import Job, add_launch_arguments, launch_dirs, launch_multirun, run_locally, sweep_jobs

__all__ = [
    "StudyJob",
    "AxisResult",
    "TaskResult",
    "AXES",
    "study_jobs",
    "read_run_points",
    "read_points",
    "twirled_points",
    "analyse_task",
    "analyse",
    "task_summary",
    "summary_table",
    "report",
    "run_study",
    "main",
]

log = logging.getLogger("equivrepro.efficiency")

#: compute axes: column of the points frame → label
AXES: dict[str, str] = {"flops": "training FLOPs", "seconds": "training wall-clock seconds"}
#: the decomposition quantities read per evaluation (``equiv/[S/]T/<quantity>``)
_QUANTITIES = ("total", "total_se", "mean", "equiv", "pct", "null_total", "baseline_total")
_POINT_COLUMNS = [
    "task",
    "family",
    "kind",
    "equivariant",
    "model",
    "size_index",
    "run_id",
    "run_dir",
    "status",
    "n_params",
    "step",
    "flops",
    "seconds",
    "loss",
    "loss_se",
    "L_total",
    "L_mean",
    "L_equiv",
    "pct",
    "L_null",
    "L_baseline",
    "flops_per_step",
    "uncounted_share",
    "seconds_per_step",
    "seconds_source",
    "step_s",
    "profile_seconds_per_step",
    "flops_per_inference",
    "inference_flops",
    "twirl_k",
    "in_fit",
]


# ----------------------------------------------------------------------------------------------------
# The jobs
# ----------------------------------------------------------------------------------------------------
@dataclass
class StudyJob:
    """One run of a study: which task, family and model size it is, and its sweep job (run directory, identity)."""

    task: str
    family: str
    model: str
    size_index: int
    job: Job


def _model_of(job: Job) -> str:
    chosen = [o.split("=", 1)[1] for o in job.overrides if o.startswith("model=")]
    return chosen[-1]


def study_jobs(
    scale: str, runs_dir: Path, tasks: Sequence[str] | None = None, extra: Sequence[str] = (), cards_dir: str | Path | None = None
) -> list[StudyJob]:
    """Every run of the efficiency studies of ``tasks`` (default: every card with an ``efficiency`` block), composed
    with Hydra (one multirun per family: its base, ``model=<sizes>`` and its overrides) through :func:`sweep_jobs`."""
    all_cards = catalog.cards(cards_dir)
    wanted = list(tasks) if tasks else [t for t, c in all_cards.items() if c.efficiency is not None]
    out: list[StudyJob] = []
    for task in wanted:
        if task not in all_cards:
            raise SystemExit(f"no task card for {task!r}; tasks: {', '.join(all_cards)}")
        spec = all_cards[task].efficiency
        if spec is None:
            raise SystemExit(f"{all_cards[task].source}: task {task!r} declares no efficiency study (an 'efficiency' block)")
        for family, fam in spec.families.items():
            for job in sweep_jobs(spec.overrides(family, scale), runs_dir, extra):
                model = _model_of(job)
                out.append(StudyJob(task, family, model, fam.models[scale].index(model), job))
    return out


# ----------------------------------------------------------------------------------------------------
# Reading the runs
# ----------------------------------------------------------------------------------------------------
def _task_object(config: Mapping[str, Any]):
    from hydra.utils import instantiate

    task_cfg = dict(config["task"])
    task_cfg.pop("name", None)
    return instantiate(task_cfg, _convert_="all")


def _first(frame: pd.DataFrame, column: str, how: str = "first") -> float:
    if column not in frame:
        return math.nan
    v = frame[column].dropna()
    if v.empty:
        return math.nan
    return float(v.iloc[0] if how == "first" else v.median())


def read_run_points(sj: StudyJob, spec: EfficiencySpec, fit_from: int, equivariant: bool, timed: float | None = None) -> pd.DataFrame:
    """The evaluated points of one run: one row per evaluation step with the headline loss and the compute at it.

    ``seconds`` = step × ``timed`` (seconds per step from :func:`time_steps`) when given, else × the run's median
    ``time/step_s`` (else its ``compute/seconds_per_step``); ``step_s`` keeps the run's own median."""
    run = sj.job.run
    frame = run.metrics_frame()
    if frame is None or frame.empty:
        return pd.DataFrame(columns=_POINT_COLUMNS)
    config = run.read_config()
    task = _task_object(config)
    term = spec.term or task.primary_term.name
    known = {t.name: t for t in task.terms}
    if term not in known:
        raise ValueError(
            f"{catalog.card(sj.task).source}: efficiency.metric.term {term!r} is not a loss term of task {sj.task!r} "
            f"(terms: {sorted(known)})"
        )
    cols: dict[str, dict[str, str]] = {}  # quantity → suffix → column
    for c in frame.columns:
        k = keys.parse(str(c))
        if k is not None and k.family == keys.EQUIV and k.term == term and k.quantity in _QUANTITIES:
            cols.setdefault(k.quantity, {})[k.suffix] = c
    suffixes = sorted(cols.get("total", {}), key=keys.suffix_sort_key)
    if spec.suffix == MEAN_OVER_SUFFIXES:
        use = suffixes
    else:
        if spec.suffix not in suffixes:
            raise ValueError(
                f"{run.path}: no held-out {keys.key(keys.EQUIV, term, 'total', spec.suffix)} logged (evaluation "
                f"suffixes logged: {suffixes or 'none'}); check efficiency.metric in {catalog.card(sj.task).source}"
            )
        use = [spec.suffix]

    def q(quantity: str) -> pd.Series:
        have = [cols.get(quantity, {}).get(s) for s in use]
        if not use or any(h is None for h in have):
            return pd.Series(np.nan, index=frame.index)
        block = frame[have]
        if quantity == "total_se":  # suffixes treated as independent draws (each has its own noise, the samples are shared)
            return np.sqrt((block**2).sum(axis=1, min_count=len(have))) / len(have)
        return block.mean(axis=1, skipna=False)

    total, mean, equiv = q("total"), q("mean"), q("equiv")
    rows = pd.DataFrame(
        {
            "step": frame.index.astype(int),
            "L_total": total.values,
            "loss_se": q("total_se").values,
            "L_mean": mean.values,
            "L_equiv": equiv.values,
            "L_null": q("null_total").values,
            "L_baseline": q("baseline_total").values,
        }
    )
    rows["pct"] = rows["L_equiv"] / rows["L_total"]
    rows = rows[np.isfinite(rows["L_total"])].copy()
    flops_step = _first(frame, keys.scalar_key(keys.COMPUTE, "flops_per_step"))
    sec_profile = _first(frame, keys.scalar_key(keys.COMPUTE, "seconds_per_step"), how="median")
    step_s = _first(frame, keys.scalar_key(keys.TIME, "step_s"), how="median")
    if timed is not None and math.isfinite(timed):
        sec_step, source = timed, "timed"
    elif math.isfinite(step_s):
        sec_step, source = step_s, "run"
    else:
        sec_step, source = sec_profile, "profile"
    n_params = _first(frame, keys.scalar_key(keys.COMPUTE, "parameters"))
    status = run.read_status()
    rows = rows.assign(
        task=sj.task,
        family=sj.family,
        kind="trained",
        equivariant=equivariant,
        model=sj.model,
        size_index=sj.size_index,
        run_id=sj.job.run_id,
        run_dir=str(run.path),
        status=status.get("state"),
        n_params=n_params,
        flops=rows["step"] * flops_step,
        seconds=rows["step"] * sec_step,
        loss=rows["L_total"],
        flops_per_step=flops_step,
        uncounted_share=_first(frame, keys.scalar_key(keys.COMPUTE, "uncounted_share")),
        seconds_per_step=sec_step,
        seconds_source=source,
        step_s=step_s,
        profile_seconds_per_step=sec_profile,
        flops_per_inference=_first(frame, keys.scalar_key(keys.COMPUTE, "flops_per_inference")),
        twirl_k=np.nan,
        in_fit=rows["step"] >= max(int(fit_from), 1),
    )
    rows["inference_flops"] = rows["flops_per_inference"]
    if not getattr(known[term], "quadratic", True):
        log.warning("%s: term %r is not quadratic: the twirled family's L_mean + L_equiv/K is an approximation", sj.task, term)
    return rows.reindex(columns=_POINT_COLUMNS)


def twirled_points(points: pd.DataFrame, source: str, ks: Sequence[int]) -> pd.DataFrame:
    """The derived test-time-twirled families of the ``source`` family's trained points: loss L_mean + L_equiv/K (the
    expected loss of the K-rotation twirl for a quadratic term), same training compute, K× the inference FLOPs."""
    src = points[(points["family"] == source) & (points["kind"] == "trained")]
    out = []
    for k in ks:
        t = src.copy()
        t["family"] = f"{source} + twirl K={k}"
        t["kind"] = "twirled"
        t["twirl_k"] = float(k)
        t["loss"] = t["L_mean"] + t["L_equiv"] / k
        t["loss_se"] = np.nan
        t["pct"] = (t["L_equiv"] / k) / t["loss"]
        t["inference_flops"] = t["flops_per_inference"] * k
        out.append(t)
    return pd.concat(out, ignore_index=True) if out else points.iloc[:0].copy()


def read_points(
    jobs: Sequence[StudyJob], scale: str, cards_dir: str | Path | None = None, timing: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every point of every run that exists, with the twirled families derived; unfinished runs are included (their
    ``status`` says so) and runs without results are listed in the log. ``timing``: :func:`time_steps`'s table."""
    timed = dict(zip(timing["run_id"], timing["seconds_per_step"])) if timing is not None and len(timing) else {}
    frames, missing = [], []
    by_task: dict[str, list[StudyJob]] = {}
    for sj in jobs:
        by_task.setdefault(sj.task, []).append(sj)
    for task, tjobs in by_task.items():
        spec = catalog.card(task, cards_dir).efficiency
        task_frames = []
        for sj in tjobs:
            if not sj.job.run.metrics_path.exists():
                missing.append(f"{task} / {sj.family} / {sj.model}")
                continue
            pts = read_run_points(sj, spec, spec.fit_from(sj.family, scale), spec.families[sj.family].equivariant, timed.get(sj.job.run_id))
            if not sj.job.finished():
                log.warning(
                    "%s / %s / %s: run %s is not finished (%s); its points so far are used",
                    task,
                    sj.family,
                    sj.model,
                    sj.job.run.name,
                    sj.job.run.state,
                )
            task_frames.append(pts)
        if not task_frames:
            continue
        trained = pd.concat(task_frames, ignore_index=True)
        frames.append(trained)
        if spec.twirl_from is not None:
            frames.append(twirled_points(trained, spec.twirl_from, spec.twirl_k))
    if missing:
        log.warning("%d run(s) have no results yet: %s", len(missing), "; ".join(missing))
    if not frames:
        return pd.DataFrame(columns=_POINT_COLUMNS)
    return pd.concat(frames, ignore_index=True).reindex(columns=_POINT_COLUMNS)


# ----------------------------------------------------------------------------------------------------
# Seconds per step, measured side by side
# ----------------------------------------------------------------------------------------------------
def time_steps(jobs: Sequence[StudyJob], repeats: int = 7, warmup: int = 1, threads: int = 1) -> pd.DataFrame:
    """Wall seconds of one training step of every run's model, measured round-robin in this process.

    A run's own ``time/step_s`` is measured under whatever else ran beside it (on a shared machine, a factor of
    several between runs of one model); timing every model in turn, ``warmup + repeats`` rounds, puts them all under
    the same load, so their ratios are fair. A step is what the training loop does per step, minus data loading: the
    augmentation rotation (if on), ``task.training_loss``, backward, gradient clipping and the optimiser step, on the
    run's first training batch, with a freshly initialised model (same architecture and seed), ``threads`` threads.
    Returns ``run_id, task, family, model, seconds_per_step`` (the fastest of the repeats: the least disturbed, as
    ``timeit`` reports), ``median_seconds_per_step``, ``repeats``, ``threads``.
    """
    import torch
    from omegaconf import OmegaConf

    from equivrepro.rotations import haar_rotations
    from equivrepro.task import batch_size
    from equivrepro.train.build import build_from_config
    from equivrepro.train.optim import build_optimizer

    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    rows = []
    try:
        for task_name in dict.fromkeys(sj.task for sj in jobs):
            steps, data_cache = {}, {}
            for sj in (j for j in jobs if j.task == task_name and j.job.run.config_path.exists()):
                if sj.job.run_id in steps:
                    continue
                cfg = OmegaConf.create(sj.job.run.read_config())
                torch.manual_seed(int(cfg.seed))
                task, model, datamodule = build_from_config(cfg)
                key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True, default=str)
                if key not in data_cache:
                    datamodule.setup()
                    data_cache[key] = datamodule
                datamodule = data_cache[key]
                task.bind_data(datamodule.statistics())
                optimizer = build_optimizer(model, cfg.optim)
                n = min(int(cfg.trainer.batch_size), len(datamodule.train_dataset))
                batch = datamodule.collate([datamodule.train_dataset[i] for i in range(n)])
                clip, augment = cfg.trainer.get("grad_clip"), bool(cfg.trainer.get("augment", True))

                def step(task=task, model=model, optimizer=optimizer, batch=batch, clip=clip, augment=augment):
                    gen = torch.Generator().manual_seed(0)
                    b = task.rotate_batch(batch, haar_rotations(batch_size(batch), generator=gen)) if augment else batch
                    loss, _ = task.training_loss(model, b, gen)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
                    optimizer.step()

                model.train()
                steps[sj.job.run_id] = (sj, step)
            times: dict[str, list[float]] = {r: [] for r in steps}
            for round_ in range(int(warmup) + int(repeats)):
                for run_id, (_, step) in steps.items():
                    t0 = time.perf_counter()
                    step()
                    if round_ >= warmup:
                        times[run_id].append(time.perf_counter() - t0)
            for run_id, (sj, _) in steps.items():
                rows.append(
                    {
                        "run_id": run_id,
                        "task": sj.task,
                        "family": sj.family,
                        "model": sj.model,
                        "seconds_per_step": float(np.min(times[run_id])),
                        "median_seconds_per_step": float(np.median(times[run_id])),
                        "repeats": int(repeats),
                        "threads": int(threads),
                    }
                )
                log.info(
                    "timed %s / %s / %s: %.3f s per step (median %.3f)",
                    sj.task,
                    sj.family,
                    sj.model,
                    rows[-1]["seconds_per_step"],
                    rows[-1]["median_seconds_per_step"],
                )
    finally:
        torch.set_num_threads(previous)
    return pd.DataFrame(
        rows, columns=["run_id", "task", "family", "model", "seconds_per_step", "median_seconds_per_step", "repeats", "threads"]
    )


# ----------------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------------
@dataclass
class AxisResult:
    """One task on one compute axis: per family its frontier over sizes, the power law fitted to it and the
    optimal-size fit; the comparison at log-spaced budgets (interpolated points; ``comparison_fit``: the fits)."""

    axis: str
    frontiers: dict[str, Any]
    fits: dict[str, Any]
    optimal_size: dict[str, dict[str, float]]
    comparison: pd.DataFrame
    comparison_fit: pd.DataFrame


@dataclass
class TaskResult:
    task: str
    spec: EfficiencySpec
    axes: dict[str, AxisResult]
    slowdown: pd.DataFrame  # per equivariant family and size: FLOPs and seconds per step over the reference's


def best_within_budget(frontier):
    """The frontier as "the lowest loss reachable with at most C": a running minimum over budgets (one can always spend
    less: stop the run earlier), with the size that reaches it — the lower envelope Brehmer et al. fit, made
    monotone. Returns a :class:`~equivrepro.analysis.scaling.Frontier` with the same per-size table."""
    from equivrepro.analysis.scaling import Frontier

    loss = np.where(np.isfinite(frontier.best_loss), frontier.best_loss, np.inf)
    best_loss, best_size = frontier.best_loss.copy(), frontier.best_size.copy()
    run_min, run_size = np.inf, np.nan
    for i in range(loss.size):
        if loss[i] < run_min:
            run_min, run_size = loss[i], frontier.best_size[i]
        if np.isfinite(run_min):
            best_loss[i], best_size[i] = run_min, run_size
    return Frontier(frontier.budgets, frontier.sizes, frontier.losses, best_size, best_loss)


def _family_order(points: pd.DataFrame, spec: EfficiencySpec) -> list[str]:
    order = list(spec.families)
    twirls = [f"{spec.twirl_from} + twirl K={k}" for k in spec.twirl_k] if spec.twirl_from else []
    present = set(points["family"])
    return [f for f in order + twirls if f in present]


def _interp_log(x_known, y_known, x_new) -> np.ndarray:
    """Linear interpolation of y against log x (y may be ≤ 0, e.g. pct); NaN outside the known range."""
    xk, yk = np.asarray(x_known, float), np.asarray(y_known, float)
    ok = np.isfinite(xk) & np.isfinite(yk) & (xk > 0)
    xk, yk = xk[ok], yk[ok]
    out = np.full(np.shape(x_new), np.nan)
    if xk.size == 0:
        return out
    order = np.argsort(xk)
    xk, yk = xk[order], yk[order]
    xn = np.asarray(x_new, float)
    inside = (xn >= xk[0] * (1 - 1e-12)) & (xn <= xk[-1] * (1 + 1e-12))
    out[inside] = np.interp(np.log(xn[inside]), np.log(xk), yk) if xk.size > 1 else yk[0]
    return out


def _reference_pct(points: pd.DataFrame, frontier, budgets: np.ndarray, axis: str) -> np.ndarray:
    """pct of the reference family at each budget: that of the size its frontier holds there, read along that size's
    run at the budget (at the run's last point when the frontier keeps an earlier, better point)."""
    out = np.full(budgets.shape, np.nan)
    for i, b in enumerate(budgets):
        at = np.flatnonzero((frontier.budgets <= b * (1 + 1e-12)) & np.isfinite(frontier.best_size))
        if at.size == 0:
            continue
        run = points[points["n_params"] == frontier.best_size[at[-1]]]
        c = run[axis].to_numpy(dtype=float)
        if c.size:
            out[i] = float(_interp_log(c, run["pct"], [min(b, float(np.nanmax(c)))])[0])
    return out


def _slowdowns(points: pd.DataFrame, spec: EfficiencySpec) -> pd.DataFrame:
    """Per equivariant family and size: FLOPs and seconds per step over the reference family's at the same parameter
    count (interpolated in log–log between the reference's sizes); outside the reference's size range, over the
    reference size at the same grid position (``matched`` says which). ``seconds`` uses the study's seconds per
    step (side by side, or the runs'), ``seconds_run`` the runs' own median ``time/step_s``."""
    from equivrepro.analysis.scaling import loglog_interpolate

    runs = points[points["kind"] == "trained"].drop_duplicates("run_id")
    ref = runs[runs["family"] == spec.reference].sort_values("n_params")
    rows = []
    if ref.empty:
        return pd.DataFrame(rows)
    for family, fam in spec.families.items():
        if not fam.equivariant:
            continue
        for _, r in runs[runs["family"] == family].sort_values("n_params").iterrows():
            pos = ref.iloc[min(int(r["size_index"]), len(ref) - 1)]
            row = {"family": family, "model": r["model"], "n_params": r["n_params"], "matched": "parameter count"}
            for col, name in (("flops_per_step", "flops"), ("seconds_per_step", "seconds"), ("step_s", "seconds_run")):
                ok = ref[np.isfinite(ref[col]) & (ref[col] > 0)]
                v = float(r[col] / loglog_interpolate(ok["n_params"], ok[col], [r["n_params"]])[0]) if len(ok) else np.nan
                if not np.isfinite(v):
                    v = float(r[col] / pos[col]) if np.isfinite(pos[col]) and pos[col] > 0 else np.nan
                    row["matched"] = f"grid position ({pos['model']})"
                row[f"slowdown_{name}"] = v
            rows.append(row)
    return pd.DataFrame(rows)


def analyse_task(points: pd.DataFrame, spec: EfficiencySpec, n_boot: int = 500, n_budgets: int = 8, seed: int = 0) -> TaskResult:
    """Frontiers, power-law fits, the family comparison and the break-even slowdown of one task (its points)."""
    from equivrepro.analysis.scaling import (
        break_even_slowdown,
        break_even_slowdown_with_floor,
        compare_families,
        compute_optimal_frontier,
        fit_power_law,
    )

    families = _family_order(points, spec)
    axes: dict[str, AxisResult] = {}
    for axis in AXES:
        frontiers, fits, opt = {}, {}, {}
        for fam in families:
            fp = points[(points["family"] == fam) & points["in_fit"].astype(bool) & (points[axis] > 0) & (points["loss"] > 0)]
            fp = fp[np.isfinite(fp[axis]) & np.isfinite(fp["loss"])]
            if fp.empty:
                continue
            fr = best_within_budget(compute_optimal_frontier(fp["n_params"], fp[axis], fp["loss"]))
            frontiers[fam] = fr
            ok = np.isfinite(fr.best_loss)
            try:
                fits[fam] = fit_power_law(fr.budgets[ok], fr.best_loss[ok], n_boot=n_boot, seed=seed)
            except ValueError as exc:
                log.warning("%s / %s: no power-law fit on %s: %s", spec.task, fam, axis, exc)
            if fr.sizes.size >= 2:
                try:
                    opt[fam] = fr.fit_optimal_size(n_boot=n_boot, seed=seed)
                except ValueError as exc:
                    log.warning("%s / %s: no optimal-size fit on %s: %s", spec.task, fam, axis, exc)
        if not frontiers:
            axes[axis] = AxisResult(axis, {}, {}, {}, pd.DataFrame(), pd.DataFrame())
            continue
        lo = min(float(np.min(f.budgets)) for f in frontiers.values())
        hi = max(float(np.max(f.budgets)) for f in frontiers.values())
        budgets = np.geomspace(lo, hi, max(2, int(n_budgets))) if hi > lo else np.array([lo])
        curves = {f: (fr.budgets[np.isfinite(fr.best_loss)], fr.best_loss[np.isfinite(fr.best_loss)]) for f, fr in frontiers.items()}
        cmp = compare_families(curves, budgets)
        cmp_fit = compare_families(fits, budgets) if fits else pd.DataFrame({"budget": budgets})
        equivariant = [f for f in frontiers if f in spec.families and spec.families[f].equivariant]
        ref = spec.reference
        if equivariant and f"loss/{ref}" in cmp:
            eq = cmp[[f"loss/{f}" for f in equivariant]]
            cmp["best_equivariant"] = [equivariant[int(np.nanargmin(r))] if np.isfinite(r).any() else None for r in eq.to_numpy()]
            cmp["equivariant_factor"] = cmp[f"loss/{ref}"] / eq.min(axis=1, skipna=True)  # > 1: the best equivariant family is ahead
        if ref in frontiers:
            ref_points = points[(points["family"] == ref) & (points["kind"] == "trained") & points["in_fit"].astype(bool)]
            pct = _reference_pct(ref_points, frontiers[ref], budgets, axis)
            cmp["pct_reference"] = pct
            if ref in fits:
                fit = fits[ref]
                clipped = np.clip(pct, 0.0, 0.999)
                ok = np.isfinite(clipped)
                s_star = np.full(budgets.shape, np.nan)
                s_floor = np.full(budgets.shape, np.nan)
                s_star[ok] = break_even_slowdown(clipped[ok], fit.gamma)
                s_floor[ok] = break_even_slowdown_with_floor(clipped[ok], fit, budgets[ok])
                cmp["gamma_reference"] = fit.gamma
                cmp["s_star"] = s_star
                cmp["s_star_with_floor"] = s_floor
        axes[axis] = AxisResult(axis, frontiers, fits, opt, cmp, cmp_fit)
    return TaskResult(spec.task, spec, axes, _slowdowns(points, spec))


def analyse(
    points: pd.DataFrame, scale: str, n_boot: int = 500, n_budgets: int = 8, cards_dir: str | Path | None = None
) -> dict[str, TaskResult]:
    out = {}
    for task in dict.fromkeys(points["task"]):
        out[task] = analyse_task(points[points["task"] == task], catalog.card(task, cards_dir).efficiency, n_boot, n_budgets)
    return out


# ----------------------------------------------------------------------------------------------------
# Summary and table
# ----------------------------------------------------------------------------------------------------
def _clean(v: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN / inf to None, recursively."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def _headline_rows(cmp: pd.DataFrame, reference: str) -> dict[str, dict[str, Any]]:
    """The comparison rows at the smallest and the largest budget where the reference and an equivariant family (or,
    failing that, any two families) both have a measured loss."""
    if cmp.empty:
        return {}
    if "equivariant_factor" in cmp:
        ok = np.isfinite(cmp["equivariant_factor"].to_numpy(dtype=float))
    else:
        ok = cmp["winner"].notna().to_numpy()
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return {}
    return {"smallest": cmp.iloc[idx[0]].to_dict(), "largest": cmp.iloc[idx[-1]].to_dict()}


_RUN_COLUMNS = ("n_params", "flops_per_step", "uncounted_share", "seconds_per_step", "seconds_source", "step_s", "profile_seconds_per_step")


def task_summary(res: TaskResult, points: pd.DataFrame, jobs: Sequence[StudyJob], scale: str) -> dict[str, Any]:
    """The JSON-ready summary of one task: per family its fits and optimal-size fits, the comparison per budget (from
    interpolated points and from the fits), the headline rows, the measured slowdowns and every run's cost."""
    spec = res.spec
    pts = points[points["task"] == res.task]
    fams: dict[str, Any] = {}
    for fam in _family_order(pts, spec):
        fp = pts[pts["family"] == fam]
        entry: dict[str, Any] = {
            "kind": fp["kind"].iloc[0],
            "equivariant": bool(spec.families[fam].equivariant) if fam in spec.families else False,
            "models": sorted(set(fp["model"]), key=lambda m: int(fp[fp["model"] == m]["size_index"].iloc[0])),
            "n_params": sorted({int(n) for n in fp["n_params"].dropna()}),
            "points": int(len(fp)),
            "points_in_fit": int(fp["in_fit"].sum()),
            "final_loss": float(fp.sort_values("step").groupby("run_id")["loss"].last().min()),
        }
        if fam in spec.families:
            entry["fit_from_step"] = spec.fit_from(fam, scale)
        for axis, ar in res.axes.items():
            if fam in ar.fits:
                entry[f"fit_{axis}"] = ar.fits[fam].as_dict()
            if fam in ar.optimal_size:
                entry[f"optimal_size_{axis}"] = ar.optimal_size[fam]
        fams[fam] = entry
    runs = []
    for sj in (j for j in jobs if j.task == res.task):
        st = sj.job.run.read_status() if sj.job.run.exists() else {}
        r = pts[(pts["run_id"] == sj.job.run_id) & (pts["kind"] == "trained")]
        first = r.iloc[0] if len(r) else None
        runs.append(
            {
                "family": sj.family,
                "model": sj.model,
                "run": sj.job.run.name,
                "max_steps": sj.job.max_steps,
                "state": st.get("state"),
                "step": st.get("step"),
                "wall_s": st.get("wall_s"),
                "equivariance_eval_s": st.get("equivariance_eval_s"),
                **{c: (None if first is None else first[c]) for c in _RUN_COLUMNS},
            }
        )
    return _clean(
        {
            "task": res.task,
            "title": catalog.card(res.task).title if res.task in catalog.cards() else res.task,
            "about": spec.about,
            "metric": {"term": spec.term, "suffix": spec.suffix},
            "reference": spec.reference,
            "families": fams,
            "comparison": {axis: ar.comparison.to_dict(orient="records") for axis, ar in res.axes.items()},
            "comparison_fit": {axis: ar.comparison_fit.to_dict(orient="records") for axis, ar in res.axes.items()},
            "headline": {axis: _headline_rows(ar.comparison, spec.reference) for axis, ar in res.axes.items()},
            "slowdown": res.slowdown.to_dict(orient="records"),
            "runs": runs,
        }
    )


def _fmt(v: Any, spec: str = ".3g") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–" if v is None else str(v)
    return "–" if not math.isfinite(f) else format(f, spec)


def _gamma(fit: Mapping[str, Any] | None) -> str:
    if not fit:
        return "–"
    lo, hi = fit.get("gamma_lo"), fit.get("gamma_hi")
    ci = f" [{_fmt(lo, '.2f')}, {_fmt(hi, '.2f')}]" if lo is not None else ""
    return f"{_fmt(fit['gamma'], '.2f')}{ci} ({fit['kind']})"


def summary_table(summary: Mapping[str, Any]) -> str:
    """The short text table: per task, γ per family on both axes, the winners at the smallest and largest budget,
    and s* against the measured slowdown."""
    lines = []
    for task, t in summary["tasks"].items():
        metric = t["metric"]
        what = f"{metric['term'] or 'primary term'}" + (
            ", mean over suffixes" if metric["suffix"] == MEAN_OVER_SUFFIXES else (f" at {metric['suffix']}" if metric["suffix"] else "")
        )
        lines.append(f"== {task}: {t['title']} — held-out L_total ({what}) ==")
        lines.append(f"  {'family':44s} {'γ vs FLOPs [95 % CI]':30s} {'γ vs seconds [95 % CI]':30s} {'final L':>9s}")
        for fam, e in t["families"].items():
            lines.append(f"  {fam:44s} {_gamma(e.get('fit_flops')):30s} {_gamma(e.get('fit_seconds')):30s} {_fmt(e['final_loss']):>9s}")
        for row in t["slowdown"]:
            lines.append(
                f"  measured slowdown per step, {row['family']} {row['model']} vs {t['reference']} ({row['matched']}): "
                f"FLOPs {_fmt(row.get('slowdown_flops'), '.2f')}×, seconds {_fmt(row.get('slowdown_seconds'), '.2f')}×"
            )
        for axis, rows in t["headline"].items():
            for where, r in rows.items():
                unit = "FLOPs" if axis == "flops" else "s"
                eqf = r.get("equivariant_factor")
                verdict = "no equivariant family here"
                if eqf:
                    verdict = (
                        f"best equivariant {r.get('best_equivariant')} {'ahead' if eqf > 1 else 'behind'} by "
                        f"{_fmt(eqf if eqf > 1 else 1 / eqf, '.2f')}×"
                    )
                pct = r.get("pct_reference")
                lines.append(
                    f"  {where:8s} budget {_fmt(r['budget'], '.2e')} {unit}: winner {r.get('winner')} by "
                    f"{_fmt(r.get('ratio'), '.3f')}× over {r.get('runner_up')}; {verdict}; pct_ref "
                    f"{_fmt(100 * pct if pct is not None else None, '.2f')} %, s* {_fmt(r.get('s_star'), '.3f')} "
                    f"(with L∞: {_fmt(r.get('s_star_with_floor'), '.3f')})"
                )
        lines.append("")
    st = summary.get("study", {})
    lines.append(
        f"study: {st.get('n_runs')} runs, run stage {_fmt(st.get('run_stage_s'), '.0f')} s this session, Σ run wall times "
        f"{_fmt(st.get('sum_run_wall_s'), '.0f')} s, load average {st.get('load_start')} → {st.get('load_end')}"
    )
    return "\n".join(lines)


def study_timing(jobs: Sequence[StudyJob], mode: str, cache: Path, repeats: int = 7) -> pd.DataFrame | None:
    """The side-by-side timings of the runs (``mode``: ``timed`` reuses ``cache`` for the tasks whose runs it holds and
    times the other tasks' runs, ``retime`` times all, ``runs`` none: each run's own ``time/step_s``)."""
    from equivrepro.atomic import atomic_write_text

    if mode == "runs":
        return None
    have = pd.read_csv(cache) if cache.exists() and mode == "timed" else pd.DataFrame(columns=["run_id", "task"])
    present = [sj for sj in jobs if sj.job.run.config_path.exists()]
    # a task with any run not yet timed is timed anew as a whole: its models must share one load
    stale = {sj.task for sj in present if sj.job.run_id not in set(have["run_id"])}
    todo = [sj for sj in present if sj.task in stale]
    have = have[~have["task"].isin(stale)]
    if todo:
        log.info("timing %d model(s) side by side (%d rounds each)", len({sj.job.run_id for sj in todo}), repeats + 1)
        load0 = _load()
        new = time_steps(todo, repeats=repeats).assign(load_start=str(load0), load_end=str(_load()))
        have = pd.concat([have, new], ignore_index=True) if len(have) else new
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, have.to_csv(index=False))
    return have


def report(
    jobs: Sequence[StudyJob],
    scale: str,
    results_dir: Path,
    figures_dir: Path,
    study: Mapping[str, Any],
    n_boot: int = 500,
    n_budgets: int = 8,
    cards_dir: str | Path | None = None,
    timing: str = "runs",
) -> int:
    """Read every run, fit, write ``efficiency_points.csv`` / ``efficiency_summary.json``, draw, print; exit status."""
    from equivrepro.atomic import atomic_write_text
    from equivrepro.plots import efficiency as plots

    timed = study_timing(jobs, timing, results_dir / "efficiency_timing.csv")
    points = read_points(jobs, scale, cards_dir, timed)
    if points.empty:
        log.error("no run of the study has results yet: run it first (drop --draw-only)")
        return 1
    results = analyse(points, scale, n_boot, n_budgets, cards_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / "efficiency_points.csv", points.to_csv(index=False))
    walls = [float(sj.job.run.read_status().get("wall_s") or 0.0) for sj in {j.job.run_id: j for j in jobs}.values() if sj.job.run.exists()]
    summary = {
        "study": _clean({**study, "n_runs": len({j.job.run_id for j in jobs}), "sum_run_wall_s": float(sum(walls))}),
        "tasks": {t: task_summary(r, points, jobs, scale) for t, r in results.items()},
    }
    atomic_write_text(results_dir / "efficiency_summary.json", json.dumps(summary, indent=2) + "\n")  # family order kept
    comparison = pd.concat(
        [ar.comparison.assign(task=t, axis=axis) for t, r in results.items() for axis, ar in r.axes.items() if not ar.comparison.empty],
        ignore_index=True,
    )
    atomic_write_text(results_dir / "efficiency_comparison.csv", comparison.to_csv(index=False))
    figures_dir.mkdir(parents=True, exist_ok=True)
    drawn = plots.draw_all(points, results, figures_dir)
    print(summary_table(summary), flush=True)
    log.info(
        "points: %s (%d rows); summary: %s; figures: %s",
        results_dir / "efficiency_points.csv",
        len(points),
        results_dir / "efficiency_summary.json",
        ", ".join(str(p) for p in drawn),
    )
    return 0


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def _load() -> tuple[float, float, float]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:  # pragma: no cover - platforms without getloadavg
        return (math.nan, math.nan, math.nan)


def run_study(
    jobs: Sequence[StudyJob],
    scale: str,
    runs_dir: Path,
    launcher: str,
    workers: int,
    extra: Sequence[str],
    cards_dir: str | Path | None = None,
) -> list[str]:
    """Run (or resume) the unfinished runs: here, ``workers`` at a time, or one Hydra multirun per family through
    ``launcher``. Returns the names of what failed."""
    log_extra = ["logger=none", "trainer.progress_bar=false"] if scale == "smoke" else []  # not part of run identity
    todo = {sj.job.run_id for sj in jobs if not sj.job.finished()}
    log.info(
        "%d runs in the study, %d to run or resume%s",
        len({sj.job.run_id for sj in jobs}),
        len(todo),
        f", {workers} at a time" if launcher == "local" and todo else "",
    )
    if not todo:
        return []
    if launcher == "local":
        return sorted({j.run.name for j in run_locally([sj.job for sj in jobs], runs_dir, workers, [*log_extra, *extra])})
    failed = []
    for task in dict.fromkeys(sj.task for sj in jobs):
        spec = catalog.card(task, cards_dir).efficiency
        for family in spec.families:
            if any(not sj.job.finished() for sj in jobs if sj.task == task and sj.family == family):
                if launch_multirun(spec.overrides(family, scale), runs_dir, launcher, [*log_extra, *extra]) != 0:
                    failed.append(f"{task} / {family}")
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="equivrepro-efficiency",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_launch_arguments(p, catalog.SCALES, "family")
    p.add_argument("--tasks", nargs="+", default=None, help="default: every task whose card has an efficiency block")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples of every fit")
    p.add_argument("--budgets", type=int, default=8, help="log-spaced budgets of the comparison table")
    p.add_argument(
        "--timing",
        choices=("timed", "retime", "runs"),
        default=None,
        help="seconds per step: timed side by side here (default at smoke scale; cached), retime (redo), or the runs' own",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[efficiency] %(message)s")
    logging.getLogger("equivrepro").setLevel(logging.INFO)
    scale = args.scale
    dirs = launch_dirs(args)
    workers, runs_dir, results_dir, figures_dir = dirs.workers, dirs.runs, dirs.results, dirs.figures
    extra = list(args.extra)
    t0, load0 = time.perf_counter(), _load()
    compose_extra = extra + ([f"hydra/launcher={args.launcher}"] if args.launcher != "local" else [])
    jobs = study_jobs(scale, runs_dir, args.tasks, compose_extra)
    to_run = sorted({sj.job.run.name for sj in jobs if not sj.job.finished()})
    failed: list[str] = []
    existing = [sj for sj in jobs if sj.job.run.exists()]
    if args.draw_only:
        pass
    elif scale == "paper" and existing and not args.launch:
        log.info(
            "paper scale: %s already holds %d run(s) of the study, so nothing is launched; fitting what is there "
            "(add --launch to start or resume the missing ones)",
            runs_dir,
            len(existing),
        )
        to_run = []
    else:
        failed = run_study(jobs, scale, runs_dir, args.launcher, workers, extra)
    ran_s = time.perf_counter() - t0
    if args.no_draw:
        log.info("runs done in %.0f s (load average %s → %s)", ran_s, load0, _load())
        return 1 if failed else 0
    study = {
        "scale": scale,
        "ran": to_run if not args.draw_only else [],
        "failed": failed,
        "run_stage_s": ran_s,
        "load_start": load0,
        "load_end": _load(),
        "workers": workers,
        "cpu_count": os.cpu_count(),
    }
    timing = args.timing or ("timed" if scale == "smoke" else "runs")
    rc = report(
        jobs, scale, results_dir, figures_dir, {**study, "timing": timing}, n_boot=args.n_boot, n_budgets=args.budgets, timing=timing
    )
    log.info("done in %.0f s", time.perf_counter() - t0)
    if failed:
        log.error("runs that exited with an error: %s", failed)
    return 1 if (failed or rc) else 0


if __name__ == "__main__":
    sys.exit(main())
