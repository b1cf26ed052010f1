"""Shared look of the figures: labels, colours, step axes, the 2 % reference line, atomic PNG + PDF output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from equivrepro.train.checkpoint import atomic_write  # noqa: E402

__all__ = [
    "PCT_LABEL",
    "STEP_LABEL",
    "LOSS_LABEL",
    "REFERENCE_PCT",
    "new_figure",
    "save_figure",
    "series_colors",
    "set_step_axis",
    "add_reference_line",
    "plain_log_ticks",
    "task_title",
    "task_order",
]

PCT_LABEL = "Percent of held-out loss from equivariance error (%)"
STEP_LABEL = "Training step"
LOSS_LABEL = "Held-out loss (task units)"
REFERENCE_PCT = 2.0  # the paper's "≤ 2 %" threshold, drawn dashed on every pct plot
plt.rcParams.update(
    {
        "figure.dpi": 100,
        "savefig.dpi": 200,
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.labelsize": 9,
        "legend.fontsize": 8,
        "legend.title_fontsize": 8,
        "axes.grid": True,
        "grid.alpha": 0.25,
        "lines.linewidth": 1.4,
        "pdf.fonttype": 42,  # embed TrueType: editable text in the PDF
    }
)


def task_title(task: str) -> str:
    """The title a task declares in its card (:mod:`equivrepro.catalog`), else its name."""
    from equivrepro import catalog

    c = catalog.cards().get(task)
    return c.title if c is not None else task


def task_order(task: str) -> tuple:
    """Sort key of tasks: the order of their cards, unknown tasks last."""
    from equivrepro import catalog

    names = list(catalog.cards())
    return (names.index(task) if task in names else len(names), task)


def new_figure(n_panels: int = 1, ncols: int | None = None, panel_size: tuple[float, float] = (4.6, 3.4), sharey: bool = False):
    """A figure with ``n_panels`` axes (row-major grid); returns ``(fig, [ax, …])`` with unused axes removed."""
    ncols = ncols or min(n_panels, 3)
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False, constrained_layout=True, sharey=sharey
    )
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.remove()
    return fig, flat[:n_panels]


def series_colors(n: int, sequential: bool = False) -> list:
    """``n`` distinguishable colours; ``sequential`` for ordered series such as flow times t."""
    if sequential:
        cmap = plt.get_cmap("viridis")
        return [cmap(x) for x in np.linspace(0.05, 0.9, max(n, 1))][:n]
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def set_step_axis(ax, steps: Sequence[float], log: bool) -> None:
    """Training-step x axis; ``log`` uses symlog so the step-0 evaluation stays visible (linear below the first
    positive step, logarithmic above)."""
    ax.set_xlabel(STEP_LABEL)
    positive = [s for s in steps if s > 0]
    if log and positive:
        ax.set_xscale("symlog", linthresh=float(min(positive)), linscale=0.4)
    ax.set_xlim(left=0)


def plain_log_ticks(ax) -> None:
    """Log-scale y ticks as plain numbers (0.01, 0.1, 1, 10 — not 10⁻², 2×10⁰), with 1-2-5 ticks when the
    axis spans less than two decades; no minor-tick labels. Call after everything is drawn."""
    from matplotlib import ticker

    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 100:
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def add_reference_line(ax, value: float = REFERENCE_PCT) -> None:
    ax.axhline(value, ls="--", lw=1.0, color="0.35", zorder=1, label=f"{value:g} % reference")


def save_figure(fig, stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically and close the figure."""
    stem = Path(stem)
    paths = []
    for fmt in ("png", "pdf"):
        path = stem.with_name(stem.name + f".{fmt}")
        atomic_write(path, lambda f, fmt=fmt: fig.savefig(f, format=fmt, bbox_inches="tight"), mode="wb")
        paths.append(path)
    plt.close(fig)
    return paths
