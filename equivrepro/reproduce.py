"""Reproduce the paper's figures: run (or find) the sweeps each figure needs, collect the results table, draw.

    equivrepro-reproduce --scale smoke --figures reproduce         # what `make reproduce` runs
    equivrepro-reproduce --scale smoke --task forcefield           # one task's default run and figures
    equivrepro-reproduce --scale smoke --figures all               # every figure, CPU presets
    equivrepro-reproduce --scale paper --figures forcefield-vary-data --launcher slurm \\
        -- hydra.launcher.partition=gpu hydra.launcher.account=myproj     # submit the paper-scale sweep
    equivrepro-reproduce --scale paper --runs-dir /shared/runs --figures all    # draw from finished runs
    equivrepro-reproduce --scale paper --source wandb:my-entity/equivrepro --figures all
    equivrepro-reproduce --list                                    # figures, make targets, sweeps

Which figures and sweeps exist is what the task cards declare (:mod:`equivrepro.catalog`).

Scales
------
* ``smoke`` — the CPU presets (``experiment=<task>_smoke``: tiny models, embedded data, a few hundred steps,
  one seed). Every figure of the paper, on toy budgets; minutes, not days.
* ``paper`` — the paper's settings (``experiment=<task>_paper``, three seeds). If the runs directory already
  holds runs of a figure's sweeps (or ``--draw-only``, or ``--source wandb:…``), nothing is launched: the
  figure is drawn from what is there, and missing runs are listed.

Each figure draws exactly the runs of its sweeps: every sweep point is composed with Hydra and its run
identity selects its rows from the table. Finished runs are never re-run and unfinished ones resume, so the
command can be interrupted and relaunched at any time.

Outputs: ``<results_dir>/results.{parquet,csv}`` (the table of every run under the runs directory),
``<results_dir>/pct_summary.csv`` (first / dip / final pct per run), and ``<figures_dir>/<figure>.{png,pdf,csv}``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from equivrepro import catalog
from equivrepro.sweeps import Job, add_launch_arguments, launch_dirs, launch_multirun, run_locally, sweep_jobs

__all__ = ["main", "select_figures", "draw_figures", "print_manifest", "print_pct_lines"]

log = logging.getLogger("equivrepro.reproduce")


def select_figures(names: Sequence[str], task: str | None = None) -> list[str]:
    """Figure names from ``names`` (``all``, ``reproduce`` or explicit names) or a task's reproduce figures."""
    available = catalog.figures()
    if task is not None:
        if names:
            raise SystemExit("give either --task or --figures, not both")
        try:
            return catalog.reproduce_figures(task)
        except KeyError as exc:
            raise SystemExit(str(exc)) from None
    if not names or list(names) == ["all"]:
        return list(available)
    if list(names) == ["reproduce"]:
        return catalog.reproduce_figures()
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"unknown figure(s) {unknown}; choose from: all, reproduce, {', '.join(available)}")
    return list(dict.fromkeys(names))


def print_manifest(scale: str) -> None:
    specs = catalog.sweeps()
    print(f"{'figure':34s} {'make target':56s} sweep command(s) at SCALE={scale}")
    for name, fig in catalog.figures().items():
        cmds = [specs[s].command(scale) for s in fig.sweeps]
        print(f"{name:34s} {'make reproduce-figure-' + name:56s} {cmds[0] if cmds else ''}")
        for c in cmds[1:]:
            print(f"{'':34s} {'':56s} {c}")


