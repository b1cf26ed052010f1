"""The paper's figures, drawn from the tidy results table (:mod:`equivrepro.results`).

Every function takes the table (already narrowed to the runs the figure is about — ``scripts/reproduce.py``
selects a sweep's runs by their config identity), writes ``<stem>.png``, ``<stem>.pdf`` and the plotted
numbers as ``<stem>.csv``, and returns those numbers as a DataFrame with columns :data:`DATA_COLUMNS`:
``panel, series, metric, step, value`` (the y value drawn: percent for pct, the loss otherwise; after
smoothing if any), ``lo, hi`` (min and max over replicate runs), ``n_runs``.

Runs that agree on every setting in :data:`equivrepro.results.GROUP_COLUMNS` are replicates (seeds) and
are drawn as their mean with a min–max band; a figure refuses a table whose runs differ in a way it does
not show (e.g. two data sizes in a model-size figure), instead of silently averaging them.

Metric names come from the harness: ``equiv/[S/]T/Q`` with ``S`` the task's evaluation suffix (flow
matching: ``t=0.4``), ``T`` the loss term (the run's ``primary_term`` unless given) and ``Q`` one of
``pct`` (fraction L_equiv/L_total), ``total``, ``mean``, ``equiv``.

Figures (paper §5): :func:`pct_curves` (pct vs step for one task), :func:`loss_decomposition`
(L_total / L_mean / L_equiv), :func:`vary_model_size`, :func:`vary_data_size`, :func:`vary_optimizer`,
:func:`vary_augmentation` (all :func:`vary`), :func:`final_pct_bars` (final pct per flow time) and
:func:`headline` (pct vs step, one panel per task). ``smoothing`` is the paper's variable-span EMA
(:func:`ema_smooth`; the paper used 1e-3 for Proteina), off by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from equivrepro.metrics import keys
from equivrepro.plots.style import (
    LOSS_LABEL,
    PCT_LABEL,
    add_reference_line,
    new_figure,
    plain_log_ticks,
    save_figure,
    series_colors,
    set_step_axis,
    task_order,
    task_title,
)
from equivrepro.results import GROUP_COLUMNS, format_train_size
from equivrepro.train.checkpoint import atomic_write_text

__all__ = [
    "DATA_COLUMNS",
    "ema_smooth",
    "resolve_term",
    "eval_suffixes",
    "pct_curves",
    "loss_decomposition",
    "vary",
    "vary_model_size",
    "vary_data_size",
    "vary_optimizer",
    "vary_augmentation",
    "final_pct_bars",
    "headline",
    "swept_column",
]

DATA_COLUMNS = ["panel", "series", "metric", "step", "value", "lo", "hi", "n_runs"]
_QUANTITY_LABELS = {
    "total": r"$L_\mathrm{total}$: loss of the prediction on rotated inputs, rotated back",
    "mean": r"$L_\mathrm{mean}$: loss of the twirled (rotation-averaged) prediction",
    "equiv": r"$L_\mathrm{equiv}$: equivariance error ($L_\mathrm{total}-L_\mathrm{mean}$)",
    "null_total": "loss of the task's trivial predictor (zero field / empty grid), for scale",
    "baseline_total": "loss of the task's cheap equivariant baseline (fitted on training data)",
}


# ----------------------------------------------------------------------------------------------------
# Smoothing and table helpers
# ----------------------------------------------------------------------------------------------------
def ema_smooth(steps: Sequence[float], values: Sequence[float], span_fraction: float, min_span: float = 1.0) -> np.ndarray:
    """Variable-span exponential moving average over evaluations ordered by step.

    At evaluation ``i`` the span is ``s_i = max(min_span, span_fraction · step_i)`` evaluations and
    ``α_i = 2 / (s_i + 1)``; ``y_0 = x_0``, ``y_i = α_i x_i + (1 − α_i) y_{i−1}``. Early points are barely
    smoothed, late ones strongly (the paper: span = step / 1000 for Proteina). NaNs are skipped.
    """
    steps = np.asarray(steps, dtype=float)
    x = np.asarray(values, dtype=float)
    y = np.full_like(x, np.nan)
    prev = math.nan
    for i, (s, v) in enumerate(zip(steps, x)):
        if math.isnan(v):
            y[i] = prev
            continue
        if math.isnan(prev):
            prev = v
        else:
            alpha = 2.0 / (max(min_span, span_fraction * s) + 1.0)
            prev = alpha * v + (1.0 - alpha) * prev
        y[i] = prev
    return y


def _one(table: pd.DataFrame, column: str, what: str):
    vals = table[column].dropna().unique()
    if len(vals) != 1:
        raise ValueError(f"{what}: expected runs of one {column}, got {sorted(map(str, vals))}; pass {column}= or narrow the table")
    return vals[0]


def resolve_term(table: pd.DataFrame, term: str | None = None) -> str:
    """The loss term to plot: ``term`` if given, else the runs' ``primary_term``, else the only term with a pct."""
    if term:
        return term
    terms = table["primary_term"].dropna().unique()
    if len(terms) == 1:
        return str(terms[0])
    found = sorted(
        {k.term for m in table["metric"].unique() if (k := keys.parse(str(m))) and k.family == keys.EQUIV and k.quantity == "pct"}
    )
    if len(found) == 1:
        return found[0]
    raise ValueError(f"cannot tell which loss term to plot (primary_term {list(terms)}, terms with a pct {found}); pass term=")


