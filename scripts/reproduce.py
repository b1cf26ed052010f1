#!/usr/bin/env python
"""Reproduce the paper's figures: run (or find) the sweeps each figure needs, collect the results table, draw.

    python scripts/reproduce.py --scale smoke --figures headline            # what `make reproduce` runs
    python scripts/reproduce.py --scale smoke --figures all                  # every figure, CPU presets
    python scripts/reproduce.py --scale paper --figures forcefield-vary-data --launcher slurm \\
        -- hydra.launcher.partition=gpu hydra.launcher.account=myproj       # submit the paper-scale sweep
    python scripts/reproduce.py --scale paper --runs-dir /shared/runs --figures all   # draw from finished runs
    python scripts/reproduce.py --scale paper --source wandb:my-entity/equivrepro --figures all
    python scripts/reproduce.py --list                                       # figures, make targets, sweeps

Scales
------
* ``smoke`` — the CPU presets (``experiment=<task>_smoke``: tiny models, embedded data, a few hundred steps,
  equivariance every 25 steps, one seed). Every figure of the paper, on toy budgets; minutes, not days.
* ``paper`` — the paper's settings (``experiment=<task>_paper``, three seeds). If the runs directory already
  holds runs of a figure's sweeps (or ``--draw-only``, or ``--source wandb:…``), nothing is launched: the
  figure is drawn from what is there, and missing runs are listed.

Each figure draws exactly the runs of its sweeps: every sweep point is composed with Hydra and its run
identity (the hash in ``<runs_dir>/<name>-<hash>``) selects its rows from the table. Sweeps that share a
point (every sweep contains its task's default run) share that run; finished runs are never re-run and
unfinished ones resume, so the script can be interrupted and relaunched at any time.

Outputs: ``<results_dir>/results.{parquet,csv}`` (the table of every run under the runs directory),
``<results_dir>/pct_summary.csv`` (first / dip / final pct per run), and ``<figures_dir>/<figure>.{png,pdf,csv}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("reproduce")

SCALES = ("smoke", "paper")


@dataclass(frozen=True)
class Sweep:
    """One Hydra multirun per scale: ``python -m equivrepro.train -m <overrides>``."""

    task: str
    paper: tuple[str, ...]
    smoke: tuple[str, ...]
    about: str

    def overrides(self, scale: str) -> tuple[str, ...]:
        return getattr(self, scale)

    def command(self, scale: str) -> str:
        return "python -m equivrepro.train -m " + " ".join(self.overrides(scale))


def _s(text: str) -> tuple[str, ...]:
    return tuple(text.split())


PAPER_SEEDS = "seed=0,1,2"
SMOKE_SEED = "seed=0"

#: Every sweep of the paper (§5). Each contains its task's default run, so it runs once for all figures.
SWEEPS: dict[str, Sweep] = {
    # ---- force field (EScAIP-style, SPICE / MACE-OFF) ----
    "forcefield-default": Sweep(
        "forcefield", _s(f"task=forcefield experiment=forcefield_paper {PAPER_SEEDS}"), _s(f"task=forcefield experiment=forcefield_smoke {SMOKE_SEED}"),
        "EScAIP 6M, 950k MACE-OFF conformers, batch 64, AdamW 1e-5 cosine, rotation augmentation (the default run)"),
    "forcefield-model": Sweep(
        "forcefield", _s(f"task=forcefield experiment=forcefield_paper model=escaip_6m,escaip_4m,escaip_1m {PAPER_SEEDS}"),
        _s(f"task=forcefield experiment=forcefield_smoke model.hidden_size=32,16,8 {SMOKE_SEED}"),
        "model size 6M / 4M / 1M (smoke: escaip_tiny at hidden 32 / 16 / 8)"),
    "forcefield-data": Sweep(
        "forcefield", _s(f"task=forcefield experiment=forcefield_paper +sweep/forcefield_data=950k,50k,5k,500_bs1 {PAPER_SEEDS}"),
        _s(f"task=forcefield experiment=forcefield_smoke +sweep/forcefield_data_smoke=all,n160,n40,n8_bs1 {SMOKE_SEED}"),
        "training-set size 950k / 50k / 5k at batch 64, 500 at batch 1 (paired); smoke: all / 160 / 40 at batch 8, 8 at batch 1"),
    "forcefield-optim": Sweep(
        "forcefield", _s(f"task=forcefield experiment=forcefield_paper +sweep/forcefield_optim=adamw_1e-5,adamw_1e-4,adamw_1e-3,sgd_1e-5 {PAPER_SEEDS}"),
        _s(f"task=forcefield experiment=forcefield_smoke +sweep/forcefield_optim_smoke=adamw_3e-3,adamw_1e-3,adamw_1e-2,sgd_3e-3 {SMOKE_SEED}"),
        "optimizer / learning rate pairs: AdamW 1e-5 (default), 1e-4, 1e-3, SGD 1e-5 (smoke: AdamW 3e-3 (default), 1e-3, 1e-2, SGD 3e-3)"),
    "forcefield-augment": Sweep(
        "forcefield", _s(f"task=forcefield experiment=forcefield_paper trainer.augment=false,true {PAPER_SEEDS}"),
        _s(f"task=forcefield experiment=forcefield_smoke trainer.augment=false,true {SMOKE_SEED}"),
        "Haar-random rotation augmentation off (upstream EScAIP) / on (harness default)"),
    # ---- flow matching (Proteina-style, PDB Cα backbones) ----
    "flowmatching-default": Sweep(
        "flowmatching", _s(f"task=flowmatching experiment=flowmatching_paper {PAPER_SEEDS}"), _s(f"task=flowmatching experiment=flowmatching_smoke {SMOKE_SEED}"),
        "Proteina 60M, 100% of the PDB training set, Adam 1e-4, rotation augmentation (the default run)"),
    "flowmatching-model": Sweep(
        "flowmatching", _s(f"task=flowmatching experiment=flowmatching_paper model=proteina_60m,proteina_400m {PAPER_SEEDS}"),
        _s(f"task=flowmatching experiment=flowmatching_smoke model.dim=64,128 {SMOKE_SEED}"),
        "model size 60M / 400M (smoke: proteina_tiny at token width 64 / 128)"),
    "flowmatching-data": Sweep(
        "flowmatching", _s(f"task=flowmatching experiment=flowmatching_paper data.train_subset=null,0.01,0.001 {PAPER_SEEDS}"),
        _s(f"task=flowmatching experiment=flowmatching_smoke data.train_subset=null,0.25,0.05 {SMOKE_SEED}"),
        "training-set fraction 100% (null: all) / 1% / 0.1% (smoke: 100% / 25% / 5% of the 62 embedded training chains)"),
    # ---- voxel denoising (VoxMol-style, GEOM-drugs) ----
    "voxels-default": Sweep(
        "voxels", _s(f"task=voxels experiment=voxels_paper {PAPER_SEEDS}"), _s(f"task=voxels experiment=voxels_smoke {SMOKE_SEED}"),
        "3D U-Net 111M, 100% of GEOM-drugs, AdamW 2e-5, rotation augmentation (the default run)"),
    "voxels-model": Sweep(
        "voxels", _s(f"task=voxels experiment=voxels_paper model=voxunet_111m,voxunet_28m,voxunet_7m {PAPER_SEEDS}"),
        _s(f"task=voxels experiment=voxels_smoke model.width=4,2,1 {SMOKE_SEED}"),
        "model size 111M / 28M / 7M (U-Net width 32 / 16 / 8; smoke: voxunet_tiny at width 4 / 2 / 1)"),
    "voxels-data": Sweep(
        "voxels", _s(f"task=voxels experiment=voxels_paper data.train_size=null,0.5,0.25,0.1,0.01 {PAPER_SEEDS}"),
        _s(f"task=voxels experiment=voxels_smoke data.train_size=null,0.5,0.25,0.1,0.01 {SMOKE_SEED}"),
        "training-set fraction 100 % (null: all) / 50 / 25 / 10 / 1 % (smoke: the same fractions of the embedded conformers)"),
}


@dataclass(frozen=True)
class Figure:
    """A figure: the sweeps whose runs it draws and how (``draw(table, stem, **kwargs)``)."""

    sweeps: tuple[str, ...]
    draw: str  # name of a function in equivrepro.plots.figures
    about: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    paper_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra kwargs at paper scale (smoothing)

    def call_kwargs(self, scale: str) -> dict[str, Any]:
        return {**self.kwargs, **(self.paper_kwargs if scale == "paper" else {})}


_PROTEINA_SMOOTHING = {"smoothing": 1e-3}  # the paper's variable-span EMA for Proteina (span = step / 1000)

#: Every figure of the paper (§5.1–5.2) → its sweeps and drawing function. Target: make reproduce-figure-<name>.
FIGURES: dict[str, Figure] = {
    "headline": Figure(("forcefield-default", "flowmatching-default", "voxels-default"), "headline",
                       "pct vs training step, one panel per task (default runs)", paper_kwargs=_PROTEINA_SMOOTHING),
    "forcefield-pct": Figure(("forcefield-default",), "pct_curves", "EScAIP pct vs step, replicates (escaip-equivariance_error_training, -loglog)"),
    "forcefield-losses": Figure(("forcefield-default",), "loss_decomposition", "EScAIP L_total / L_mean / L_equiv (escaip-default-losscurves)"),
    "forcefield-vary-model": Figure(("forcefield-model",), "vary_model_size", "EScAIP pct for 6M / 4M / 1M (escaip-vary-model-size)"),
    "forcefield-vary-data": Figure(("forcefield-data",), "vary_data_size", "EScAIP pct for 950k / 50k / 5k / 500 (escaip-vary-train-size)"),
    "forcefield-losses-data": Figure(("forcefield-data",), "loss_decomposition", "EScAIP loss curves per training-set size (escaip-losscurves-{500,5k,50k})",
                                     kwargs={"panel_by": "train_size"}),
    "forcefield-vary-optim": Figure(("forcefield-optim",), "vary_optimizer", "EScAIP pct per optimizer / learning rate (escaip-vary-lropt)"),
    "forcefield-vary-aug": Figure(("forcefield-augment",), "vary_augmentation", "EScAIP pct with / without augmentation (vary-aug)"),
    "flowmatching-pct": Figure(("flowmatching-default",), "pct_curves", "Proteina 60M pct vs step per flow time t (prot_60M)", paper_kwargs=_PROTEINA_SMOOTHING),
    "flowmatching-losses": Figure(("flowmatching-default",), "loss_decomposition", "Proteina L_total / L_mean / L_equiv per t (prot_60M-total-mse, -mean-pred-error, -equiv-error)",
                                  paper_kwargs=_PROTEINA_SMOOTHING),
    "flowmatching-vary-model": Figure(("flowmatching-model",), "vary_model_size", "Proteina 60M vs 400M, pct per t (prot_60M, prot_400M)", paper_kwargs=_PROTEINA_SMOOTHING),
    "flowmatching-vary-data": Figure(("flowmatching-data",), "vary_data_size", "Proteina 100% / 1% / 0.1% of the data, pct per t (prot_60M_0.01, _0.001)",
                                     paper_kwargs=_PROTEINA_SMOOTHING),
    "flowmatching-final-pct": Figure(("flowmatching-model",), "final_pct_bars", "final pct per flow time t, 60M and 400M (prot_60M_final_step)",
                                     paper_kwargs=_PROTEINA_SMOOTHING),
    "flowmatching-final-pct-default": Figure(("flowmatching-default",), "final_pct_bars", "final pct per flow time t of the default run",
                                             paper_kwargs=_PROTEINA_SMOOTHING),
    "voxels-pct": Figure(("voxels-default",), "pct_curves", "VoxMol U-Net pct vs step"),
    "voxels-losses": Figure(("voxels-default",), "loss_decomposition", "VoxMol twirled loss and equivariance error (voxmol-loss-curves)"),
    "voxels-vary-model": Figure(("voxels-model",), "vary_model_size", "VoxMol 111M / 28M / 7M (voxmol-vary-model)"),
    "voxels-vary-data": Figure(("voxels-data",), "vary_data_size", "VoxMol 100 / 50 / 25 / 10 / 1 % of the data (voxmol-vary-data)"),
}


# ----------------------------------------------------------------------------------------------------
# Sweep expansion and run identities
# ----------------------------------------------------------------------------------------------------
def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs of a multirun: the Cartesian product of comma-separated sweep values (Hydra's basic sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(job) for job in itertools.product(*choices)]


@dataclass
class Job:
    overrides: list[str]
    run_id: str
    run_dir: Path
    max_steps: int

    def finished(self) -> bool:
        status = self.run_dir / "status.json"
        if not status.exists():
            return False
        s = json.loads(status.read_text())
        return s.get("state") == "finished" and int(s.get("step", -1)) >= self.max_steps


def compose_all(jobs: Sequence[Sequence[str]]) -> list:
    """The configs ``python -m equivrepro.train <job>`` would run (as ``equivrepro.train.app.compose_config``),
    composed in one Hydra context (a third faster than one context per job)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from equivrepro.train.app import CONFIG_DIR

    out = []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for job in jobs:
            cfg = compose(config_name="train", overrides=list(job), return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)  # so ${hydra:runtime.cwd} in paths resolves
            out.append(cfg)
    return out