def draw_figures(table, figure_names: Sequence[str], jobs_by_sweep: Mapping[str, list[Job]], scale: str, figures_dir: Path) -> list[str]:
    """Draw each figure from the rows of its sweeps' runs; returns the names that could not be drawn."""
    specs, figs = catalog.sweeps(), catalog.figures()
    failed = []
    present = set(table["run_id"].astype(str).unique())
    for name in figure_names:
        fig = figs[name]
        wanted = {j.run_id for s in fig.sweeps for j in jobs_by_sweep[s]}
        missing = sorted(wanted - present)
        if missing:
            where = {j.run_id: j.overrides for s in fig.sweeps for j in jobs_by_sweep[s]}
            log.warning(
                "figure %s: %d of %d runs have no results yet: %s",
                name,
                len(missing),
                len(wanted),
                "; ".join(" ".join(where[m]) for m in missing),
            )
        sub = table[table["run_id"].astype(str).isin(wanted)]
        if sub.empty:
            log.error(
                "figure %s: none of its runs has results; run its sweep(s) first: %s",
                name,
                " | ".join(specs[s].command(scale) for s in fig.sweeps),
            )
            failed.append(name)
            continue
        try:
            catalog.drawing_function(fig.draw)(sub, figures_dir / name, **fig.call_kwargs(scale))
            log.info("figure %s → %s.{png,pdf,csv}", name, figures_dir / name)
        except ValueError as exc:
            log.error("figure %s: %s", name, exc)
            failed.append(name)
    return failed


def print_pct_lines(summary, table, run_ids: Sequence[str], threshold: float = 0.02) -> None:
    """One ``[pct]`` line per default run and evaluation suffix of its headline term: pct at the first evaluation, the
    first step with pct ≤ 2 % *after the model left its reference predictor* (the fitted equivariant baseline, else
    the trivial one), the minimum and the final value, with L/L_base and L/L_null at the end — a low pct measured
    while the model is no better than a cheap equivariant predictor says nothing about learned equivariance."""
    from equivrepro.metrics import keys

    if summary.empty:
        return
    rel = table[table["metric"].astype(str).map(lambda m: keys.matches(m, family=keys.EQUIV, quantity="total_rel_*"))]
    rel = {(str(r), str(m), int(s)): float(v) for r, m, s, v in zip(rel["run_id"], rel["metric"], rel["step"], rel["value"])}

    def ratio(r, quantity, step) -> str:
        v = rel.get((str(r["run_id"]), str(keys.parse(str(r["metric"])).with_(quantity=quantity)), int(step)))
        return f"{v:.2f}" if v is not None else "–"

    def fmt_step(v) -> str | None:
        return None if v is None or v != v else str(int(v))

    rows = summary[summary["run_id"].astype(str).isin(set(run_ids))]
    for _, r in rows.sort_values(["task", "metric"]).iterrows():
        k = keys.parse(str(r["metric"]))
        term = str(r.get("primary_term") or "")
        if k is None or (term and k.term != term):
            continue
        left, below = fmt_step(r["left_step"]), fmt_step(r["below_step"])
        ref = {"total_rel_baseline": "baseline", "total_rel_null": "trivial predictor"}.get(r["reference"], "reference")
        if left is None:
            after = f"never left its {ref}"
        elif below is None:
            after = f"left its {ref} at step {left}; never ≤ {100 * threshold:g} % after that"
        else:
            after = f"left its {ref} at step {left}; first ≤ {100 * threshold:g} % after that: step {below}"
        print(
            f"[pct] {r['task']:12s} {str(r['metric']):30s} step {int(r['first_step'])}: {100 * r['first_pct']:5.2f} %   "
            f"min {100 * r['min_pct']:5.2f} % (step {int(r['min_step'])})   "
            f"final {100 * r['final_pct']:5.2f} % (step {int(r['final_step'])}, "
            f"L/L_base {ratio(r, 'total_rel_baseline', r['final_step'])}, L/L_null {ratio(r, 'total_rel_null', r['final_step'])})   "
            f"{after}",
            flush=True,
        )


