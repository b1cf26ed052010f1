"""The efficiency study (equivrepro.efficiency) on the synthetic point task, and the study blocks of the real cards.

* a card's ``efficiency`` block gives one job per (family, size) — base, model and the family's overrides, a family
  override replacing the base's value — and a malformed block names the file and the key;
* the budget trick holds: with a schedule that does not depend on ``max_steps``, the held-out loss at step s of a
  longer run is exactly that of an s-step run;
* a tiny study (two families, an MLP at two sizes and the exactly equivariant radial model) runs what is missing,
  writes the points CSV, the summary and the three figures; the twirled family's loss is L_mean + L_equiv/K of the
  logged values at the same training FLOPs and K× the inference FLOPs; the equivariant family's pct is at round-off;
  relaunching runs nothing;
* every family of every real card composes at both scales with its documented parameter count.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from equivrepro import catalog, efficiency
from equivrepro.metrics import keys
from equivrepro.runs import RunDir
from equivrepro.sweeps import compose_all, expand
from equivrepro.train.app import compose_config
from equivrepro.train.loop import train
from tests.test_experiments import documented_parameters

BASE = (
    "task=points logger=none trainer.max_steps=12 trainer.checkpoint_every=6 trainer.log_every=3 equivariance.every=0 "
    "equivariance.log_points=6 equivariance.num_samples=16 equivariance.k=4 seed=0"
)
CARD = f"""
task: points
title: Synthetic point clouds (self-check)
experiments: {{smoke: none, paper: none}}
sweeps:
  default: {{about: self-check, smoke: "task=points seed=0", paper: "task=points seed=0"}}
efficiency:
  about: self-check
  base: {{smoke: "{BASE}", paper: "{BASE}"}}
  metric: {{term: mse, suffix: ""}}
  fit_from_step: {{smoke: 1, paper: 1}}
  reference: mlp + aug
  families:
    mlp + aug: {{models: [points_mlp_small, points_mlp]}}
    radial (exact):
      models: [points_radial]
      overrides: "equivariance.k=2"
      equivariant: true
  twirled: {{k: [4]}}
