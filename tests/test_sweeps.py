"""Sweeps end to end on the self-check task, the launchers, and every sweep point of the paper's manifest.

* a 2×2 Hydra multirun gives four runs and a four-run results table; relaunching it runs nothing; a run
  interrupted mid-way (``trainer.interrupt_after_step``) is resumed by the sweep, not restarted;
* the SLURM launcher config composes with its preemption settings, and its sbatch script requeues;
* a job runs through submitit's local executor (``hydra/launcher=submitit_local``);
* every sweep point the task cards declare (:mod:`equivrepro.catalog`) composes, pairs its values, builds
  its optimizer, and every sweep contains its task's default run (so sweeps share it);
* ``equivrepro.reproduce`` runs what is missing, then only draws.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equivrepro import catalog, reproduce, sweeps
from equivrepro.results import collect_local
from equivrepro.train.app import compose_config
from equivrepro.train.build import run_identity
from equivrepro.train.loggers import read_results
from equivrepro.train.loop import TrainingInterrupted, train
from equivrepro.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
POINTS = [
    "task=points",
    "logger=none",
    "trainer.progress_bar=false",
    "trainer.max_steps=10",
    "equivariance.every=5",
    "trainer.checkpoint_every=5",
    "trainer.log_every=5",
]


def _multirun(runs_dir: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "equivrepro.train", "-m", *POINTS, f"paths.runs_dir={runs_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _run_dirs(runs_dir: Path) -> list[Path]:
    return sorted(p for p in runs_dir.iterdir() if p.name.startswith("points-"))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """An interrupted run (seed 1, lr 3e-3), then the 2×2 sweep seed=0,1 × optim.lr=1e-3,3e-3 over it."""
    runs_dir = tmp_path_factory.mktemp("grid")
    cfg = compose_config(POINTS + [f"paths.runs_dir={runs_dir}", "seed=1", "optim.lr=3e-3", "trainer.interrupt_after_step=7"])
    with pytest.raises(TrainingInterrupted):
        train(cfg)
    interrupted = runs_dir / f"points-{run_identity(cfg)}"
    before = {(s, m): v for s, m, v in read_results(interrupted / "metrics.csv") if s <= 5}
    status_before = json.loads((interrupted / "status.json").read_text())
    proc = _multirun(runs_dir, "seed=0,1", "optim.lr=1e-3,3e-3")
    return {"runs_dir": runs_dir, "interrupted": interrupted, "before": before, "status_before": status_before, "proc": proc}


def test_two_by_two_multirun_gives_four_runs_and_a_four_run_table(grid):
    dirs = _run_dirs(grid["runs_dir"])
    assert len(dirs) == 4
    for d in dirs:
        status = json.loads((d / "status.json").read_text())
        assert status["state"] == "finished" and status["step"] == 10
    table = collect_local(grid["runs_dir"])
    assert table["run_id"].nunique() == 4
    runs = table.drop_duplicates("run_id")
    assert sorted(zip(runs["seed"].astype(int), runs["lr"])) == [(0, 1e-3), (0, 3e-3), (1, 1e-3), (1, 3e-3)]
    assert set(table[table["metric"] == "equiv/mse/pct"]["step"].astype(int)) == {0, 5, 10}


def test_interrupted_run_is_resumed_by_the_sweep_not_restarted(grid):
    d = grid["interrupted"]
    assert grid["status_before"]["state"] == "running" and grid["status_before"]["step"] == 5
    log = grid["proc"].stdout + grid["proc"].stderr
    assert re.search(rf"resuming \S*{d.name} from step 5", log), log[-3000:]
    after = {(s, m): v for s, m, v in read_results(d / "metrics.csv")}
    # rows up to the checkpoint are kept as they were — including wall-clock timings, which a restart would
    # have measured anew — and the run went on to the end
    assert {k: after[k] for k in grid["before"]} == grid["before"]
    assert any(m.startswith("time/") for _, m in grid["before"])
    assert max(s for s, _ in after) == 10


def test_relaunching_the_sweep_runs_nothing(grid):
    dirs = _run_dirs(grid["runs_dir"])
    stamp = {p: p.stat().st_mtime_ns for d in dirs for p in (d / "metrics.csv", d / "status.json", d / "checkpoints" / "last.pt")}
    proc = _multirun(grid["runs_dir"], "seed=0,1", "optim.lr=1e-3,3e-3")
    assert (proc.stdout + proc.stderr).count("already finished at step 10: skipping") == 4
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert len(_run_dirs(grid["runs_dir"])) == 4


def test_paired_sweep_group_sets_its_values_together_and_shares_the_default_run():
    base = compose_config(["task=points"])
    sgd = compose_config(["task=points", "+sweep/points_optim=sgd_3e-2"])
    assert sgd.optim._target_ == "torch.optim.SGD" and sgd.optim.lr == 3e-2 and sgd.trainer.batch_size == 8
    assert run_identity(compose_config(["task=points", "+sweep/points_optim=adamw_3e-3"])) == run_identity(base)
    assert run_identity(sgd) != run_identity(base)
    jobs = sweeps.expand(["task=points", "+sweep/points_optim=adamw_3e-3,sgd_3e-2", "seed=0,1,2"])
    assert len(jobs) == 6 and ["task=points", "+sweep/points_optim=sgd_3e-2", "seed=2"] in jobs


def test_slurm_launcher_composes_with_resources_preemption_and_setup(tmp_path, monkeypatch):
    cfg = compose_config(
        [
            "task=points",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.account=proj",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    for key in (
        "partition",
        "gpus_per_node",
        "tasks_per_node",
        "cpus_per_task",
        "mem_gb",
        "timeout_min",
        "account",
        "qos",
        "array_parallelism",
        "setup",
        "additional_parameters",
        "signal_delay_s",
        "max_num_timeout",
    ):
        assert key in launcher, key
    assert launcher.additional_parameters.requeue is True and launcher.signal_delay_s > 0 and launcher.max_num_timeout > 0
    assert any("conda activate" in line for line in launcher.setup)
    assert launcher.name == "equivrepro-points"
    # the sbatch script submitit would submit, built exactly as the Hydra plugin configures its executor
    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # pretend srun exists
    params = dict(instantiate(launcher).params)
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "sub", slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{(k if k in base else f"slurm_{k}"): v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python job.py", "uid")
    for line in (
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@300",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=1440",
        "conda activate equivrepro",
    ):
        assert line in script, (line, script)


def test_a_job_runs_through_submitits_local_executor(tmp_path):
    _multirun(tmp_path, "hydra/launcher=submitit_local", "trainer.max_steps=4", "equivariance.every=2", timeout=600)
    (d,) = _run_dirs(tmp_path)
    assert json.loads((d / "status.json").read_text())["state"] == "finished"
    assert list((tmp_path / "_hydra_multirun").glob("*/.submitit/*/*_result.pkl"))  # submitit ran and returned it


# ---------------------------------------------------------------------------------------------------------
# The sweeps the task cards declare
# ---------------------------------------------------------------------------------------------------------
SWEEPS = catalog.sweeps()
SWEEP_CASES = [(name, scale) for name in SWEEPS for scale in catalog.SCALES]


def _one_seed(overrides):
    """The sweep with its seed list cut to one seed: seeds change one scalar, not whether a point composes."""
    return [("seed=0" if o.startswith("seed=") else o) for o in overrides]


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """Every (sweep, scale) point composed once: {(sweep, scale): [(overrides, config), …]} (None: task missing)."""
    runs_dir = tmp_path_factory.mktemp("compose")
    out = {}
    for name, scale in SWEEP_CASES:
        jobs = sweeps.expand(_one_seed(SWEEPS[name].overrides(scale)))
        out[name, scale] = list(zip(jobs, sweeps.compose_all([j + [f"paths.runs_dir={runs_dir}"] for j in jobs])))
    return out


@pytest.mark.parametrize("name,scale", SWEEP_CASES, ids=[f"{n}-{s}" for n, s in SWEEP_CASES])
def test_every_sweep_point_composes_and_contains_the_default_run(name, scale, composed):
    sweep = SWEEPS[name]
    points = composed[name, scale]
    ids = [run_identity(cfg) for _, cfg in points]
    assert len(set(ids)) == len(ids), "two sweep points compose to the same run"
    (default,) = [run_identity(cfg) for _, cfg in composed[f"{sweep.task}-default", scale]]
    assert default in ids, "the sweep does not contain its task's default run (its default point restates a different value)"
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    for _, cfg in points:
        assert cfg.task.name == sweep.task
        build_optimizer(model, cfg.optim)  # the optimizer node of every point is valid for its class
    seeds = {o for o in sweep.overrides(scale) if o.startswith("seed=")}
    assert seeds == ({"seed=0,1,2"} if scale == "paper" else {"seed=0"})


def test_forcefield_sweeps_pair_their_values(composed):
    p = {}
    for scale in catalog.SCALES:
        for name in ("forcefield-data", "forcefield-optim"):
            for job, cfg in composed[name, scale]:
                p[scale, next(o.split("=")[1] for o in job if o.startswith("+sweep/"))] = cfg
    assert (p["paper", "500_bs1"].data.train_size, p["paper", "500_bs1"].trainer.batch_size) == (500, 1)
    assert (p["paper", "50k"].data.train_size, p["paper", "50k"].trainer.batch_size) == (50000, 64)
    assert p["paper", "950k"].data.train_size is None and p["paper", "950k"].trainer.batch_size == 64
    assert (p["smoke", "n8_bs1"].data.train_size, p["smoke", "n8_bs1"].trainer.batch_size) == (8, 1)
    assert (p["paper", "sgd_1e-5"].optim._target_, p["paper", "sgd_1e-5"].optim.lr) == ("torch.optim.SGD", 1e-5)
    assert (p["paper", "adamw_1e-3"].optim._target_, p["paper", "adamw_1e-3"].optim.lr) == ("torch.optim.AdamW", 1e-3)
    for point in ("adamw_1e-5", "adamw_1e-4", "adamw_1e-3", "sgd_1e-5"):
        assert p["paper", point].schedule.name == "cosine_warmup"  # only the optimizer and its LR change


POINTS_CARD = """
task: points
title: Synthetic point clouds (self-check)
in_reproduce: true
without_figures: [attribution]
experiments: {smoke: none, paper: none}
sweeps:
  default: {about: self-check, smoke: "task=points trainer.max_steps=6 equivariance.every=3 trainer.checkpoint_every=3 seed=0",
            paper: "task=points trainer.max_steps=6 equivariance.every=3 trainer.checkpoint_every=3 seed=0"}
  optim:
    about: self-check
    smoke: "task=points +sweep/points_optim=adamw_3e-3,sgd_3e-2 trainer.max_steps=6 equivariance.every=3 trainer.checkpoint_every=3 seed=0"
    paper: "task=points +sweep/points_optim=adamw_3e-3,sgd_3e-2 trainer.max_steps=6 equivariance.every=3 trainer.checkpoint_every=3 seed=0"