def eval_suffixes(table: pd.DataFrame, term: str) -> list[str]:
    """Evaluation suffixes present for ``term`` (``['']`` for one evaluation batch; flow times in numeric order)."""
    found = {
        k.suffix
        for m in table["metric"].unique()
        if (k := keys.parse(str(m))) and k.family == keys.EQUIV and k.term == term and k.quantity == "pct"
    }
    if not found:
        raise ValueError(f"no 'equiv/…/{term}/pct' metric in the table (metrics: {sorted(map(str, table['metric'].unique()))[:20]} …)")
    return sorted(found, key=keys.suffix_sort_key)


def _metric(term: str, quantity: str, suffix: str = "", family: str = keys.EQUIV) -> str:
    return keys.key(family, term, quantity, suffix)


def _suffix_label(suffix: str) -> str:
    return suffix.replace("=", " = ") if suffix else "held-out set"


def _runs(table: pd.DataFrame) -> pd.DataFrame:
    cols = ["run_id"] + [c for c in GROUP_COLUMNS if c in table.columns] + ["seed", "model_label", "optim_label"]
    return table[cols].drop_duplicates("run_id").reset_index(drop=True)


def _check_replicates(table: pd.DataFrame, by: str | None, what: str) -> None:
    """Runs sharing a value of ``by`` (or all runs) must agree on GROUP_COLUMNS: only seeds may differ."""
    runs = _runs(table)
    groups = runs.groupby(by, dropna=False, observed=True) if by else [(None, runs)]
    for key, g in groups:
        for col in GROUP_COLUMNS:
            vals = set(g[col].astype(str))
            if len(vals) > 1:
                where = f" with {by}={key}" if by else ""
                raise ValueError(
                    f"{what}: the runs{where} differ in {col} ({sorted(vals)}), so they are not replicates; "
                    f"narrow the table to one sweep (e.g. select its run_ids) before drawing"
                )


def _curves(
    table: pd.DataFrame, metric: str, series_of: Callable[[pd.DataFrame], object], smoothing: float | None, scale: float
) -> pd.DataFrame:
    """Per series and step: mean / min / max over runs of ``scale ×`` the (smoothed) metric."""
    rows = table[table["metric"] == metric]
    parts = []
    for _, g in rows.groupby("run_id", observed=True):
        g = g.sort_values("step")
        vals = g["value"].to_numpy(dtype=float)
        steps = g["step"].to_numpy(dtype=float)
        if smoothing:
            vals = ema_smooth(steps, vals, smoothing)
        parts.append(pd.DataFrame({"series": [series_of(g)] * len(g), "step": steps.astype(int), "v": vals * scale}))
    if not parts:
        return pd.DataFrame(columns=["series", "metric", "step", "value", "lo", "hi", "n_runs"])
    df = pd.concat(parts, ignore_index=True)
    out = (
        df.groupby(["series", "step"], sort=True)
        .agg(value=("v", "mean"), lo=("v", "min"), hi=("v", "max"), n_runs=("v", "size"))
        .reset_index()
    )
    out.insert(1, "metric", metric)
    return out


def _in_order(data: pd.DataFrame, order: Sequence) -> pd.DataFrame:
    """Rows of ``data`` grouped by series in legend ``order`` (steps ascending within a series)."""
    parts = [data[_equal(data["series"], k)].sort_values("step") for k in order]
    return pd.concat(parts, ignore_index=True) if parts else data