def sweep_jobs(overrides: Sequence[str], runs_dir: Path, extra: Sequence[str] = ()) -> list[Job]:
    """Compose every job of a multirun (as ``python -m equivrepro.train -m`` would) and derive its run identity."""
    from equivrepro.train.build import run_dir_for, run_identity

    jobs = expand(list(overrides) + list(extra))
    cfgs = compose_all([job + [f"paths.runs_dir={runs_dir}"] for job in jobs])
    return [Job(job, run_identity(cfg), run_dir_for(cfg), int(cfg.trainer.max_steps)) for job, cfg in zip(jobs, cfgs)]


def launch_multirun(overrides: Sequence[str], runs_dir: Path, launcher: str, extra: Sequence[str] = ()) -> int:
    """Run one sweep as a Hydra multirun through ``launcher`` (slurm, submitit_local, local); its exit status."""
    cmd = [sys.executable, "-m", "equivrepro.train", "-m", *overrides, f"paths.runs_dir={runs_dir}", f"hydra/launcher={launcher}", *extra]
    log.info("launching: %s", " ".join(cmd[1:]))
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def run_locally(jobs: Sequence[Job], runs_dir: Path, workers: int, extra: Sequence[str] = ()) -> list[Job]:
    """Run (or resume) the unfinished jobs on this machine, ``workers`` processes at a time, each with one
    thread; output goes to ``<runs_dir>/_logs/<run_id>.log``. Returns the jobs that failed."""
    from concurrent.futures import ThreadPoolExecutor

    unique = list({j.run_id: j for j in jobs if not j.finished()}.values())
    if not unique:
        return []
    logs = runs_dir / "_logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    if workers > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    failed: list[Job] = []

    def one(i_job):
        i, job = i_job
        cmd = [sys.executable, "-m", "equivrepro.train", *job.overrides, f"paths.runs_dir={runs_dir}", *extra]
        t = time.perf_counter()
        log.info("[%d/%d] start %s: %s", i, len(unique), job.run_dir.name, " ".join(job.overrides))
        with open(logs / f"{job.run_id}.log", "w") as out:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = (logs / f"{job.run_id}.log").read_text().splitlines()[-15:]
            log.error("[%d/%d] FAILED %s (exit %d; log %s):\n  %s", i, len(unique), job.run_dir.name, rc, logs / f"{job.run_id}.log", "\n  ".join(tail))
            failed.append(job)
        else:
            log.info("[%d/%d] done %s in %.0f s", i, len(unique), job.run_dir.name, time.perf_counter() - t)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, enumerate(unique, 1)))
    return failed


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------
def select_figures(names: Sequence[str]) -> list[str]:
    if not names or list(names) == ["all"]:
        return list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise SystemExit(f"unknown figure(s) {unknown}; choose from: all, {', '.join(FIGURES)}")
    return list(dict.fromkeys(names))