"""
INLINE = ["trainer.progress_bar=false"]


def _cards_dir(root):
    d = root / "cards"
    d.mkdir()
    (d / "points.yaml").write_text(CARD)
    return d


@pytest.fixture
def cards(tmp_path, monkeypatch):
    d = _cards_dir(tmp_path)
    monkeypatch.setattr(catalog, "CARDS_DIR", d)
    return d


def test_the_study_has_one_job_per_family_and_size_with_the_family_overrides(cards, tmp_path):
    jobs = efficiency.study_jobs("smoke", tmp_path / "runs")
    assert [(j.family, j.model, j.size_index) for j in jobs] == [
        ("mlp + aug", "points_mlp_small", 0),
        ("mlp + aug", "points_mlp", 1),
        ("radial (exact)", "points_radial", 0),
    ]
    assert len({j.job.run_id for j in jobs}) == 3
    cfgs = compose_all([j.job.overrides for j in jobs])
    assert [c.equivariance.k for c in cfgs] == [4, 4, 2]
    assert [c.model._target_.rsplit(".", 1)[-1] for c in cfgs] == ["NonEquivariantMLP", "NonEquivariantMLP", "RadialModel"]
    assert [c.model.hidden for c in cfgs] == [8, 32, 16]
    radial = jobs[2].job.overrides
    assert sum(o.startswith("equivariance.k=") for o in radial) == 1  # replaced in place, not appended twice
    assert all(j.job.max_steps == 12 for j in jobs)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ("    radial (exact):\n", "    radial (exact):\n      colour: red\n"),
            r"efficiency\.families\.radial \(exact\): unknown keys \['colour'\]",
        ),
        (
            ("[points_radial]", "[points_radial_nope]"),
            r"efficiency\.families\.radial \(exact\)\.models.*: no model config \['points_radial_nope'\]",
        ),
        (
            ("reference: mlp + aug", "reference: radial (exact)"),
            r"efficiency\.reference 'radial \(exact\)' must be a non-equivariant family",
        ),
        (("twirled: {k: [4]}", "twirled: {k: [1]}"), r"efficiency\.twirled\.k must be a non-empty list of rotation counts >= 2"),
        (
            ('overrides: "equivariance.k=2"', 'overrides: "model=points_mlp"'),
            r"efficiency\.families\.radial \(exact\)\.overrides must not choose the model",
        ),
    ],
)
def test_a_malformed_efficiency_block_names_its_file_and_key(tmp_path, change, message):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "points.yaml").write_text(CARD.replace(*change))
    with pytest.raises(catalog.CatalogError, match=r"points\.yaml: " + message):
        catalog.cards(d)


def test_the_frontier_is_the_lowest_loss_reachable_within_each_budget():
    """Two sizes: the small one is best early and then stops (its run ends), the large one dips and rises again; the
    monotone frontier keeps the best loss reached at any budget ≤ C and the size that reached it."""
    from equivrepro.analysis.scaling import compute_optimal_frontier

    size = [10, 10, 10, 100, 100, 100, 100]
    compute = [1, 2, 4, 2, 4, 8, 16]
    loss = [5.0, 3.0, 2.0, 4.0, 2.5, 1.0, 1.5]
    raw = compute_optimal_frontier(size, compute, loss)
    fr = efficiency.best_within_budget(raw)
    assert list(fr.budgets) == [1, 2, 4, 8, 16]
    assert np.allclose(raw.best_loss, [5.0, 3.0, 2.0, 1.0, 1.5])  # the raw frontier rises at 16 (the large run got worse)
    assert np.allclose(fr.best_loss, [5.0, 3.0, 2.0, 1.0, 1.0]) and list(fr.best_size) == [10, 10, 10, 100, 100]
    assert np.all(np.diff(fr.best_loss) <= 0)


def _loss_at(run_dir, step: int) -> float:
    frame = RunDir(run_dir).metrics_frame()
    return float(frame.loc[step, keys.key(keys.EQUIV, "mse", "total")])


def test_the_loss_at_step_s_of_a_longer_run_is_that_of_an_s_step_run(tmp_path):
    """The budget trick: constant schedule, data order and step seeds independent of max_steps → identical states."""
    common = [
        "task=points",
        "logger=none",
        *INLINE,
        "trainer.log_every=3",
        "equivariance.every=6",
        "seed=3",
        f"paths.runs_dir={tmp_path}",
        "optim.lr=1e-2",
    ]
    short = train(compose_config(common + ["trainer.max_steps=6"]))
    long = train(compose_config(common + ["trainer.max_steps=12"]))
    assert short["run_dir"] != long["run_dir"]
    assert _loss_at(short["run_dir"], 6) == _loss_at(long["run_dir"], 6)
    assert _loss_at(long["run_dir"], 12) != _loss_at(long["run_dir"], 6)  # it did go on training


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study: the two MLP runs trained here in-process, the radial one left for the command to launch."""
    tmp = tmp_path_factory.mktemp("study")
    records = _Records()
    logger = logging.getLogger("equivrepro")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(catalog, "CARDS_DIR", _cards_dir(tmp))
        mp.setenv("OMP_NUM_THREADS", "1")
        runs = tmp / "runs"
        jobs = efficiency.study_jobs("smoke", runs)
        for sj in jobs[:2]:
            train(compose_config(list(sj.job.overrides) + [f"paths.runs_dir={runs}", *INLINE]))
        dirs = {"--runs-dir": runs, "--results-dir": tmp / "results", "--figures-dir": tmp / "figures"}
        args = ["--scale", "smoke", "--jobs", "2", "--n-boot", "20", "--budgets", "4"] + [str(x) for kv in dirs.items() for x in kv]
        logger.addHandler(records)
        try:
            rc = efficiency.main(args)
            first = records.text
            stamp = {p: p.stat().st_mtime_ns for sj in jobs for p in (sj.job.run.status_path, sj.job.run.metrics_path)}
            records.lines.clear()
            rc_again = efficiency.main(args + ["--no-draw"])
        finally:
            logger.removeHandler(records)
        again = {p: p.stat().st_mtime_ns for p in stamp}
    return {
        "rc": rc,
        "jobs": jobs,
        "log": first,
        "tmp": tmp,
        "rc_again": rc_again,
        "log_again": records.text,
        "stamp": stamp,
        "stamp_again": again,
    }