def _draw(ax, data: pd.DataFrame, order: Sequence, labels: dict, colors: Sequence, logy: bool) -> None:
    for key, color in zip(order, colors):
        d = data[_equal(data["series"], key)].sort_values("step")
        if d.empty:
            continue
        ax.plot(d["step"], d["value"], color=color, label=labels.get(key, str(key)))
        if (d["n_runs"] > 1).any():
            ax.fill_between(d["step"], d["lo"], d["hi"], color=color, alpha=0.2, lw=0)
    if logy:
        ax.set_yscale("log", nonpositive="mask")


def _finish(fig, axes, data: pd.DataFrame, stem: str | Path, note: str | None = None) -> pd.DataFrame:
    n_max = int(data["n_runs"].max()) if len(data) else 0
    text = note or ""
    if n_max > 1:
        text = (text + "  " if text else "") + f"Lines: mean over {n_max} replicate runs (seeds); shaded: min–max."
    if text:
        fig.text(0.01, -0.01, text, fontsize=7, ha="left", va="top", color="0.3")
    data = data.reindex(columns=DATA_COLUMNS).reset_index(drop=True)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, stem)
    atomic_write_text(stem.with_name(stem.name + ".csv"), data.to_csv(index=False))
    return data


def _smoothing_note(smoothing: float | None) -> str | None:
    return f"Smoothed: variable-span EMA, span = {smoothing:g} × step (in evaluations)." if smoothing else None


def _pct_panel(ax, table: pd.DataFrame, term: str, suffixes: list[str], smoothing, logx: bool, logy: bool, panel: str) -> pd.DataFrame:
    """One pct-vs-step panel of a single run group, one line per evaluation suffix."""
    parts = [_curves(table, _metric(term, "pct", s), lambda g, s=s: s, smoothing, 100.0) for s in suffixes]
    data = pd.concat(parts, ignore_index=True)
    labels = {s: (_suffix_label(s) if len(suffixes) > 1 else f"{term} (held-out)") for s in suffixes}
    _draw(ax, data, suffixes, labels, series_colors(len(suffixes), sequential=len(suffixes) > 1), logy)
    add_reference_line(ax)
    set_step_axis(ax, data["step"].tolist(), logx)
    if logy:
        plain_log_ticks(ax)
    ax.set_ylabel(PCT_LABEL)
    ax.legend(
        title="Flow time" if len(suffixes) > 1 and suffixes[0].startswith("t=") else None,
        loc="best",
        ncols=2 if len(suffixes) > 4 else 1,
        fontsize=7,
    )
    data.insert(0, "panel", panel)
    return data


# ----------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------
def pct_curves(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    term: str | None = None,
    smoothing: float | None = None,
    logx: bool = True,
    logy: bool = True,
    title: str | None = None,
) -> pd.DataFrame:
    """pct vs training step for one task's runs (replicates); one line per evaluation suffix (flow time)."""
    task = str(_one(table, "task", "pct_curves"))
    _check_replicates(table, None, "pct_curves")
    term = resolve_term(table, term)
    fig, (ax,) = new_figure(1, panel_size=(6.0, 4.0))
    data = _pct_panel(ax, table, term, eval_suffixes(table, term), smoothing, logx, logy, panel=task)
    ax.set_title(title or f"{task_title(task)}: share of held-out loss from equivariance error")
    return _finish(fig, [ax], data, stem, _smoothing_note(smoothing))


