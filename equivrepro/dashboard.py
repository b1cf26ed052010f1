"""``equivrepro-dashboard``: a saved wandb workspace that shows the paper's figures for a sweep.

::

    equivrepro-dashboard --entity E --project P [--sweep NAME] [--runs-dir runs] [--out spec.json] [--publish]

What exists is discovered, never named here: the tasks (``config.task.name``), their loss terms and evaluation
suffixes (the ``equiv/[S/]T/pct`` keys), degree spectra (``spectrum/[S/]T/l=<l>``), compute metrics
(``compute/…``) and the sweep dimensions that actually vary (the ``dim_<column>`` config keys that
:class:`equivrepro.train.loggers.WandbSink` logs, :func:`~equivrepro.train.loggers.sweep_dimensions`). Sources:

* **local run directories** (``--runs-dir``; the default without ``--publish``): each run's ``config.yaml`` and
  the metric names of its ``metrics.csv`` (:class:`equivrepro.runs.RunDir`); no network;
* **the wandb project** (``--publish`` without ``--runs-dir``): each run's config and summary keys via
  ``wandb.Api()``.

``--sweep NAME`` keeps the runs of wandb group ``NAME`` (:func:`~equivrepro.train.loggers.run_group`: the
``logger.group`` a sweep was launched with, else the experiment name) and filters the workspace's runs to it.

Without ``--publish`` the specification is printed (or written to ``--out``) as JSON: ``sections`` (the readable
outline: one section per task, its panels, their metrics, axes and grouping keys) and ``wandb_view`` (the view
``wandb-workspaces`` would save). ``--publish`` saves it to the server as a workspace view and prints its URL.

Panels of a task's section (``T`` its primary loss term, ``S`` its headline evaluation suffix: the task card's
``analysis.suffix`` where logged, else the first; every line plot against the training step ``trainer/step``;
grouped panels show the mean over the runs of a group, seeds included, with its min–max band):

1. *pct by <dimension>* (log–log) for every sweep dimension that varies (the card's ``dimensions`` where it
   declares them), else one *pct* panel; with several suffixes, pct at every suffix; pct of each further term;
2. *L_total / L_mean / L_equiv* (log–log; with the trivial predictor's ``null_total`` and the equivariant
   baseline's ``baseline_total`` where logged);
3. *L / L_base*: ``total_rel_baseline`` and ``total_rel_null`` (log–log): has the model left its baseline?
4. *headline*: bars of the summaries pct min and pct final (``headline/[S/]T/…``) per group; with several
   suffixes, final pct at every suffix;
5. where logged: the *degree spectrum* E_l against step (log–log) and at the end (bars), per term;
6. where logged: *efficiency gap* points, final L_total against each compute axis (:data:`COMPUTE_AXES`: parameters,
   FLOPs and seconds per training step, FLOPs per inference; log–log).

The run table pins the varying dimensions and the headline summaries, so a sweep sorts by min or final pct.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from equivrepro.metrics import keys
from equivrepro.metrics.headline import PCT_FINAL, PCT_MIN, REL_BASELINE, REL_NULL, below_quantity, summary_key
from equivrepro.train.loggers import (
    DIMENSIONS,
    STEP_METRIC,
    dimension_key,
    dimension_of,
    run_group,
    run_job_type,
    sweep_dimensions,
)

log = logging.getLogger("equivrepro.dashboard")

__all__ = ["RunInfo", "TaskView", "local_runs", "wandb_runs", "discover", "build_spec", "to_workspace", "main", "GROUPABLE", "COMPUTE_AXES"]

#: dimensions a panel may group by, in order of preference (seeds are replicates: averaged, never grouped;
#: ``n_params`` says what ``model_label`` says)
GROUPABLE = tuple(d for d in DIMENSIONS if d not in ("task", "seed", "n_params"))
_LOSS_QUANTITIES = ("total", "mean", "equiv", "null_total", "baseline_total")
_MIN_RUNS_SHOWN = 10
#: the compute profile entries an efficiency-gap panel puts on its x-axis (``compute/<name>``, where logged); the
#: rest of the profile (batch size, threads, FLOP spread, uncounted share) describes the measurement, not a budget
COMPUTE_AXES = ("parameters", "flops_per_step", "seconds_per_step", "flops_per_inference")


@dataclass
class RunInfo:
    """What the dashboard needs of one run: its task, group, sweep-dimension values and logged metric names."""

    name: str
    task: str | None
    group: str | None
    dims: dict[str, Any]  # {dim_<column>: value}
    metrics: set[str]
    primary_term: str | None = None


@dataclass
class TaskView:
    """What one task's runs logged."""

    task: str
    title: str
    runs: int
    terms: list[str]  # primary first
    suffixes: dict[str, list[str]]  # term → evaluation suffixes (natural order)
    suffix: str  # the primary term's headline suffix (the card's, else the first)
    grouping: list[str]  # dim_<column> keys that vary across the runs
    losses: dict[tuple[str, str], list[str]]  # (term, suffix) → L quantities logged
    ratios: dict[tuple[str, str], list[str]]  # (term, suffix) → reference ratios logged
    spectrum: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (term, suffix) → degrees
    compute: list[str] = field(default_factory=list)  # compute/… keys


