"""The dashboard specification, built without network from a fake project (run directories with real configs
and metric names), and from a fake wandb API."""

from __future__ import annotations

import copy
import json

import pytest

from equivrepro import dashboard
from equivrepro.metrics import keys
from equivrepro.metrics.headline import PCT_FINAL, PCT_MIN, REL_BASELINE, REL_NULL, summary_key
from equivrepro.runs import RunDir
from equivrepro.train.app import compose_config
from equivrepro.train.build import plain_config
from equivrepro.train.loggers import STEP_METRIC, ResultsFile, dimension_key, sweep_dimensions

K = keys.key
E = keys.EQUIV
POINTS_METRICS = [K(E, "mse", q) for q in ("pct", "total", "mean", "equiv", "null_total", REL_NULL)] + [
    K(E, "l2mae", "pct"),
    K(E, "l2mae", "total"),
    keys.scalar_key(keys.TRAIN, "loss"),
]
FLOW_SUFFIXES = ("t=0.5", "t=0.1")  # deliberately not in order
FLOW_METRICS = (
    [K(E, "velocity", q, s) for s in FLOW_SUFFIXES for q in ("pct", "total", "mean", "equiv", REL_BASELINE)]
    + [keys.degree_key("velocity", l, "t=0.1") for l in (10, 2, 1)]
    + [keys.scalar_key(keys.COMPUTE, "flops_per_step")]
)


def _config(*overrides: str, task_name: str | None = None) -> dict:
    config = plain_config(compose_config(["task=points", "trainer.progress_bar=false", *overrides]))
    if task_name:  # a second task with the same machinery: only its name differs
        config = copy.deepcopy(config)
        config["task"]["name"] = config["name"] = task_name
    return config


def _write_run(root, name: str, config: dict, metrics: list[str]) -> RunDir:
    rd = RunDir(root / name)
    rd.write_config(config)
    sink = ResultsFile(rd.path, resume_step=None)
    for step in (0, 10, 20):
        sink.log(step, {m: 0.5 / (1 + step) for m in metrics})
    sink.close()
    return rd


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """An optimizer sweep of the points task (2 learning rates × 2 seeds, group 'points-optim') and a model sweep
    of a second task with flow times, a degree spectrum and a compute metric (group 'flow-model')."""
    root = tmp_path_factory.mktemp("runs")
    configs = {}
    for lr in ("3e-3", "1e-2"):
        for seed in (0, 1):
            c = _config(f"optim.lr={lr}", f"seed={seed}", "logger.group=points-optim")
            configs[f"points-{lr}-{seed}"] = c
            _write_run(root, f"points-{lr}-{seed}", c, POINTS_METRICS)
    for hidden in (8, 16):
        c = _config(f"model.hidden={hidden}", "logger.group=flow-model", task_name="toyflow")
        configs[f"flow-{hidden}"] = c
        _write_run(root, f"flow-{hidden}", c, FLOW_METRICS)
    return root, configs


def _panels(spec, task):
    (section,) = [s for s in spec["sections"] if s["task"] == task]
    return section["panels"]


def test_sections_panels_and_grouping_keys_from_run_directories(project):
    root, configs = project
    spec = dashboard.build_spec(dashboard.local_runs(root), "ent", "proj")
    assert sorted(s["task"] for s in spec["sections"]) == ["points", "toyflow"]
    assert spec["max_runs"] >= 6 and spec["runset"]["group"] is None

    # points: the learning rate varies (seed is a replicate, never a grouping key)
    points = _panels(spec, "points")
    pct = [p for p in points if p["kind"] == "line" and p["y"] == [K(E, "mse", "pct")]]
    assert [p["groupby"] for p in pct] == [dimension_key("optim_label")]
    assert all(p["x"] == STEP_METRIC and p["log_x"] and p["log_y"] for p in pct)
    # the groupby keys are config keys the wandb sink logs for these runs, and they tell the runs apart
    logged = [sweep_dimensions(c) for n, c in configs.items() if n.startswith("points")]
    assert len({d[pct[0]["groupby"]] for d in logged}) == 2
    lines = {tuple(p["y"]) for p in points if p["kind"] == "line"}
    assert (K(E, "l2mae", "pct"),) in lines  # the second loss term gets its own pct panel
    assert tuple(K(E, "mse", q) for q in ("total", "mean", "equiv", "null_total")) in lines
    assert (K(E, "mse", REL_NULL),) in lines
    bars = [p for p in points if p["kind"] == "bar"]
    assert bars and bars[0]["metrics"] == [summary_key(K(E, "mse", "pct"), q) for q in (PCT_MIN, PCT_FINAL)]
    assert not any(p["kind"] == "scatter" for p in points)  # no compute metric logged
    assert not any(keys.degree_of(y) is not None for p in points for y in p.get("y", []))

    # the second task: model size varies; flow times in natural order; spectrum degrees numerically; compute points
    flow = _panels(spec, "toyflow")
    first = flow[0]
    assert first["groupby"] == dimension_key("model_label") and first["y"] == [K(E, "velocity", "pct", "t=0.1")]
    every = [p for p in flow if p["kind"] == "line" and len(p["y"]) == 2 and all(keys.matches(y, quantity="pct") for y in p["y"])]
    assert [p["y"] for p in every] == [[K(E, "velocity", "pct", s) for s in ("t=0.1", "t=0.5")]]
    spectrum = [p for p in flow if p["kind"] == "line" and any(keys.degree_of(y) is not None for y in p["y"])]
    assert len(spectrum) == 1 and spectrum[0]["y"] == [keys.degree_key("velocity", l, "t=0.1") for l in (1, 2, 10)]
    (scatter,) = [p for p in flow if p["kind"] == "scatter"]
    assert scatter["x"] == keys.scalar_key(keys.COMPUTE, "flops_per_step") and scatter["y"] == K(E, "velocity", "total", "t=0.1")
    rel = [p for p in flow if p["kind"] == "line" and all(keys.matches(y, quantity=REL_BASELINE) for y in p["y"])]
    assert len(rel) == 1 and rel[0]["y"] == [K(E, "velocity", REL_BASELINE, "t=0.1")]  # at the headline suffix

    # the run table pins the varying dimensions and the headline summaries
    cols = spec["runset"]["pinned_columns"]
    assert f"config:{dimension_key('optim_label')}" in cols and f"config:{dimension_key('model_label')}" in cols
    assert f"summary:{summary_key(K(E, 'mse', 'pct'), PCT_MIN)}" in cols