def loss_decomposition(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    term: str | None = None,
    panel_by: str | None = None,
    suffix: str | None = None,
    smoothing: float | None = None,
    logx: bool = True,
    logy: bool = True,
    label: Callable[[object], str] | None = None,
) -> pd.DataFrame:
    """L_total, L_mean and L_equiv vs step (log–log by default).

    Panels: one per evaluation suffix (flow times), or with ``panel_by`` (e.g. ``'train_size'``) one per value
    of that column, at evaluation suffix ``suffix`` (required when the task has several).
    """
    task = str(_one(table, "task", "loss_decomposition"))
    _check_replicates(table, panel_by, "loss_decomposition")
    term = resolve_term(table, term)
    suffixes = eval_suffixes(table, term)
    if panel_by:
        if suffix is None:
            if len(suffixes) > 1:
                raise ValueError(f"loss_decomposition(panel_by={panel_by!r}): pass suffix= (one of {suffixes})")
            suffix = suffixes[0]
        auto_label, auto_key, col_title = swept_column(table, panel_by)
        keys = _ordered_values(table, panel_by, auto_key)
        fmt = label or (lambda v: f"{col_title}: {auto_label(v)}")
        panels = [(fmt(k), table[_equal(table[panel_by], k)], suffix) for k in keys]
    else:
        wanted = suffixes if suffix is None else [suffix]
        panels = [(_suffix_label(s) if s else "", table, s) for s in wanted]
    fig, axes = new_figure(len(panels), ncols=min(len(panels), 4), panel_size=(4.4, 3.4))
    quantities = ["total", "mean", "equiv"] + [
        q for q in ("null_total", "baseline_total") if (table["metric"] == _metric(term, q, panels[0][2])).any()
    ]
    palette = {"total": "0.15", "mean": "tab:blue", "equiv": "tab:red", "null_total": "0.6", "baseline_total": "tab:green"}
    colors = {q: palette[q] for q in quantities}
    ncols = min(len(panels), 4)
    parts = []
    for i, (ax, (panel, sub, s)) in enumerate(zip(axes, panels)):
        data = pd.concat([_curves(sub, _metric(term, q, s), lambda g, q=q: q, smoothing, 1.0) for q in quantities], ignore_index=True)
        _draw(ax, data, quantities, _QUANTITY_LABELS, [colors[q] for q in quantities], logy)
        for line in ax.get_lines():
            if line.get_label() in (_QUANTITY_LABELS["null_total"], _QUANTITY_LABELS["baseline_total"]):
                line.set_linestyle(":")
        set_step_axis(ax, data["step"].tolist(), logx)
        if logy:
            plain_log_ticks(ax)
        if i % ncols == 0:
            ax.set_ylabel(f"{LOSS_LABEL}\nloss term '{term}'")
        if panel:
            ax.set_title(panel)
        data.insert(0, "panel", panel or task)
        parts.append(data)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2 if len(panels) > 1 else 1)
    title = f"{task_title(task)}: held-out loss decomposition"
    if len(panels) > 1 or panels[0][0]:
        fig.suptitle(title)
    else:
        axes[0].set_title(title)
    return _finish(fig, axes, pd.concat(parts, ignore_index=True), stem, _smoothing_note(smoothing))


def _equal(col: pd.Series, key) -> pd.Series:
    if key is None or (isinstance(key, float) and math.isnan(key)):
        return col.isna()
    return col == key