def print_evaluation_share(jobs: Sequence[Job]) -> None:
    """One ``[time]`` line per run: wall time of its last session and the share spent in equivariance evaluations."""
    for job in {j.run_id: j for j in jobs}.values():
        s = job.run.read_status()
        if "equivariance_share" in s:
            print(f"[time] {job.run.name}: {s['wall_s']:.0f} s, equivariance evaluation {100 * s['equivariance_share']:.1f} %", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="equivrepro-reproduce",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_launch_arguments(p, catalog.SCALES, "sweep")
    p.add_argument("--figures", nargs="+", default=None, help="figure names (see --list), 'all' (default) or 'reproduce'")
    p.add_argument("--task", default=None, help="one task's default run and its reproduce figures")
    p.add_argument("--source", default=None, help="'wandb:<entity>/<project>' to draw from a wandb project instead of the runs directory")
    p.add_argument("--list", action="store_true", help="print figures, make targets and sweep commands, then exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[reproduce] %(message)s")  # quiet libraries (fontTools, …)
    for name in ("equivrepro",):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.list:
        print_manifest(args.scale)
        return 0

    scale = args.scale
    dirs = launch_dirs(args)
    args.jobs = dirs.workers
    runs_dir, results_dir, figures_dir = dirs.runs, dirs.results, dirs.figures
    names = select_figures(args.figures or ([] if args.task else ["all"]), args.task)
    figs, specs = catalog.figures(), catalog.sweeps()
    sweep_names = list(dict.fromkeys(s for n in names for s in figs[n].sweeps))
    extra = list(args.extra)
    log_extra = ["logger=none", "trainer.progress_bar=false"] if scale == "smoke" else []  # not part of run identity

    t0 = time.perf_counter()
    compose_extra = extra + ([f"hydra/launcher={args.launcher}"] if args.launcher != "local" else [])
    jobs_by_sweep = {s: sweep_jobs(specs[s].overrides(scale), runs_dir, compose_extra) for s in sweep_names}
    launch_failed: list[str] = []
    existing = [j for js in jobs_by_sweep.values() for j in js if j.run.exists()]
    if args.source or args.draw_only:
        pass
    elif scale == "paper" and existing and not args.launch:
        log.info(
            "paper scale: %s already holds %d run(s) of these sweeps, so nothing is launched; drawing from them "
            "(add --launch to start or resume the missing ones)",
            runs_dir,
            len(existing),
        )
    elif args.launcher == "local":
        all_jobs = [j for s in sweep_names for j in jobs_by_sweep[s]]
        for s in sweep_names:
            log.info("sweep %s (%s): %s", s, scale, specs[s].command(scale))
        log.info(
            "%d distinct runs, %d to run or resume, %d at a time",
            len({j.run_id for j in all_jobs}),
            len({j.run_id for j in all_jobs if not j.finished()}),
            args.jobs,
        )
        launch_failed = sorted({j.run.name for j in run_locally(all_jobs, runs_dir, args.jobs, log_extra + extra)})
    else:
        for s in sweep_names:
            if any(not j.finished() for j in jobs_by_sweep[s]):
                if launch_multirun(specs[s].overrides(scale), runs_dir, args.launcher, log_extra + extra) != 0:
                    launch_failed.append(s)
    if args.no_draw:
        return 1 if launch_failed else 0

    from equivrepro.atomic import atomic_write_text
    from equivrepro.results import collect_local, collect_wandb, summarize_pct, write_table

    if args.source:
        if not args.source.startswith("wandb:"):
            raise SystemExit(f"--source must look like wandb:<entity>/<project>, got {args.source!r}")
        table = collect_wandb(args.source[len("wandb:") :])
    else:
        if not runs_dir.exists():
            raise SystemExit(f"no runs directory {runs_dir}: launch the sweeps first (drop --draw-only)")
        table = collect_local(runs_dir)
    path = write_table(table, results_dir)
    summary = summarize_pct(table)
    atomic_write_text(results_dir / "pct_summary.csv", summary.to_csv(index=False))
    log.info(
        "results table: %s (%d rows, %d runs); pct summary: %s",
        path,
        len(table),
        table["run_id"].nunique(),
        results_dir / "pct_summary.csv",
    )
    default_runs = [j.run_id for s in sweep_names if specs[s].name == "default" for j in jobs_by_sweep[s]]
    print_pct_lines(summary, table, default_runs)
    print_evaluation_share([j for s in sweep_names if specs[s].name == "default" for j in jobs_by_sweep[s]])
    failed = draw_figures(table, names, jobs_by_sweep, scale, figures_dir)
    log.info(
        "done in %.0f s: %d figure(s) in %s%s",
        time.perf_counter() - t0,
        len(names) - len(failed),
        figures_dir,
        f"; not drawn: {failed}" if failed else "",
    )
    if launch_failed:
        log.error("sweeps that exited with an error: %s", launch_failed)
    return 1 if (failed or launch_failed) else 0


if __name__ == "__main__":
    sys.exit(main())
