"""Sweeps: expand a Hydra multirun into jobs, know each job's run directory, and run what is unfinished.

A sweep is a list of Hydra overrides with comma-separated values (``model=a,b seed=0,1``), exactly what
``python -m equivrepro.train -m <overrides>`` takes. :func:`sweep_jobs` composes every job with Hydra and
derives its run identity, so which runs belong to a sweep — and whether they have finished — is known
before anything is launched. Finished runs are never re-run, unfinished ones resume (same run directory),
and runs shared by several sweeps (every sweep contains its task's default run) run once.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from equivrepro.runs import RunDir

__all__ = [
    "Job",
    "expand",
    "compose_all",
    "sweep_jobs",
    "launch_multirun",
    "run_locally",
    "ROOT",
    "add_launch_arguments",
    "LaunchDirs",
    "launch_dirs",
]

log = logging.getLogger("equivrepro.sweeps")

ROOT = Path(__file__).resolve().parents[1]


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs of a multirun: the Cartesian product of comma-separated sweep values (Hydra's basic sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_sweep_override():
            k = o.get_key_element()
            choices.append([f"{k}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(job) for job in itertools.product(*choices)]


@dataclass
class Job:
    """One run of a sweep: its overrides, identity and run directory."""

    overrides: list[str]
    run_id: str
    run: RunDir
    max_steps: int

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def finished(self) -> bool:
        return self.run.is_finished(self.max_steps)


def compose_all(jobs: Sequence[Sequence[str]]) -> list:
    """The configs ``python -m equivrepro.train <job>`` would run (as :func:`equivrepro.train.app.compose_config`),
    composed in one Hydra context (a third faster than one context per job)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from equivrepro.train.app import CONFIG_DIR, register_resolvers

    register_resolvers()
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
    return [Job(job, run_identity(cfg), RunDir(run_dir_for(cfg)), int(cfg.trainer.max_steps)) for job, cfg in zip(jobs, cfgs)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    return env


def launch_multirun(overrides: Sequence[str], runs_dir: Path, launcher: str, extra: Sequence[str] = ()) -> int:
    """Run one sweep as a Hydra multirun through ``launcher`` (slurm, submitit_local, local); its exit status."""
    cmd = [sys.executable, "-m", "equivrepro.train", "-m", *overrides, f"paths.runs_dir={runs_dir}", f"hydra/launcher={launcher}", *extra]
    log.info("launching: %s", " ".join(cmd[1:]))
    return subprocess.run(cmd, cwd=ROOT, env=_env()).returncode


def run_locally(jobs: Sequence[Job], runs_dir: Path, workers: int, extra: Sequence[str] = ()) -> list[Job]:
    """Run (or resume) the unfinished jobs on this machine, ``workers`` processes at a time, each with one
    thread when several run; output goes to ``<runs_dir>/_logs/<run_id>.log``. Returns the jobs that failed."""
    unique = list({j.run_id: j for j in jobs if not j.finished()}.values())
    if not unique:
        return []
    logs = Path(runs_dir) / "_logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = _env()
    if workers > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    failed: list[Job] = []

    def one(i_job):
        i, job = i_job
        cmd = [sys.executable, "-m", "equivrepro.train", *job.overrides, f"paths.runs_dir={runs_dir}", *extra]
        t = time.perf_counter()
        log.info("[%d/%d] start %s: %s", i, len(unique), job.run.name, " ".join(job.overrides))
        log_path = logs / f"{job.run_id}.log"
        with open(log_path, "w") as out:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = log_path.read_text().splitlines()[-15:]
            log.error("[%d/%d] FAILED %s (exit %d; log %s):\n  %s", i, len(unique), job.run.name, rc, log_path, "\n  ".join(tail))
            failed.append(job)
        else:
            log.info("[%d/%d] done %s in %.0f s", i, len(unique), job.run.name, time.perf_counter() - t)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, enumerate(unique, 1)))
    return failed


# ----------------------------------------------------------------------------------------------------
# The command-line options every launching command shares (equivrepro-reproduce, equivrepro-efficiency)
# ----------------------------------------------------------------------------------------------------
def add_launch_arguments(p, scales: Sequence[str], unit: str) -> None:
    """Add ``--scale``, ``--runs-dir``, ``--results-dir``, ``--figures-dir``, ``--launcher``, ``--jobs``, ``--launch``,
    ``--draw-only``, ``--no-draw`` and the trailing Hydra overrides to the argparse parser ``p``; ``unit`` names what
    one Hydra multirun launches (``"sweep"``, ``"family"``)."""
    p.add_argument("--scale", choices=list(scales), default="smoke")
    p.add_argument("--runs-dir", type=Path, default=None, help="default: runs/<scale>")
    p.add_argument("--results-dir", type=Path, default=None, help="default: results/<scale>")
    p.add_argument("--figures-dir", type=Path, default=None, help="default: figures/<scale>")
    p.add_argument(
        "--launcher", default="local", help=f"local: run here, --jobs at a time; slurm / submitit_local: one Hydra multirun per {unit}"
    )
    p.add_argument("--jobs", type=int, default=None, help="local runs in parallel (default: smoke min(2, CPU cores), paper 1)")
    p.add_argument(
        "--launch", action="store_true", help="paper scale: launch / resume missing runs even if the runs directory already holds some"
    )
    p.add_argument("--draw-only", action="store_true", help="never launch; draw from the runs that exist")
    p.add_argument("--no-draw", action="store_true", help="launch / resume the runs only")
    p.add_argument("extra", nargs="*", help="extra Hydra overrides for every job, after '--' (e.g. trainer.device=cuda)")


@dataclass(frozen=True)
class LaunchDirs:
    """Where a launching command's runs, results and figures go, and how many local runs at a time."""

    runs: Path
    results: Path
    figures: Path
    workers: int


def launch_dirs(args) -> LaunchDirs:
    """The parsed :func:`add_launch_arguments` options resolved: ``<root>/{runs,results,figures}/<scale>`` unless given;
    2 local runs at a time at smoke scale (at most the CPU count), 1 at paper scale."""
    scale = args.scale
    workers = args.jobs if args.jobs is not None else (min(2, os.cpu_count() or 1) if scale == "smoke" else 1)
    return LaunchDirs(
        (args.runs_dir or ROOT / "runs" / scale).resolve(),
        (args.results_dir or ROOT / "results" / scale).resolve(),
        (args.figures_dir or ROOT / "figures" / scale).resolve(),
        int(workers),
    )