figures:
  vary-optim: {sweeps: [optim], draw: vary_optimizer, about: self-check}
"""


@pytest.fixture
def points_card(tmp_path, monkeypatch):
    """A catalog holding only a card of the self-check task."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "points.yaml").write_text(POINTS_CARD)
    monkeypatch.setattr(catalog, "CARDS_DIR", cards)
    return cards


def test_reproduce_runs_what_is_missing_then_only_draws(tmp_path, points_card, monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dirs = {"--runs-dir": tmp_path / "runs", "--results-dir": tmp_path / "results", "--figures-dir": tmp_path / "figures"}
    args = ["--figures", "points-vary-optim", "--jobs", "2"] + [str(x) for kv in dirs.items() for x in kv]
    caplog.set_level("INFO", logger="equivrepro")
    assert reproduce.main(["--scale", "smoke", *args]) == 0
    assert "2 distinct runs, 2 to run or resume" in caplog.text
    assert (tmp_path / "figures" / "points-vary-optim.png").stat().st_size > 0
    assert (tmp_path / "figures" / "points-vary-optim.pdf").stat().st_size > 0
    table = collect_local(tmp_path / "runs")
    assert set(table.drop_duplicates("run_id")["optim_label"].astype(str)) == {"AdamW 3e-3", "SGD 3e-2"}
    assert (tmp_path / "results" / "pct_summary.csv").exists() and list((tmp_path / "results").glob("results.*"))
    caplog.clear()
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("points-*/status.json")}
    # paper scale with runs present: nothing is launched, the figure is drawn from what is there
    assert reproduce.main(["--scale", "paper", *args]) == 0
    assert "nothing is launched" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