# ----------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------
def _primary_term(config: Mapping[str, Any]) -> str | None:
    from equivrepro.results import run_columns

    try:
        return run_columns(config, run_id="-").get("primary_term")
    except Exception as exc:  # a config whose task cannot be built here: the terms are still discovered
        log.warning("cannot determine the primary term of %s: %s", config.get("name"), exc)
        return None


def local_runs(runs_dir: str | Path, sweep: str | None = None) -> list[RunInfo]:
    """Runs under ``runs_dir`` (recursively), optionally only those of wandb group ``sweep``."""
    from equivrepro.runs import RunDir

    out, groups = [], Counter()
    for rd in RunDir.find(runs_dir):
        try:
            config = rd.read_config()
            metrics = {m for _, m, _ in rd.read_metrics()}
        except (FileNotFoundError, ValueError) as exc:
            log.warning("skipping %s: %s", rd.path, exc)
            continue
        logger = config.get("logger") if isinstance(config.get("logger"), Mapping) else {}
        group = run_group(config, logger.get("group"))
        groups[group] += 1
        if sweep is not None and group != sweep:
            continue
        out.append(RunInfo(rd.name, run_job_type(config), group, sweep_dimensions(config), metrics, _primary_term(config)))
    if sweep is not None and not out:
        raise SystemExit(f"no run of sweep (wandb group) {sweep!r} under {runs_dir}; groups there: {dict(groups) or 'none'}")
    return out


def _unwrap(config: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        if str(k).startswith("_"):
            continue
        out[k] = v["value"] if isinstance(v, Mapping) and set(v) == {"value"} else v
    return out


def wandb_runs(entity: str, project: str, sweep: str | None = None, api: Any = None) -> list[RunInfo]:
    """Runs of the wandb project (optionally of group ``sweep``): config, dimensions as logged, summary keys."""
    if api is None:
        import wandb

        api = wandb.Api()
    out = []
    for run in api.runs(f"{entity}/{project}", filters={"group": sweep} if sweep else {}):
        config = _unwrap(run.config)
        dims = {k: v for k, v in config.items() if dimension_of(k)}
        if not dims:  # a run logged before the sink wrote dimensions
            dims = sweep_dimensions(config)
        summary = getattr(run, "summary", None) or {}
        out.append(
            RunInfo(
                getattr(run, "name", "?"),
                run_job_type(config, getattr(run, "job_type", None) or None),
                getattr(run, "group", None),
                dims,
                set(summary.keys()),
                _primary_term(config),
            )
        )
    return out


# ----------------------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Card:
    title: str
    dimensions: tuple[str, ...]  # run_columns names; empty: any varying dimension
    suffix: str | None  # the evaluation suffix the task's analyses prefer


def _cards() -> dict[str, _Card]:
    """What the task cards (:mod:`equivrepro.catalog`) declare, where they can be read; ``{}`` otherwise."""
    try:
        from equivrepro import catalog

        cards = catalog.cards()
    except Exception as exc:  # no catalog, or a malformed card: the dashboard still works from the runs alone
        log.info("task cards not used: %s", exc)
        return {}
    return {
        t: _Card(str(getattr(c, "title", t)), tuple(getattr(c, "dimensions", ()) or ()), (getattr(c, "analysis", None) or {}).get("suffix"))
        for t, c in cards.items()
    }


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str)