def _ordered_values(table: pd.DataFrame, by: str, sort_key: Callable | None = None) -> list:
    vals = list(pd.unique(table[by].astype(object)))
    vals = [None if (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v for v in vals]
    return sorted(vals, key=sort_key or (lambda v: (v is None, str(v))))


def vary(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    by: str,
    term: str | None = None,
    suffix: str | None = None,
    smoothing: float | None = None,
    logx: bool = True,
    logy: bool = True,
    label: Callable[[object], str] | None = None,
    sort_key: Callable | None = None,
    legend_title: str | None = None,
    title: str | None = None,
) -> pd.DataFrame:
    """pct vs step for each value of the swept column ``by`` (replicates averaged).

    Tasks with one evaluation batch: one panel, one line per value. Tasks with several (flow matching,
    unless ``suffix`` picks one): one panel per value, one line per flow time — as in the paper.
    """
    task = str(_one(table, "task", "vary"))
    _check_replicates(table, by, f"vary(by={by!r})")
    term = resolve_term(table, term)
    suffixes = eval_suffixes(table, term) if suffix is None else [suffix]
    auto_label, auto_key, auto_title = swept_column(table, by)
    legend_title = legend_title or auto_title
    keys = _ordered_values(table, by, sort_key or auto_key)
    fmt = label or auto_label
    labels = {k: fmt(k) for k in keys}
    title = title or f"{task_title(task)}: {legend_title or by}"
    if len(suffixes) > 1:
        fig, axes = new_figure(len(keys), ncols=min(len(keys), 3), panel_size=(4.6, 3.6), sharey=True)
        parts = []
        for i, (ax, k) in enumerate(zip(axes, keys)):
            parts.append(_pct_panel(ax, table[_equal(table[by], k)], term, suffixes, smoothing, logx, logy, panel=labels[k]))
            ax.set_title(f"{legend_title or by}: {labels[k]}")
            if i % min(len(keys), 3):
                ax.set_ylabel("")
        fig.suptitle(title)
        return _finish(fig, axes, pd.concat(parts, ignore_index=True), stem, _smoothing_note(smoothing))
    s = suffixes[0]
    rel = _final_value(table, _metric(term, "total_rel_null", s), by, keys)
    rel_base = _final_value(table, _metric(term, "total_rel_baseline", s), by, keys)
    labels = {k: labels[k] + _rel_label(rel_base.get(k), rel.get(k)) for k in keys}
    fig, (ax,) = new_figure(1, panel_size=(6.0, 4.0))
    data = _in_order(_curves(table, _metric(term, "pct", s), lambda g: _key_of(g[by].iloc[0]), smoothing, 100.0), keys)
    _draw(ax, data, keys, labels, series_colors(len(keys)), logy)
    add_reference_line(ax)
    set_step_axis(ax, data["step"].tolist(), logx)
    if logy:
        plain_log_ticks(ax)
    ax.set_ylabel(PCT_LABEL)
    ax.legend(title=legend_title, loc="best")
    ax.set_title(title + (f" ({_suffix_label(s)})" if s else ""))
    data.insert(0, "panel", task)
    note = _smoothing_note(smoothing)
    if rel or rel_base:
        note = (note + "  " if note else "") + REL_NOTE
    return _finish(fig, [ax], data, stem, note)


REL_NOTE = (
    "L/L_base, L/L₀: held-out L_total at the last evaluation over the loss of the task's cheap equivariant baseline "
    "(fitted on training data) and of its trivial predictor; at or above 1 the run is no better than an equivariant "
    "predictor that costs nothing, and its small pct says nothing about learned equivariance."
)


def _rel_label(base: float | None, null: float | None) -> str:
    parts = ([f"L/L_base {base:.2f}"] if base is not None else []) + ([f"L/L₀ {null:.2f}"] if null is not None else [])
    return f" (final {', '.join(parts)})" if parts else ""


def _final_value(table: pd.DataFrame, metric: str, by: str, keys: Sequence) -> dict:
    """Mean over the runs of each ``by`` value of their last logged ``metric`` (e.g. ``…/total_rel_null``)."""
    rows = table[table["metric"] == metric]
    out = {}
    for k in keys:
        g = rows[_equal(rows[by], k)]
        if len(g):
            out[k] = float(g.sort_values("step").groupby("run_id", observed=True)["value"].last().mean())
    return out


def _key_of(v):
    return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v


def swept_column(table: pd.DataFrame, by: str) -> tuple[Callable[[object], str], Callable, str]:
    """``(label, sort_key, title)`` for a swept column: readable legend labels, the paper's order (largest
    model / data set first, optimizers by name then LR, augmentation on first) and a legend title."""
    runs = _runs(table)
    if by == "model_label":
        sizes = runs.drop_duplicates("model_label").set_index("model_label")["n_params"].to_dict()
        return str, lambda v: -float(sizes.get(v) or 0), "Model (trainable parameters)"
    if by == "train_size":
        return format_train_size, lambda v: -(math.inf if v is None else float(v)), "Training-set size"
    if by == "optim_label":
        order = {r.optim_label: (str(r.optim), float(r.lr)) for r in runs.drop_duplicates("optim_label").itertuples()}
        return str, lambda v: order.get(v, ("", 0.0)), "Optimizer, learning rate"
    if by == "augment":
        return (lambda v: "with rotation augmentation" if v else "without augmentation"), (lambda v: not bool(v)), "Training augmentation"
    return (lambda v: f"{by} = {v}"), (lambda v: (v is None, str(v))), by


def vary_model_size(table: pd.DataFrame, stem: str | Path, **kw) -> pd.DataFrame:
    """pct vs step for each model size (largest first); legend: model class and trainable-parameter count."""
    return vary(table, stem, by="model_label", **kw)


def vary_data_size(table: pd.DataFrame, stem: str | Path, **kw) -> pd.DataFrame:
    """pct vs step for each training-set size (largest first; counts as '950k', fractions as '1%', all data as 'all')."""
    return vary(table, stem, by="train_size", **kw)


def vary_optimizer(table: pd.DataFrame, stem: str | Path, **kw) -> pd.DataFrame:
    """pct vs step for each optimizer / learning-rate pair."""
    return vary(table, stem, by="optim_label", **kw)


def vary_augmentation(table: pd.DataFrame, stem: str | Path, **kw) -> pd.DataFrame:
    """pct vs step with and without Haar-random rotation augmentation of the training samples."""
    return vary(table, stem, by="augment", **kw)


def final_pct_bars(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    term: str | None = None,
    by: str = "model_label",
    smoothing: float | None = None,
    label: Callable[[object], str] | None = None,
) -> pd.DataFrame:
    """Final (optionally smoothed) pct per evaluation suffix (flow time), one bar per value of ``by``.

    Bar height: mean over replicates of each run's last value; error bars: min–max over replicates.
    """
    task = str(_one(table, "task", "final_pct_bars"))
    _check_replicates(table, by, "final_pct_bars")
    term = resolve_term(table, term)
    suffixes = eval_suffixes(table, term)
    auto_label, auto_key, by_title = swept_column(table, by)
    label = label or auto_label
    keys = _ordered_values(table, by, auto_key)
    rows = []
    for s in suffixes:
        metric = _metric(term, "pct", s)
        for _, g in table[table["metric"] == metric].groupby("run_id", observed=True):
            g = g.sort_values("step")
            vals = g["value"].to_numpy(dtype=float)
            if smoothing:
                vals = ema_smooth(g["step"].to_numpy(dtype=float), vals, smoothing)
            rows.append(
                {"series": _key_of(g[by].iloc[0]), "panel": s, "metric": metric, "step": int(g["step"].iloc[-1]), "v": 100.0 * vals[-1]}
            )
    df = pd.DataFrame(rows)
    data = (
        df.groupby(["panel", "series", "metric"], sort=False, dropna=False)
        .agg(step=("step", "max"), value=("v", "mean"), lo=("v", "min"), hi=("v", "max"), n_runs=("v", "size"))
        .reset_index()
    )
    fig, (ax,) = new_figure(1, panel_size=(min(12.0, max(5.0, 0.4 * len(suffixes) * max(1, len(keys)) + 2.0)), 3.8))
    width = 0.8 / max(1, len(keys))
    x = np.arange(len(suffixes))
    for i, (k, color) in enumerate(zip(keys, series_colors(len(keys)))):
        d = data[_equal(data["series"], k)].set_index("panel").reindex(suffixes)
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, d["value"], width=width * 0.95, color=color, label=label(k))
        err = np.vstack([d["value"] - d["lo"], d["hi"] - d["value"]])
        if (d["n_runs"] > 1).any():
            ax.errorbar(pos, d["value"], yerr=err, fmt="none", ecolor="0.2", capsize=2, lw=0.8)
        for xp, v in zip(pos, d["value"]):
            if np.isfinite(v):
                ax.annotate(f"{v:.2g}", (xp, v), ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    add_reference_line(ax)
    ax.set_xticks(x, [_suffix_label(s) for s in suffixes])
    ax.set_xlabel("Flow time t of the held-out evaluation" if suffixes and suffixes[0].startswith("t=") else "Evaluation")
    ax.set_ylabel(PCT_LABEL)
    ax.legend(loc="best", title=by_title)
    ax.set_title(f"{task_title(task)}: pct at the end of training")
    note = "Bars: each run's last evaluation" + (f" after EMA smoothing (span = {smoothing:g} × step)" if smoothing else "") + "."
    return _finish(fig, [ax], data, stem, note)


def headline(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    smoothing: float | Mapping[str, float | None] | None = None,
    logx: bool = True,
    logy: bool = True,
    tasks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The headline figure: pct vs training step, one panel per task (each task's default runs, seeds averaged).

    ``smoothing``: one EMA span fraction for every panel, or one per task (``{task: span or None}``)."""
    present = [str(t) for t in table["task"].dropna().unique()]
    tasks = list(tasks) if tasks else sorted(present, key=task_order)
    missing = [t for t in tasks if t not in present]
    if missing:
        raise ValueError(f"headline: no runs of task(s) {missing} in the table (tasks present: {present})")
    fig, axes = new_figure(len(tasks), ncols=len(tasks), panel_size=(4.6, 3.6))
    parts = []
    for ax, task in zip(axes, tasks):
        sub = table[table["task"] == task]
        _check_replicates(sub, None, f"headline ({task})")
        term = resolve_term(sub)
        smooth = smoothing.get(task) if isinstance(smoothing, Mapping) else smoothing
        parts.append(_pct_panel(ax, sub, term, eval_suffixes(sub, term), smooth, logx, logy, panel=task))
        ax.set_title(task_title(task))
    for ax in axes[1:]:
        ax.set_ylabel("")
    fig.suptitle("Share of held-out loss from equivariance error during training (non-equivariant models)")
    if isinstance(smoothing, Mapping):
        note = "; ".join(f"{task_title(t)}: {_smoothing_note(v)}" for t, v in smoothing.items() if v and t in tasks) or None
    else:
        note = _smoothing_note(smoothing)
    return _finish(fig, axes, pd.concat(parts, ignore_index=True), stem, note)