def print_manifest(scale: str) -> None:
    print(f"{'figure':26s} {'make target':48s} sweep command(s) at SCALE={scale}")
    for name, fig in FIGURES.items():
        cmds = [SWEEPS[s].command(scale) for s in fig.sweeps]
        print(f"{name:26s} {'make reproduce-figure-' + name:48s} {cmds[0]}")
        for c in cmds[1:]:
            print(f"{'':26s} {'':48s} {c}")


def draw_figures(table, figure_names: Sequence[str], jobs_by_sweep: Mapping[str, list[Job]], scale: str, figures_dir: Path) -> list[str]:
    """Draw each figure from the rows of its sweeps' runs; returns the names that could not be drawn."""
    from equivrepro.plots import figures as F

    failed = []
    present = set(table["run_id"].astype(str).unique())
    for name in figure_names:
        fig = FIGURES[name]
        wanted = {j.run_id for s in fig.sweeps for j in jobs_by_sweep[s]}
        missing = sorted(wanted - present)
        if missing:
            where = {j.run_id: j.overrides for s in fig.sweeps for j in jobs_by_sweep[s]}
            log.warning("figure %s: %d of %d runs have no results yet: %s", name, len(missing), len(wanted),
                        "; ".join(" ".join(where[m]) for m in missing))
        sub = table[table["run_id"].astype(str).isin(wanted)]
        if sub.empty:
            log.error("figure %s: none of its runs has results; run its sweep(s) first: %s", name,
                      " | ".join(SWEEPS[s].command(scale) for s in fig.sweeps))
            failed.append(name)
            continue
        try:
            getattr(F, fig.draw)(sub, figures_dir / name, **fig.call_kwargs(scale))
            log.info("figure %s → %s.{png,pdf,csv}", name, figures_dir / name)
        except ValueError as exc:
            log.error("figure %s: %s", name, exc)
            failed.append(name)
    return failed