def _varying(runs: Sequence[RunInfo], declared: Sequence[str] = ()) -> list[str]:
    """``dim_<column>`` keys whose values differ across ``runs`` (only the ``declared`` dimensions, in their order,
    when a task card declares them), without duplicates: a key that splits the runs as an earlier one does adds
    nothing."""
    order = [d for d in declared if d in GROUPABLE] if declared else list(GROUPABLE)
    out, partitions = [], set()
    for column in order:
        k = dimension_key(column)
        values = [_hashable(r.dims.get(k)) for r in runs]
        if len(set(values)) < 2:
            continue
        index = {v: i for i, v in enumerate(dict.fromkeys(values))}
        partition = tuple(index[v] for v in values)
        if partition in partitions:
            continue
        partitions.add(partition)
        out.append(k)
    return out


def discover(runs: Sequence[RunInfo]) -> list[TaskView]:
    """One :class:`TaskView` per task that logged at least one ``equiv/[S/]T/pct`` key (sorted by card order, then
    name); runs without a task name are skipped."""
    cards = _cards()
    by_task: dict[str, list[RunInfo]] = {}
    for r in runs:
        if r.task:
            by_task.setdefault(r.task, []).append(r)
    views = []
    for task, rs in by_task.items():
        names = set().union(*(r.metrics for r in rs))
        parsed = [k for k in (keys.MetricKey.parse(m) for m in names) if k is not None]
        pct = [k for k in parsed if k.family == keys.EQUIV and k.quantity == keys.HEADLINE_QUANTITY]
        if not pct:
            log.warning("task %s: no %s/…/%s key logged; no section", task, keys.EQUIV, keys.HEADLINE_QUANTITY)
            continue
        have = {str(k) for k in parsed}
        votes = Counter(r.primary_term for r in rs if r.primary_term)
        found = sorted({k.term for k in pct})
        primary = next((t for t, _ in votes.most_common() if t in found), found[0])
        terms = [primary] + [t for t in found if t != primary]
        suffixes = {t: sorted({k.suffix for k in pct if k.term == t}, key=keys.suffix_sort_key) for t in terms}
        series = [(t, s) for t in terms for s in suffixes[t]]
        losses = {ts: [q for q in _LOSS_QUANTITIES if keys.key(keys.EQUIV, ts[0], q, ts[1]) in have] for ts in series}
        ratios = {ts: [q for q in (REL_BASELINE, REL_NULL) if keys.key(keys.EQUIV, ts[0], q, ts[1]) in have] for ts in series}
        spectrum: dict[tuple[str, str], list[int]] = {}
        for k in parsed:
            degree = keys.degree_of(k)
            if degree is not None:
                spectrum.setdefault((k.term, k.suffix), []).append(degree)
        rank = {t: i for i, t in enumerate(terms)}
        spectrum = {
            ts: sorted(set(spectrum[ts]))
            for ts in sorted(spectrum, key=lambda ts: (rank.get(ts[0], len(rank)), ts[0], keys.suffix_sort_key(ts[1])))
        }
        compute = [keys.scalar_key(keys.COMPUTE, a) for a in COMPUTE_AXES if keys.scalar_key(keys.COMPUTE, a) in names]
        card = cards.get(task)
        suffix = card.suffix if card and card.suffix in suffixes[primary] else suffixes[primary][0]
        views.append(
            TaskView(
                task=task,
                title=card.title if card else task,
                runs=len(rs),
                terms=terms,
                suffixes=suffixes,
                suffix=suffix,
                grouping=_varying(rs, card.dimensions if card else ()),
                losses=losses,
                ratios=ratios,
                spectrum=spectrum,
                compute=compute,
            )
        )
    order = {t: i for i, t in enumerate(cards)}
    return sorted(views, key=lambda v: (order.get(v.task, len(order)), v.task))


# ----------------------------------------------------------------------------------------------------------
# The specification
# ----------------------------------------------------------------------------------------------------------
def _suffix_label(suffix: str) -> str:
    return f" at {suffix}" if suffix else ""


def _line(title: str, y: list[str], groupby: str | None) -> dict[str, Any]:
    """A line plot against the training step, log–log (as the paper's figures)."""
    return {"kind": "line", "title": title, "x": STEP_METRIC, "y": y, "log_x": True, "log_y": True, "groupby": groupby}