@pytest.mark.slow
def test_a_tiny_study_runs_what_is_missing_and_writes_points_summary_and_figures(study):
    assert study["rc"] == 0, study["log"][-3000:]
    assert "3 runs in the study, 1 to run or resume" in study["log"]
    tmp = study["tmp"]
    points = pd.read_csv(tmp / "results" / "efficiency_points.csv")
    assert set(points["family"]) == {"mlp + aug", "radial (exact)", "mlp + aug + twirl K=4"}
    summary = json.loads((tmp / "results" / "efficiency_summary.json").read_text())
    t = summary["tasks"]["points"]
    assert list(t["families"]) == ["mlp + aug", "radial (exact)", "mlp + aug + twirl K=4"]
    assert t["families"]["mlp + aug"]["n_params"] == [131, 1283]
    assert set(t["comparison"]) == {"flops", "seconds"} and len(t["comparison"]["flops"]) == 4
    assert [r["family"] for r in t["slowdown"]] == ["radial (exact)"]
    comparison = pd.read_csv(tmp / "results" / "efficiency_comparison.csv")
    assert set(comparison["axis"]) == {"flops", "seconds"} and "s_star" in comparison and "equivariant_factor" in comparison
    for name in ("efficiency-flops", "efficiency-seconds", "efficiency-frontier"):
        for ext in ("png", "pdf", "csv"):
            assert (tmp / "figures" / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    # the equivariant family is exactly equivariant (float32 round-off), the MLP is not
    radial = points[points["family"] == "radial (exact)"]
    mlp = points[(points["family"] == "mlp + aug") & (points["step"] > 0)]
    assert radial["pct"].abs().max() < 1e-4 and mlp["pct"].min() > 1e-3
    # compute axes: FLOPs = step × the run's FLOPs per step
    assert np.allclose(points["flops"], points["step"] * points["flops_per_step"])
    # every run's points are those it logged, at each evaluated step
    for sj in study["jobs"]:
        logged = sj.job.run.metrics_frame()[keys.key(keys.EQUIV, "mse", "total")].dropna()
        mine = points[(points["run_id"] == sj.job.run_id) & (points["kind"] == "trained")].set_index("step")["L_total"]
        assert np.allclose(mine.sort_index().to_numpy(), logged.sort_index().to_numpy()), sj.model


@pytest.mark.slow
def test_the_twirled_family_is_l_mean_plus_l_equiv_over_k_of_the_logged_values(study):
    points = pd.read_csv(study["tmp"] / "results" / "efficiency_points.csv")
    tw = points[points["family"] == "mlp + aug + twirl K=4"].set_index(["run_id", "step"]).sort_index()
    src = points[points["family"] == "mlp + aug"].set_index(["run_id", "step"]).sort_index()
    assert len(tw) == len(src) > 0
    for run_id in set(src.index.get_level_values(0)):
        frame = next(sj for sj in study["jobs"] if sj.job.run_id == run_id).job.run.metrics_frame()
        mean, equiv = frame[keys.key(keys.EQUIV, "mse", "mean")], frame[keys.key(keys.EQUIV, "mse", "equiv")]
        steps = tw.loc[run_id].index
        expected = (mean + equiv / 4).loc[steps].to_numpy()
        assert np.allclose(tw.loc[run_id, "loss"].to_numpy(), expected, rtol=1e-12)
        assert (tw.loc[run_id, "loss"] < src.loc[run_id, "loss"]).loc[steps > 0].all()
    assert np.allclose(tw["flops"], src["flops"]) and np.allclose(tw["inference_flops"], 4 * src["flops_per_inference"])


@pytest.mark.slow
def test_relaunching_the_study_runs_nothing(study):
    assert study["rc"] == 0 and study["rc_again"] == 0
    assert "3 runs in the study, 0 to run or resume" in study["log_again"]
    assert study["stamp_again"] == study["stamp"]


def _parameters(model_cfg) -> int:
    """Trainable parameters, built on the meta device (e3nn's normalisation constants need a real one: then the CPU)."""
    try:
        with torch.device("meta"):
            model = instantiate(model_cfg, _convert_="all")
    except Exception:
        model = instantiate(model_cfg, _convert_="all")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _real_families():
    for task, c in catalog.cards().items():
        if c.efficiency is not None:
            for family in c.efficiency.families:
                for scale in catalog.SCALES:
                    yield task, family, scale


@pytest.mark.parametrize("task, family, scale", list(_real_families()))
def test_every_family_of_the_real_cards_composes_with_its_documented_model_sizes(task, family, scale):
    spec = catalog.card(task).efficiency
    jobs = expand(spec.overrides(family, scale))
    cfgs = compose_all(jobs)
    sizes = []
    for job, cfg in zip(jobs, cfgs):
        assert cfg.task.name == task
        model = next(o.split("=", 1)[1] for o in job if o.startswith("model="))
        n = _parameters(cfg.model)
        assert n == documented_parameters(model), (model, n)
        sizes.append(n)
        assert cfg.schedule.name == "constant" or math.isclose(cfg.schedule.min_factor, 1.0), (
            f"{task} / {family}: the schedule depends on max_steps, so step s of a run is not an s-step run"
        )
    assert sizes == sorted(sizes), f"{task} / {family}: models must be listed smallest first"
