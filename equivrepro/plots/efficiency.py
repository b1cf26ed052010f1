"""Figures of the efficiency study (:mod:`equivrepro.efficiency`): held-out loss against training compute, and the
compute-optimal frontier. One panel per task; families as series.

* ``efficiency-flops`` / ``efficiency-seconds`` — L_total (the twirled families: L_mean + L_equiv/K) against
  training FLOPs / wall-clock seconds, log–log. Small markers: every evaluation of every run (marker shape = model
  size, hollow = before the fit range); solid line: the family's frontier (lowest loss over its sizes at each
  budget); dashed: the fitted L∞ + A·C^(−γ) with its bootstrap band (shaded), γ in the legend.
* ``efficiency-frontier`` — the compute-optimal model size (parameters) against the FLOP budget per family (steps:
  the grid's sizes; a winner at the smallest or largest size only bounds the optimum), with the fitted
  N_opt ∝ C^a in the legend.

Every figure is written as ``<stem>.{png,pdf}`` and its numbers as ``<stem>.csv`` (columns ``task, family, series,
x, y, y_lo, y_hi, size``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from equivrepro.atomic import atomic_write_text
from equivrepro.plots.style import LOSS_LABEL, new_figure, plain_log_ticks, save_figure, series_colors, task_order, task_title

__all__ = ["loss_vs_compute", "frontier_sizes", "draw_all", "CSV_COLUMNS"]

CSV_COLUMNS = ["task", "family", "series", "x", "y", "y_lo", "y_hi", "size"]
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_AXIS_LABEL = {"flops": "Training compute (FLOPs)", "seconds": "Training wall-clock time (s)"}


def _families(points: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(points["family"]))


def _colors(points: pd.DataFrame) -> dict[str, Any]:
    fams = _families(points)
    return dict(zip(fams, series_colors(len(fams))))


def _write_csv(rows: list[dict], stem: Path) -> pd.DataFrame:
    data = pd.DataFrame(rows).reindex(columns=CSV_COLUMNS)
    atomic_write_text(stem.with_name(stem.name + ".csv"), data.to_csv(index=False))
    return data


def loss_vs_compute(points: pd.DataFrame, results: Mapping[str, Any], stem: str | Path, axis: str = "flops") -> pd.DataFrame:
    """L against training compute on ``axis`` (``flops`` | ``seconds``), one panel per task. ``results``: task →
    :class:`equivrepro.efficiency.TaskResult`. Returns the plotted numbers."""
    stem = Path(stem)
    pts = points[(points[axis] > 0) & (points["loss"] > 0)]
    if pts.empty:
        raise ValueError(f"no points with positive {axis} and loss to draw")
    tasks = sorted(dict.fromkeys(pts["task"]), key=task_order)
    fig, axes = new_figure(len(tasks), ncols=min(len(tasks), 3), panel_size=(5.2, 3.9))
    colors = _colors(pts)
    rows: list[dict] = []
    for ax, task in zip(axes, tasks):
        tp = pts[pts["task"] == task]
        ar = results[task].axes.get(axis) if task in results else None
        for fam in _families(tp):
            fp = tp[tp["family"] == fam]
            color = colors[fam]
            twirled = (fp["kind"] == "twirled").any()
            if not twirled:  # the twirled families' points sit on their source's compute: draw only their curves
                for size_index, sp in fp.groupby("size_index"):
                    marker = _MARKERS[int(size_index) % len(_MARKERS)]
                    fit_mask = sp["in_fit"].astype(bool)
                    ax.scatter(sp.loc[fit_mask, axis], sp.loc[fit_mask, "loss"], s=11, marker=marker, color=color, alpha=0.55, lw=0)
                    ax.scatter(
                        sp.loc[~fit_mask, axis],
                        sp.loc[~fit_mask, "loss"],
                        s=11,
                        marker=marker,
                        facecolors="none",
                        edgecolors=color,
                        alpha=0.5,
                        lw=0.7,
                    )
                    rows += [
                        {"task": task, "family": fam, "series": "point", "x": x, "y": y, "size": n}
                        for x, y, n in zip(sp[axis], sp["loss"], sp["n_params"])
                    ]
            label = fam
            if ar is not None and fam in ar.frontiers:
                fr = ar.frontiers[fam]
                ok = np.isfinite(fr.best_loss)
                ax.plot(fr.budgets[ok], fr.best_loss[ok], color=color, lw=1.0 if twirled else 1.4, ls=":" if twirled else "-", zorder=3)
                rows += [
                    {"task": task, "family": fam, "series": "frontier", "x": x, "y": y, "size": n}
                    for x, y, n in zip(fr.budgets[ok], fr.best_loss[ok], fr.best_size[ok])
                ]
            if ar is not None and fam in ar.fits:
                fit = ar.fits[fam]
                lo_c, hi_c = float(fp.loc[fp["in_fit"].astype(bool), axis].min()), float(fp[axis].max())
                if np.isfinite(lo_c) and hi_c > lo_c:
                    grid = np.geomspace(lo_c, hi_c, 60)
                    y = fit.predict(grid)
                    lo, hi = fit.band(grid)
                    ax.plot(grid, y, color=color, lw=1.0, ls="--", alpha=0.9, zorder=2)
                    if not twirled:
                        ax.fill_between(grid, lo, hi, color=color, alpha=0.12, lw=0, zorder=1)
                    rows += [
                        {"task": task, "family": fam, "series": "fit", "x": x, "y": v, "y_lo": a, "y_hi": b}
                        for x, v, a, b in zip(grid, y, lo, hi)
                    ]
                    ci = fit.intervals.get("gamma")
                    label += f" (γ {fit.gamma:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}])" if ci else ")")
            ax.plot([], [], color=color, ls="-" if not twirled else ":", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(_AXIS_LABEL.get(axis, axis))
        ax.set_ylabel(LOSS_LABEL)
        ax.set_title(task_title(task))
        plain_log_ticks(ax)
        ax.legend(loc="upper right", fontsize=6.5, frameon=False)
    save_figure(fig, stem)
    return _write_csv(rows, stem)


def frontier_sizes(points: pd.DataFrame, results: Mapping[str, Any], stem: str | Path, axis: str = "flops") -> pd.DataFrame:
    """The compute-optimal model size against budget per trained family with two or more sizes, one panel per task."""
    stem = Path(stem)
    tasks = sorted((t for t in dict.fromkeys(points["task"]) if t in results), key=task_order)
    if not tasks:
        raise ValueError("no task results to draw a frontier from")
    fig, axes = new_figure(len(tasks), ncols=min(len(tasks), 3), panel_size=(4.8, 3.5))
    colors = _colors(points)
    rows: list[dict] = []
    for ax, task in zip(axes, tasks):
        ar = results[task].axes.get(axis)
        drawn = False
        for fam, fr in ar.frontiers.items() if ar is not None else []:
            if fam not in results[task].spec.families:
                continue  # a twirled family's sizes are its source's
            ok = np.isfinite(fr.best_size)
            if not ok.any():
                continue
            label = fam
            opt = ar.optimal_size.get(fam)
            if opt:
                label += f" (N_opt ∝ C^{opt['a']:.2f})"
            ax.step(fr.budgets[ok], fr.best_size[ok], where="post", color=colors[fam], label=label)
            ax.scatter(fr.budgets[ok], fr.best_size[ok], s=8, color=colors[fam])
            rows += [
                {"task": task, "family": fam, "series": "optimal_size", "x": x, "y": y, "size": y}
                for x, y in zip(fr.budgets[ok], fr.best_size[ok])
            ]
            drawn = True
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(_AXIS_LABEL.get(axis, axis))
        ax.set_ylabel("Compute-optimal size (parameters)")
        ax.set_title(task_title(task))
        if drawn:
            ax.legend(loc="best", fontsize=6.5, frameon=False)
    save_figure(fig, stem)
    return _write_csv(rows, stem)


def draw_all(points: pd.DataFrame, results: Mapping[str, Any], figures_dir: str | Path) -> list[Path]:
    """``efficiency-flops``, ``efficiency-seconds`` and ``efficiency-frontier`` under ``figures_dir``; their PNG paths."""
    figures_dir = Path(figures_dir)
    out = []
    for axis in ("flops", "seconds"):
        loss_vs_compute(points, results, figures_dir / f"efficiency-{axis}", axis)
        out.append(figures_dir / f"efficiency-{axis}.png")
    frontier_sizes(points, results, figures_dir / "efficiency-frontier")
    out.append(figures_dir / "efficiency-frontier.png")
    return out