def _headline_suffix(v: TaskView, term: str) -> str:
    return v.suffix if v.suffix in v.suffixes[term] else v.suffixes[term][0]


def _task_panels(v: TaskView) -> list[dict[str, Any]]:
    primary, s0 = v.terms[0], v.suffix
    first = v.grouping[0] if v.grouping else None
    at = _suffix_label(s0)

    def pct(t: str, s: str) -> str:
        return keys.key(keys.EQUIV, t, keys.HEADLINE_QUANTITY, s)

    panels = []
    for g in v.grouping or [None]:
        by = f" by {dimension_of(g)}" if g else ""
        panels.append(_line(f"pct ({primary}{at}){by}: share of the held-out loss from equivariance error", [pct(primary, s0)], g))
    if len(v.suffixes[primary]) > 1:
        panels.append(_line(f"pct ({primary}) at every evaluation suffix", [pct(primary, s) for s in v.suffixes[primary]], first))
    for t in v.terms[1:]:
        panels.append(_line(f"pct ({t}{_suffix_label(_headline_suffix(v, t))})", [pct(t, _headline_suffix(v, t))], first))
    qs = v.losses.get((primary, s0), [])
    if qs:
        panels.append(_line(f"L_total / L_mean / L_equiv ({primary}{at})", [keys.key(keys.EQUIV, primary, q, s0) for q in qs], first))
    rel = v.ratios.get((primary, s0), [])
    if rel:
        panels.append(
            _line(
                f"L / L_base ({primary}{at}): below 1 = the model has left its baseline",
                [keys.key(keys.EQUIV, primary, q, s0) for q in rel],
                first,
            )
        )
    panels.append(
        {
            "kind": "bar",
            "title": f"headline ({primary}{at}): pct min and final",
            "summary": True,
            "groupby": first,
            "metrics": [summary_key(pct(primary, s0), q) for q in (PCT_MIN, PCT_FINAL)],
        }
    )
    if len(v.suffixes[primary]) > 1:
        panels.append(
            {
                "kind": "bar",
                "title": f"final pct ({primary}) at every evaluation suffix",
                "summary": True,
                "groupby": first,
                "metrics": [summary_key(pct(primary, s), PCT_FINAL) for s in v.suffixes[primary]],
            }
        )
    for (t, s), degrees in v.spectrum.items():
        if t in v.suffixes and s != _headline_suffix(v, t):
            continue
        ys = [keys.degree_key(t, l, s) for l in degrees]
        # lines, not a stacked area: a stack would pile up the degrees of every run of the sweep
        panels.append(_line(f"degree spectrum E_l ({t}{_suffix_label(s)})", ys, first))
        panels.append(
            {
                "kind": "bar",
                "title": f"degree spectrum at the end ({t}{_suffix_label(s)})",
                "metrics": ys,
                "summary": False,
                "groupby": first,
            }
        )
    total = keys.key(keys.EQUIV, primary, "total", s0)
    for c in v.compute:
        panels.append(
            {
                "kind": "scatter",
                "title": f"efficiency gap: final L_total ({primary}{at}) vs {c}",
                "x": c,
                "y": total,
                "log_x": True,
                "log_y": True,
            }
        )
    return panels


def build_spec(runs: Sequence[RunInfo], entity: str, project: str, sweep: str | None = None, name: str | None = None) -> dict[str, Any]:
    """The readable specification of the workspace (JSON-able): ``sections`` (one per task) and ``runset``."""
    views = discover(runs)
    if not views:
        raise SystemExit(f"no run with a {keys.EQUIV}/…/{keys.HEADLINE_QUANTITY} metric among {len(runs)} run(s): nothing to show")
    columns = list(dict.fromkeys(f"config:{g}" for v in views for g in v.grouping))
    for v in views:
        p = keys.key(keys.EQUIV, v.terms[0], keys.HEADLINE_QUANTITY, v.suffix)
        columns += [f"summary:{summary_key(p, q)}" for q in (PCT_MIN, PCT_FINAL, below_quantity())]
    return {
        "entity": entity,
        "project": project,
        "sweep": sweep,
        "name": name or f"equivrepro: {sweep or project}",
        "x_axis": STEP_METRIC,
        "max_runs": max(_MIN_RUNS_SHOWN, len(runs)),
        "runset": {"group": sweep, "pinned_columns": columns},
        "sections": [{"name": v.title, "task": v.task, "runs": v.runs, "grouping": v.grouping, "panels": _task_panels(v)} for v in views],
    }