def test_sweep_filter_and_the_wandb_view(project):
    root, _ = project
    spec = dashboard.build_spec(dashboard.local_runs(root, sweep="flow-model"), "ent", "proj", sweep="flow-model")
    assert [s["task"] for s in spec["sections"]] == ["toyflow"]
    wire = dashboard._wire(dashboard.to_workspace(spec))
    (section,) = wire["spec"]["section"]["panelBankConfig"]["sections"]
    assert len(section["panels"]) == len(spec["sections"][0]["panels"])
    line = section["panels"][0]["config"]
    assert line["xAxis"] == STEP_METRIC and line["xLogScale"] and line["yLogScale"]
    assert line["groupBy"].startswith(dimension_key("model_label"))
    (runset,) = wire["spec"]["section"]["runSets"]
    assert runset["filters"]["filters"][0]["value"] == "flow-model"
    with pytest.raises(SystemExit, match="points-optim"):
        dashboard.local_runs(root, sweep="no-such-sweep")


def test_main_writes_the_specification_offline_and_publishes_only_when_asked(project, tmp_path, monkeypatch):
    root, _ = project
    saved = []
    import wandb_workspaces.workspaces as ws

    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self) or self)
    out = tmp_path / "spec.json"
    assert dashboard.main(["--entity", "ent", "--project", "proj", "--runs-dir", str(root), "--out", str(out)]) == 0
    spec = json.loads(out.read_text())
    assert {s["task"] for s in spec["sections"]} == {"points", "toyflow"} and spec["wandb_view"]["project"] == "proj"
    assert not saved
    monkeypatch.setattr(ws.Workspace, "url", property(lambda self: "https://wandb.example/ent/proj"))
    dashboard.main(["--entity", "ent", "--project", "proj", "--runs-dir", str(root), "--sweep", "points-optim", "--publish"])
    assert len(saved) == 1 and saved[0].entity == "ent" and [s.name for s in saved[0].sections] == ["points"]


class _FakeRun:
    def __init__(self, config, metrics, group):
        self.name, self.group, self.job_type = config["name"], group, config["task"]["name"]
        self.config = {k: {"value": v} for k, v in config.items()} | {"_wandb": {"value": {}}}  # as the server returns it
        self.summary = {m: 0.1 for m in metrics} | {"_step": 20}


class _FakeApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return [r for r in self._runs if not filters or r.group == filters.get("group")]


def test_online_discovery_groups_by_the_logged_dimension_keys(project):
    _, configs = project
    runs = []
    for n, c in configs.items():
        logged = {**c, **sweep_dimensions(c)}  # what WandbSink puts in the wandb config
        if n == "flow-16":
            logged[dimension_key("model_label")] = "a label set at logging time"
        runs.append(_FakeRun(logged, FLOW_METRICS if n.startswith("flow") else POINTS_METRICS, c["logger"]["group"]))
    api = _FakeApi(runs)
    infos = dashboard.wandb_runs("ent", "proj", sweep="flow-model", api=api)
    assert api.calls == [("ent/proj", {"group": "flow-model"})]
    assert {i.dims[dimension_key("model_label")] for i in infos} >= {"a label set at logging time"}  # read, not recomputed
    spec = dashboard.build_spec(infos, "ent", "proj", sweep="flow-model")
    assert _panels(spec, "toyflow")[0]["groupby"] == dimension_key("model_label")


def test_a_task_card_sets_title_dimensions_and_headline_suffix(project, monkeypatch):
    root, _ = project
    card = dashboard._Card(title="Toy flow", dimensions=("train_size", "augment"), suffix="t=0.5")
    monkeypatch.setattr(dashboard, "_cards", lambda: {"toyflow": card})
    spec = dashboard.build_spec(dashboard.local_runs(root, sweep="flow-model"), "ent", "proj")
    (section,) = spec["sections"]
    assert section["name"] == "Toy flow"
    # the card's dimensions do not vary in this sweep (model size does, but the card does not declare it)
    assert section["grouping"] == [] and section["panels"][0]["groupby"] is None
    assert section["panels"][0]["y"] == [K(E, "velocity", "pct", "t=0.5")]
    assert f"summary:{summary_key(K(E, 'velocity', 'pct', 't=0.5'), PCT_MIN)}" in spec["runset"]["pinned_columns"]