def print_pct_lines(summary, table, run_ids: Sequence[str], threshold: float = 0.02) -> None:
    """One line per default run and evaluation of its headline term: pct at the first evaluation, the first
    step with pct ≤ 2 %, the minimum and the final value (the numbers behind the paper's headline claim),
    each with L_total / L_null there (``total_rel_null``): a pct measured while the model still sits at
    the trivial predictor's loss (≈ 1) says nothing about learned equivariance."""
    if summary.empty:
        return
    rel = table[table["metric"].astype(str).str.endswith("/total_rel_null")]
    rel = {(str(r), str(m), int(s)): float(v) for r, m, s, v in zip(rel["run_id"], rel["metric"], rel["step"], rel["value"])}

    def at(r, step) -> str:
        v = rel.get((str(r["run_id"]), str(r["metric"])[: -len("/pct")] + "/total_rel_null", int(step)))
        return f" [L/L_null {v:.2f}]" if v is not None else ""

    rows = summary[summary["run_id"].astype(str).isin(set(run_ids))]
    for _, r in rows.sort_values(["task", "metric"]).iterrows():
        term = str(r.get("primary_term") or "")
        if term and not str(r["metric"]).endswith(f"/{term}/pct"):
            continue
        below = (f"step {int(r['below_step'])}{at(r, r['below_step'])}" if r["below_step"] == r["below_step"]
                 else f"never (min {100 * r['dip_pct']:.2f} %)")
        print(f"[pct] {r['task']:12s} {r['metric']:28s} first ≤ {100 * threshold:g} %: {below:32s} "
              f"step {r['first_step']}: {100 * r['first_pct']:5.2f} %{at(r, r['first_step'])}   "
              f"min {100 * r['dip_pct']:5.2f} % (step {r['dip_step']})   "
              f"final {100 * r['final_pct']:5.2f} % (step {r['final_step']}){at(r, r['final_step'])}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--scale", choices=SCALES, default="smoke")
    p.add_argument("--figures", nargs="+", default=["all"], help="figure names (see --list) or 'all'")
    p.add_argument("--runs-dir", type=Path, default=None, help="default: runs/<scale>")
    p.add_argument("--results-dir", type=Path, default=None, help="default: results/<scale>")
    p.add_argument("--figures-dir", type=Path, default=None, help="default: figures/<scale>")
    p.add_argument("--launcher", default="local", help="local: run here, --jobs at a time; slurm / submitit_local: one Hydra multirun per sweep through that launcher")
    p.add_argument("--jobs", type=int, default=None, help="local runs in parallel (default: smoke min(2, CPU cores), paper 1)")
    p.add_argument("--launch", action="store_true", help="paper scale: launch / resume missing runs even if the runs directory already holds some")
    p.add_argument("--draw-only", action="store_true", help="never launch; draw from the runs that exist")
    p.add_argument("--no-draw", action="store_true", help="launch / resume the sweeps only")
    p.add_argument("--source", default=None, help="'wandb:<entity>/<project>' to draw from a wandb project instead of the runs directory")
    p.add_argument("--list", action="store_true", help="print figures, make targets and sweep commands, then exit")
    p.add_argument("extra", nargs="*", help="extra Hydra overrides for every job, after '--' (e.g. trainer.device=cuda)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[reproduce] %(message)s")  # quiet libraries (fontTools, …)
    for name in ("reproduce", "equivrepro"):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.list:
        print_manifest(args.scale)
        return 0

    scale = args.scale
    if args.jobs is None:
        args.jobs = min(2, os.cpu_count() or 1) if scale == "smoke" else 1
    runs_dir = (args.runs_dir or ROOT / "runs" / scale).resolve()
    results_dir = (args.results_dir or ROOT / "results" / scale).resolve()
    figures_dir = (args.figures_dir or ROOT / "figures" / scale).resolve()
    names = select_figures(args.figures)
    sweep_names = list(dict.fromkeys(s for n in names for s in FIGURES[n].sweeps))
    # identity-relevant settings only; logging and progress bars do not change a run's identity
    extra = list(args.extra)
    log_extra = ["logger=none", "trainer.progress_bar=false"] if scale == "smoke" else []  # not part of run identity

    t0 = time.perf_counter()
    compose_extra = extra + ([f"hydra/launcher={args.launcher}"] if args.launcher != "local" else [])
    jobs_by_sweep = {s: sweep_jobs(SWEEPS[s].overrides(scale), runs_dir, compose_extra) for s in sweep_names}
    launch_failed: list[str] = []
    existing = [j for js in jobs_by_sweep.values() for j in js if j.run_dir.exists()]
    if args.source or args.draw_only:
        pass
    elif scale == "paper" and existing and not args.launch:
        log.info("paper scale: %s already holds %d run(s) of these sweeps, so nothing is launched; drawing from them "
                 "(add --launch to start or resume the missing ones)", runs_dir, len(existing))
    elif args.launcher == "local":
        all_jobs = [j for s in sweep_names for j in jobs_by_sweep[s]]
        for s in sweep_names:
            log.info("sweep %s (%s): %s", s, scale, SWEEPS[s].command(scale))
        log.info("%d distinct runs, %d to run or resume, %d at a time", len({j.run_id for j in all_jobs}),
                 len({j.run_id for j in all_jobs if not j.finished()}), args.jobs)
        launch_failed = sorted({j.run_dir.name for j in run_locally(all_jobs, runs_dir, args.jobs, log_extra)})
    else:
        for s in sweep_names:
            if any(not j.finished() for j in jobs_by_sweep[s]):
                if launch_multirun(SWEEPS[s].overrides(scale), runs_dir, args.launcher, log_extra + extra) != 0:
                    launch_failed.append(s)
    if args.no_draw:
        return 1 if launch_failed else 0

    from equivrepro.results import collect_local, collect_wandb, summarize_pct, write_table

    if args.source:
        if not args.source.startswith("wandb:"):
            raise SystemExit(f"--source must look like wandb:<entity>/<project>, got {args.source!r}")
        table = collect_wandb(args.source[len("wandb:"):])
    else:
        if not runs_dir.exists():
            raise SystemExit(f"no runs directory {runs_dir}: launch the sweeps first (drop --draw-only)")
        table = collect_local(runs_dir)
    path = write_table(table, results_dir)
    summary = summarize_pct(table)
    from equivrepro.train.checkpoint import atomic_write_text

    atomic_write_text(results_dir / "pct_summary.csv", summary.to_csv(index=False))
    log.info("results table: %s (%d rows, %d runs); pct summary: %s", path, len(table), table["run_id"].nunique(), results_dir / "pct_summary.csv")
    print_pct_lines(summary, table, [j.run_id for s in sweep_names if s.endswith("-default") for j in jobs_by_sweep[s]])
    failed = draw_figures(table, names, jobs_by_sweep, scale, figures_dir)
    log.info("done in %.0f s: %d figure(s) in %s%s", time.perf_counter() - t0, len(names) - len(failed), figures_dir,
             f"; not drawn: {failed}" if failed else "")
    if launch_failed:
        log.error("sweeps that exited with an error: %s", launch_failed)
    return 1 if (failed or launch_failed) else 0


if __name__ == "__main__":
    sys.exit(main())