def test_the_catalog_discovers_a_task_from_its_card_alone(points_card):
    """Everything a task adds to the figure and sweep lists comes from its card: standard figures on its default
    sweep, its declared figures, the headline over in-reproduce tasks, and `make` asks Python for the names."""
    figs = catalog.figures()
    standard = [f"points-{s}" for s in catalog.STANDARD_FIGURES if s != "attribution"]  # the card opts out of one
    assert set(figs) == {"headline", *standard, "points-vary-optim"} and "points-attribution" not in figs
    assert figs["headline"].sweeps == ("points-default",)
    assert catalog.reproduce_figures() == ["headline", *standard]
    assert catalog.reproduce_figures("points") == standard
    assert set(catalog.sweeps()) == {"points-default", "points-optim"}
    out = subprocess.run([sys.executable, "-m", "equivrepro.reproduce", "--list"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert out.returncode == 0 and "make reproduce-figure-forcefield-pct" in out.stdout  # a subprocess sees the real cards


def test_a_malformed_card_names_its_file_and_key(tmp_path, monkeypatch):
    cards = tmp_path / "bad"
    cards.mkdir()
    (cards / "points.yaml").write_text(POINTS_CARD.replace("draw: vary_optimizer", "draw: vary_optimizer, colour: red"))
    with pytest.raises(catalog.CatalogError, match=r"points\.yaml: figures\.vary-optim: unknown keys \['colour'\]"):
        catalog.cards(cards)
    (cards / "points.yaml").write_text(POINTS_CARD.replace("sweeps: [optim]", "sweeps: [optimizer]"))
    with pytest.raises(catalog.CatalogError, match="figures.vary-optim.sweeps must list sweeps of this card"):
        catalog.cards(cards)


def test_every_declared_figure_has_a_drawing_function_and_known_sweeps():
    for name, fig in catalog.figures().items():
        assert callable(catalog.drawing_function(fig.draw)), name
        assert all(s in SWEEPS for s in fig.sweeps), name
    assert set(catalog.figures()) >= {"headline", "forcefield-pct", "flowmatching-final-pct-default", "voxels-vary-data"}


def test_the_launch_options_resolve_to_scale_directories_and_workers(tmp_path):
    import argparse
    import os

    from equivrepro.sweeps import ROOT, add_launch_arguments, launch_dirs

    p = argparse.ArgumentParser()
    add_launch_arguments(p, ("smoke", "paper"), "sweep")
    smoke = launch_dirs(p.parse_args([]))
    assert (smoke.runs, smoke.results, smoke.figures) == (ROOT / "runs/smoke", ROOT / "results/smoke", ROOT / "figures/smoke")
    assert smoke.workers == min(2, os.cpu_count() or 1)
    paper = launch_dirs(p.parse_args(["--scale", "paper", "--runs-dir", str(tmp_path / "r"), "--", "trainer.device=cuda"]))
    assert paper.runs == (tmp_path / "r").resolve() and paper.figures == ROOT / "figures/paper" and paper.workers == 1
    assert p.parse_args(["--jobs", "3", "--", "a=1"]).extra == ["a=1"] and launch_dirs(p.parse_args(["--jobs", "3"])).workers == 3