def to_workspace(spec: Mapping[str, Any]):
    """The ``wandb_workspaces`` Workspace of a specification (built offline; ``.save()`` publishes it)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def group(g):
        return wr.Config(g) if g else None

    def panel(p):
        agg = {"groupby": group(p["groupby"]), "groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"} if p.get("groupby") else {}
        if p["kind"] == "line":
            return wr.LinePlot(
                title=p["title"],
                x=p["x"],
                y=list(p["y"]),
                log_x=p["log_x"],
                log_y=p["log_y"],
                max_runs_to_show=spec["max_runs"],
                title_x=p["x"],
                **agg,
            )
        if p["kind"] == "bar":
            metrics = [wr.SummaryMetric(m) if p.get("summary") else m for m in p["metrics"]]
            return wr.BarPlot(title=p["title"], metrics=metrics, orientation="v", max_runs_to_show=spec["max_runs"], **agg)
        if p["kind"] == "scatter":
            return wr.ScatterPlot(
                title=p["title"], x=wr.SummaryMetric(p["x"]), y=wr.SummaryMetric(p["y"]), log_x=p["log_x"], log_y=p["log_y"]
            )
        raise ValueError(f"unknown panel kind {p['kind']!r}")

    sections = [
        ws.Section(
            name=s["name"],
            panels=[panel(p) for p in s["panels"]],
            is_open=True,
            layout_settings=ws.SectionLayoutSettings(columns=3, rows=2),
        )
        for s in spec["sections"]
    ]
    runset = spec["runset"]
    return ws.Workspace(
        entity=spec["entity"],
        project=spec["project"],
        name=spec["name"],
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=spec["x_axis"], max_runs=spec["max_runs"]),
        runset_settings=ws.RunsetSettings(
            filters=f"Metric('Group') == {runset['group']!r}" if runset["group"] else "", pinned_columns=list(runset["pinned_columns"])
        ),
    )


def _wire(workspace) -> dict[str, Any]:
    """The view ``wandb-workspaces`` saves (its pydantic model, as JSON)."""
    return json.loads(workspace._to_model().model_dump_json(by_alias=True, exclude_none=True))


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="equivrepro-dashboard", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--entity", required=True, help="wandb entity (user or team) that owns the project")
    p.add_argument("--project", required=True, help="wandb project the runs were synced to (logger.project)")
    p.add_argument("--sweep", default=None, help="only the runs of this wandb group (logger.group, else the experiment name)")
    p.add_argument(
        "--runs-dir",
        default=None,
        help="discover tasks and metrics from these local run directories (default without --publish: "
        "$EQUIVREPRO_RUNS or ./runs); with --publish and no --runs-dir, from the wandb project",
    )
    p.add_argument("--name", default=None, help="workspace name (default 'equivrepro: <sweep or project>')")
    p.add_argument("--out", default=None, help="write the specification (JSON) here instead of printing it")
    p.add_argument("--publish", action="store_true", help="save the workspace to the wandb server (needs network and login)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import os

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.runs_dir is not None or not args.publish:
        runs_dir = args.runs_dir or os.environ.get("EQUIVREPRO_RUNS") or "runs"
        try:
            runs = local_runs(runs_dir, args.sweep)
        except FileNotFoundError as exc:
            raise SystemExit(f"{exc} (pass --runs-dir, or --publish to read the runs from wandb)") from None
        source = str(runs_dir)
    else:
        runs = wandb_runs(args.entity, args.project, args.sweep)
        source = f"wandb:{args.entity}/{args.project}"
    spec = build_spec(runs, args.entity, args.project, args.sweep, args.name)
    spec["source"] = source
    workspace = to_workspace(spec)
    if args.publish:
        workspace.save()
        print(f"saved workspace {spec['name']!r}: {workspace.url}")
    text = json.dumps({**spec, "wandb_view": _wire(workspace)}, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(
            f"wrote the dashboard specification ({len(spec['sections'])} section(s), "
            f"{sum(len(s['panels']) for s in spec['sections'])} panels) to {args.out}"
        )
    elif not args.publish:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
