r"""Figures of where the equivariance error lives: its degree spectrum, its angle curve and its per-entity maps.

Drawn from the tidy results table (one task's runs, replicates averaged, as in :mod:`equivrepro.plots.figures`),
from the keys the equivariance callback logs with ``equivariance.spectrum_l_max`` set
(:mod:`equivrepro.metrics.keys`; ``S`` the evaluation suffix, ``T`` the loss term):

* :func:`degree_shares` — ``spectrum/[S/]T/share_l=<l>`` and ``…/share_remainder`` (E_l / L_total) against training
  step, stacked, with L_mean / L_total = 1 − pct above them; one panel per evaluation suffix (all of them: flow
  matching has eight flow times and the spectrum may move with t, so none is dropped — they fit a 2 × 4 grid);
* :func:`final_spectrum` — the last evaluation's E_l / L_equiv (``…/l=<l>`` over L_equiv = Σ_l E_l + remainder, with
  ``…/l=<l>_se``), bars l = 1..l_max and the remainder, marking the degrees that the 24-rotation cube group and the
  60-rotation icosahedral group remove exactly (:func:`equivrepro.metrics.spectral.removed_degrees`);
* :func:`angle_curve` — ``angle/[S/]T/{measured,predicted}_deg=<ω>`` at the end of training: the measured error
  E‖h(g) − h(g r_ω)‖² with its standard error, the prediction from the spectrum (band: ± its standard error) and
  the prediction's bound for the degrees above l_max (dashed);
* :func:`attribution` — ``attribution/[S/]T/<descriptor>=<bin>`` at the last evaluation: the share of L_equiv per bin
  and the mean L_equiv per entity, one column per descriptor (element and distance from the centroid for the force
  field, position along the chain and distance for flow matching, the radial profile for voxels).

Each writes ``<stem>.png``, ``<stem>.pdf`` and ``<stem>.csv`` (columns :data:`~equivrepro.plots.figures.DATA_COLUMNS`;
``lo``/``hi``: for the training curves min–max over replicate runs, for the end-of-training figures the value ∓ its
standard error, pooled over replicates as √(Σ se²)/n) and returns the numbers it drew. A table without the keys a
figure needs raises ``ValueError`` naming the setting to turn on.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from equivrepro.metrics import keys
from equivrepro.plots.figures import DATA_COLUMNS, _check_replicates, _curves, _one, _suffix_label, resolve_term
from equivrepro.plots.style import new_figure, save_figure, series_colors, set_step_axis, task_title
from equivrepro.train.checkpoint import atomic_write_text

__all__ = ["degree_shares", "final_spectrum", "angle_curve", "attribution", "SPECTRUM_SETTING"]

#: The setting a run needs for these figures.
SPECTRUM_SETTING = "equivariance.spectrum_l_max"
_SHARE = "share_"


def _parsed(table: pd.DataFrame) -> pd.DataFrame:
    """``(metric, key)`` of the table's distinct metric names that are decomposition keys."""
    names = pd.unique(table["metric"].astype(str))
    rows = [(m, k) for m in names if (k := keys.parse(m)) is not None]
    return pd.DataFrame(rows, columns=["metric", "key"])


def _missing(what: str, family: str, term: str, extra: str = "") -> ValueError:
    return ValueError(
        f"{what}: the table has no '{family}/…/{term}/…' metrics: the runs did not log them; set {SPECTRUM_SETTING} "
        f"(e.g. {SPECTRUM_SETTING}=8 for K ≥ 10 rotations, 4 for K = 4) and rerun{extra}"
    )


def _family_keys(table: pd.DataFrame, family: str, term: str, what: str, extra: str = "") -> list[keys.MetricKey]:
    found = [k for k in _parsed(table)["key"] if k.family == family and k.term == term]
    if not found:
        raise _missing(what, family, term, extra)
    return found


def _suffixes(found: Sequence[keys.MetricKey], wanted: Sequence[str] | str | None, what: str) -> list[str]:
    have = sorted({k.suffix for k in found}, key=keys.suffix_sort_key)
    if wanted is None:
        return have
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    bad = [s for s in wanted if s not in have]
    if bad:
        raise ValueError(f"{what}: evaluation suffix(es) {bad} not in the table (have {have})")
    return wanted


def _share_degree(quantity: str) -> int | None:
    if not quantity.startswith(_SHARE):
        return None
    return keys.degree_of(keys.MetricKey(keys.SPECTRUM, "t", quantity[len(_SHARE) :]))


def _last_step_values(table: pd.DataFrame, metrics: set[str]) -> dict[str, dict[str, float]]:
    """Per run: ``{metric: value}`` at the run's last step that logged any of ``metrics``."""
    rows = table[table["metric"].astype(str).isin(metrics)]
    out: dict[str, dict[str, float]] = {}
    for run_id, g in rows.groupby("run_id", observed=True):
        last = int(g["step"].max())
        g = g[g["step"] == last]
        out[str(run_id)] = {str(m): float(v) for m, v in zip(g["metric"], g["value"])} | {"__step__": float(last)}
    return out


def _pool(values: Sequence[float], ses: Sequence[float]) -> tuple[float, float]:
    """Mean over replicate runs and the standard error of that mean from each run's own standard error."""
    v = np.asarray(values, dtype=float)
    s = np.asarray(ses, dtype=float)
    n = len(v)
    if not n:
        return math.nan, math.nan
    se = float(np.sqrt(np.nansum(s**2)) / n) if np.isfinite(s).any() else math.nan
    return float(v.mean()), se


def _row(panel: str, series: str, metric: str, step: int, value: float, se: float, n: int) -> dict:
    return {
        "panel": panel,
        "series": series,
        "metric": metric,
        "step": step,
        "value": value,
        "lo": value - se if math.isfinite(se) else math.nan,
        "hi": value + se if math.isfinite(se) else math.nan,
        "n_runs": n,
    }


def _panel_name(suffix: str, task: str) -> str:
    return _suffix_label(suffix) if suffix else task


def _save(fig, data: pd.DataFrame, stem: str | Path, note: str) -> pd.DataFrame:
    """PNG + PDF + CSV (:data:`DATA_COLUMNS`) with ``note`` wrapped under the figure."""
    width = fig.get_size_inches()[0]
    fig.text(0.01, -0.01, "\n".join(textwrap.wrap(note, width=max(60, int(width * 17)))), fontsize=7, ha="left", va="top", color="0.3")
    data = data.reindex(columns=DATA_COLUMNS).reset_index(drop=True)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, stem)
    atomic_write_text(stem.with_name(stem.name + ".csv"), data.to_csv(index=False))
    return data


# ----------------------------------------------------------------------------------------------------
# (a) shares against training step
# ----------------------------------------------------------------------------------------------------
def degree_shares(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    term: str | None = None,
    suffixes: Sequence[str] | str | None = None,
    smoothing: float | None = None,
    logx: bool = True,
) -> pd.DataFrame:
    """E_l / L_total against training step, stacked from l = 1 up, then the remainder (power above l_max), whose
    sum is pct; L_mean / L_total (= 1 − pct, the rest up to 100 %) is the grey band above. The estimator is
    unbiased, so a degree with little power can come out below 0: negative estimates are drawn as 0 and the
    positive ones share pct in proportion (the stack's top stays pct); the CSV keeps the estimates as logged.
    One panel per evaluation suffix (``suffixes`` picks some); ``smoothing``: the variable-span EMA of
    :func:`~equivrepro.plots.figures.ema_smooth` on every share (a task card's figure default)."""
    what = "degree_shares"
    task = str(_one(table, "task", what))
    _check_replicates(table, None, what)
    term = resolve_term(table, term)
    found = [k for k in _family_keys(table, keys.SPECTRUM, term, what) if _share_degree(k.quantity) or k.quantity == _SHARE + "remainder"]
    if not found:
        raise _missing(what, keys.SPECTRUM, term)
    chosen = _suffixes(found, suffixes, what)
    fig, axes = new_figure(len(chosen), ncols=min(len(chosen), 4), panel_size=(4.4, 3.4), sharey=False)
    parts = []
    for i, (ax, s) in enumerate(zip(axes, chosen)):
        degs = sorted({d for k in found if k.suffix == s and (d := _share_degree(k.quantity))})
        series = [(f"l={d}", keys.key(keys.SPECTRUM, term, f"{_SHARE}l={d}", s)) for d in degs]
        series.append(("remainder", keys.key(keys.SPECTRUM, term, _SHARE + "remainder", s)))
        pct = _curves(table, keys.key(keys.EQUIV, term, "pct", s), lambda g: "pct", smoothing, 100.0)
        data = [_curves(table, m, lambda g, name=name: name, smoothing, 100.0) for name, m in series]
        if len(pct):
            mean = pct.copy()
            mean["series"] = "mean"
            mean["metric"] = keys.key(keys.EQUIV, term, "pct", s) + " (100 - pct)"
            mean["value"], mean["lo"], mean["hi"] = 100.0 - pct["value"], 100.0 - pct["hi"], 100.0 - pct["lo"]
            data.append(mean)
        panel = pd.concat(data, ignore_index=True)
        steps = sorted(panel["step"].unique())
        stack = np.array(
            [
                panel[panel["series"] == name].set_index("step")["value"].reindex(steps).fillna(0.0).clip(lower=0.0).to_numpy()
                for name, _ in series
            ]
        )
        if len(pct):  # the positive estimates share pct in proportion: the stack's top is pct
            target = pct.set_index("step")["value"].reindex(steps).to_numpy()
            positive = stack.sum(0)
            stack = np.where(positive > 0, stack * np.divide(target, positive, out=np.zeros_like(target), where=positive > 0), 0.0)
        colors = list(series_colors(len(degs), sequential=True)) + ["0.55"]
        ax.stackplot(steps, *stack, colors=colors, labels=[name for name, _ in series], alpha=0.9, lw=0)
        top = stack.sum(0)
        ymax = max(float(np.nanmax(top)) if len(top) else 0.0, float(pct["value"].max()) if len(pct) else 0.0)
        ymax = min(100.0, 1.3 * ymax) if ymax > 0 else 1.0
        ax.fill_between(steps, top, 100.0, color="0.88", lw=0, label=r"$L_\mathrm{mean}/L_\mathrm{total}$ (up to 100 %)")
        if len(pct):
            ax.plot(pct["step"], pct["value"], color="k", lw=1.0, label="pct (the sum of the shares)")
        ax.set_ylim(0, ymax)
        set_step_axis(ax, [float(x) for x in steps], logx)
        if i % min(len(chosen), 4) == 0:
            ax.set_ylabel(f"Share of held-out $L_\\mathrm{{total}}$ (%)\nloss term '{term}'")
        if len(chosen) > 1 or s:
            ax.set_title(_panel_name(s, task))
        panel.insert(0, "panel", _panel_name(s, task))
        parts.append(panel)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=7)
    fig.suptitle(f"{task_title(task)}: equivariance error by angular degree l during training")
    data = pd.concat(parts, ignore_index=True)
    note = (
        "Stacked: E_l / L_total for l = 1..l_max and the remainder (power above l_max), from the same K rotations as pct; "
        "negative estimates (noise of an unbiased estimator) drawn as 0 and the positive ones scaled to sum to pct (the CSV has "
        "the estimates as logged); grey: L_mean / L_total."
    )
    n_runs = int(data["n_runs"].max()) if len(data) else 0
    if n_runs > 1:
        note += f" Mean over {n_runs} replicate runs (seeds); the CSV has their min–max."
    if smoothing:
        note += f" Smoothed: variable-span EMA, span = {smoothing:g} × step (in evaluations)."
    return _save(fig, data, stem, note)


# ----------------------------------------------------------------------------------------------------
# (b) the final spectrum
# ----------------------------------------------------------------------------------------------------
def _removed(l_max: int) -> dict[str, tuple[int, ...]]:
    from equivrepro.metrics.spectral import removed_degrees
    from equivrepro.rotations import icosahedral_group, octahedral_group

    return {
        "cube group (24)": removed_degrees(octahedral_group(), l_max),
        "icosahedral group (60)": removed_degrees(icosahedral_group(), l_max),
    }


def _degree_list(text: Sequence[int]) -> str:
    return ", ".join(str(d) for d in text) if text else "none"


def final_spectrum(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    term: str | None = None,
    suffixes: Sequence[str] | str | None = None,
    smoothing: float | None = None,
) -> pd.DataFrame:
    """Bars of E_l / L_equiv (%) at each run's last evaluation, l = 1..l_max, and the remainder, with standard errors
    (per-sample, delta method not applied to L_equiv); markers show the degrees a finite twirl removes exactly.
    ``smoothing`` is accepted for a task card's figure defaults and ignored: one evaluation is drawn, unsmoothed."""
    what = "final_spectrum"
    task = str(_one(table, "task", what))
    _check_replicates(table, None, what)
    term = resolve_term(table, term)
    found = _family_keys(table, keys.SPECTRUM, term, what)
    chosen = _suffixes(found, suffixes, what)
    fig, axes = new_figure(len(chosen), ncols=min(len(chosen), 4), panel_size=(4.4, 3.4))
    parts, l_max_all = [], 1
    for i, (ax, s) in enumerate(zip(axes, chosen)):
        degs = sorted({d for k in found if k.suffix == s and (d := keys.degree_of(k)) is not None and d >= 1})
        if not degs:
            raise _missing(what, keys.SPECTRUM, term)
        l_max_all = max(l_max_all, degs[-1])
        q = {f"l={d}": keys.degree_key(term, d, s) for d in degs} | {"remainder": keys.key(keys.SPECTRUM, term, "remainder", s)}
        wanted = set(q.values()) | {m + "_se" for m in q.values()}
        per_run = _last_step_values(table, wanted)
        rows = []
        for name, m in q.items():
            ratios, ses, steps = [], [], []
            for vals in per_run.values():
                eq = vals.get(q["remainder"], math.nan) + sum(vals.get(q[f"l={d}"], math.nan) for d in degs)
                if m in vals and eq > 0:
                    ratios.append(100.0 * vals[m] / eq)
                    ses.append(100.0 * vals.get(m + "_se", math.nan) / eq)
                    steps.append(int(vals["__step__"]))
            v, se = _pool(ratios, ses)
            rows.append(_row(_panel_name(s, task), name, m, max(steps) if steps else -1, v, se, len(ratios)))
        data = pd.DataFrame(rows)
        x = np.arange(len(data))
        err = np.vstack([data["value"] - data["lo"], data["hi"] - data["value"]])
        colors = list(series_colors(len(degs), sequential=True)) + ["0.55"]
        ax.bar(x, data["value"], color=colors, width=0.75)
        ax.errorbar(x, data["value"], yerr=np.nan_to_num(err), fmt="none", ecolor="0.15", capsize=2, lw=0.8)
        ax.axhline(0.0, color="0.3", lw=0.6)
        ax.set_xticks(x, [str(d) for d in degs] + [f">{degs[-1]}"])
        ax.set_xlabel("Angular degree l")
        removed = _removed(degs[-1])
        for row, (name, mark) in enumerate(zip(removed, ("v", "s"))):
            xs = [j for j, d in enumerate(degs) if d in removed[name]]
            ax.plot(
                xs,
                [1.0 - 0.05 * (row + 1)] * len(xs),
                ls="none",
                marker=mark,
                ms=4,
                color=("tab:red", "tab:blue")[row],
                transform=ax.get_xaxis_transform(),
                label=f"removed by the {name}",
            )
        if i % min(len(chosen), 4) == 0:
            ax.set_ylabel(f"Share of held-out $L_\\mathrm{{equiv}}$ (%)\nloss term '{term}'")
        step = int(data["step"].max())
        ax.set_title(f"{_panel_name(s, task)} (step {step})" if (len(chosen) > 1 or s) else f"step {step}")
        parts.append(data)
    axes[0].legend(loc="best", fontsize=7)
    fig.suptitle(f"{task_title(task)}: degree spectrum of the equivariance error at the end of training")
    rm = _removed(l_max_all)
    note = (
        "Bars: E_l / L_equiv from the last evaluation (L_equiv = Σ_l E_l + remainder; '>l_max': the remainder); error bars: ± one "
        "standard error over held-out samples. A finite twirl removes exactly the degrees without invariant vectors: "
        + "; ".join(f"{n}: l = {_degree_list(d)}" for n, d in rm.items())
        + "."
    )
    return _save(fig, pd.concat(parts, ignore_index=True), stem, note)


# ----------------------------------------------------------------------------------------------------
# (c) the angle curve
# ----------------------------------------------------------------------------------------------------
def angle_curve(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    term: str | None = None,
    suffixes: Sequence[str] | str | None = None,
    smoothing: float | None = None,
) -> pd.DataFrame:
    """The error against rotation angle at the end of training: measured (points, ± standard error), predicted from
    the degree spectrum (line, band ± standard error) and the prediction's upper bound for degrees above l_max.
    ``smoothing``: accepted for a task card's figure defaults and ignored (one evaluation)."""
    what = "angle_curve"
    task = str(_one(table, "task", what))
    _check_replicates(table, None, what)
    term = resolve_term(table, term)
    found = [
        k
        for k in _family_keys(table, keys.ANGLE, term, what, " (the angle curve is logged at the last evaluation of a finished run)")
        if keys.angle_of(k) is not None
    ]
    chosen = _suffixes(found, suffixes, what)
    fig, axes = new_figure(len(chosen), ncols=min(len(chosen), 4), panel_size=(4.4, 3.4))
    parts = []
    for i, (ax, s) in enumerate(zip(axes, chosen)):
        here = [k for k in found if k.suffix == s]
        per_run = _last_step_values(table, {str(k) for k in here})
        angles = sorted({keys.angle_of(k).degrees for k in here})
        rows = []
        for kind, stat_of_value in (("measured", ""), ("predicted", ""), ("predicted", "upper")):
            series = kind if not stat_of_value else f"{kind}_{stat_of_value}"
            for a in angles:
                m = keys.angle_key(term, kind, a, s, stat_of_value)
                se_m = keys.angle_key(term, kind, a, s, "se")
                vals = [r[m] for r in per_run.values() if m in r]
                ses = [r.get(se_m, math.nan) if not stat_of_value else math.nan for r in per_run.values() if m in r]
                steps = [int(r["__step__"]) for r in per_run.values() if m in r]
                if vals:
                    v, se = _pool(vals, ses)
                    rows.append(_row(_panel_name(s, task), series, m, max(steps), v, se, len(vals)))
        data = pd.DataFrame(rows)
        for series, style in (
            ("predicted", dict(color="tab:blue", lw=1.4, label="predicted from the spectrum")),
            ("predicted_upper", dict(color="tab:blue", lw=1.0, ls="--", label="predicted, bound for degrees above l_max")),
            ("measured", dict(color="k", ls="none", marker="o", ms=4, label="measured (Haar axis)")),
        ):
            d = data[data["series"] == series] if len(data) else data
            if not len(d):
                continue
            x = [keys.angle_of(m).degrees for m in d["metric"]]
            if series == "measured":
                ax.errorbar(x, d["value"], yerr=np.nan_to_num(np.vstack([d["value"] - d["lo"], d["hi"] - d["value"]])), capsize=2, **style)
            else:
                ax.plot(x, d["value"], **style)
                if series == "predicted" and d["lo"].notna().any():
                    ax.fill_between(x, d["lo"], d["hi"], color="tab:blue", alpha=0.2, lw=0)
        ax.set_xlabel("Rotation angle ω (degrees)")
        ax.set_xticks([a for a in (0, 30, 60, 90, 120, 150, 180)])
        ax.set_xlim(0, 185)
        ax.set_ylim(bottom=0)
        if i % min(len(chosen), 4) == 0:
            ax.set_ylabel(f"E‖h(g) − h(g·r_ω)‖² (loss units)\nloss term '{term}'")
        step = int(data["step"].max()) if len(data) else -1
        ax.set_title(f"{_panel_name(s, task)} (step {step})" if (len(chosen) > 1 or s) else f"step {step}")
        parts.append(data)
    axes[0].legend(loc="best", fontsize=7)
    fig.suptitle(f"{task_title(task)}: equivariance error against rotation angle at the end of training")
    note = (
        "Prediction: 2 Σ_l E_l (1 − χ_l(ω)/(2l+1)) from the logged spectrum; measurement: h(g) against h(g·r_ω), r_ω a rotation by ω "
        "about a Haar-random axis, on the same held-out samples. Bars and band: ± one standard error over samples."
    )
    return _save(fig, pd.concat(parts, ignore_index=True), stem, note)


# ----------------------------------------------------------------------------------------------------
# (d) the per-entity attribution
# ----------------------------------------------------------------------------------------------------
def _descriptor_label(name: str) -> str:
    for tail, unit in (("_A", "Å"), ("_nm", "nm")):
        if name.endswith(tail):
            return f"{name[: -len(tail)].replace('_', ' ')} ({unit})"
    return name.replace("_", " ")


def _bin_lower(label: str) -> float | None:
    head = label[:-1] if label.endswith("+") else label
    if head.startswith("-"):
        return None
    try:
        return float(head.split("-")[0])
    except ValueError:
        return None


def attribution(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    term: str | None = None,
    suffixes: Sequence[str] | str | None = None,
    smoothing: float | None = None,
) -> pd.DataFrame:
    """Where L_equiv lives inside a sample at the last evaluation: per descriptor (one column each), the share of the
    term's L_equiv in each bin (top, %, ± standard error) and the mean L_equiv per entity in the bin (bottom, loss
    units); one series per evaluation suffix. Categorical bins (elements) are ordered by entity count, continuous ones
    (distances, positions) by value. ``smoothing``: accepted for a task card's figure defaults and ignored."""
    what = "attribution"
    task = str(_one(table, "task", what))
    _check_replicates(table, None, what)
    term = resolve_term(table, term)
    found = [
        k
        for k in _family_keys(
            table, keys.ATTRIBUTION, term, what, " (and the task must implement Task.attribution, per-entity descriptors of its outputs)"
        )
        if keys.attribution_of(k) is not None
    ]
    chosen = _suffixes(found, suffixes, what)
    descriptors = list(dict.fromkeys(keys.attribution_of(k).descriptor for k in found))
    fig, axes = new_figure(2 * len(descriptors), ncols=len(descriptors), panel_size=(4.6, 3.0))
    top, bottom = axes[: len(descriptors)], axes[len(descriptors) :]
    colors = series_colors(len(chosen), sequential=len(chosen) > 1) if len(chosen) > 1 else ["tab:red"]
    parts = []
    for j, desc in enumerate(descriptors):
        here = [k for k in found if keys.attribution_of(k).descriptor == desc]
        bins = list(dict.fromkeys(keys.attribution_of(k).bin for k in here))
        lowers = {b: _bin_lower(b) for b in bins}
        continuous = all(v is not None for v in lowers.values())
        rows, counts = [], {}
        for s in chosen:
            per_run = _last_step_values(table, {str(k) for k in here if k.suffix == s})
            for b in bins:
                m_share = keys.attribution_key(term, desc, b, s)
                m_se, m_per, m_cnt = (keys.attribution_key(term, desc, b, s, st) for st in ("se", "per_entity", "count"))
                runs = [r for r in per_run.values() if m_share in r]
                if not runs:
                    continue
                v, se = _pool([100.0 * r[m_share] for r in runs], [100.0 * r.get(m_se, math.nan) for r in runs])
                step = max(int(r["__step__"]) for r in runs)
                rows.append(_row(_panel_name(s, task), "share", m_share, step, v, se, len(runs)) | {"bin": b, "suffix": s})
                pe = [r[m_per] for r in runs if m_per in r]
                if pe:
                    rows.append(
                        _row(_panel_name(s, task), "per_entity", m_per, step, float(np.mean(pe)), math.nan, len(pe))
                        | {"bin": b, "suffix": s}
                    )
                counts[b] = counts.get(b, 0.0) + float(np.mean([r.get(m_cnt, 0.0) for r in runs]))
        data = pd.DataFrame(rows)
        order = sorted(bins, key=lambda b: lowers[b]) if continuous else sorted(bins, key=lambda b: (b == "other", -counts.get(b, 0.0)))
        data["x"] = data["bin"].map({b: i for i, b in enumerate(order)})
        for s, color in zip(chosen, colors):
            label = _panel_name(s, task) if len(chosen) > 1 else None
            for ax, series in ((top[j], "share"), (bottom[j], "per_entity")):
                d = data[(data["series"] == series) & (data["suffix"] == s)].sort_values("x")
                style = dict(color=color, marker="o", ms=4, ls="-" if continuous else "none", label=label)
                if series == "share":
                    yerr = np.nan_to_num(np.vstack([d["value"] - d["lo"], d["hi"] - d["value"]]))
                    ax.errorbar(d["x"], d["value"], yerr=yerr, capsize=2, lw=1.2, **style)
                else:
                    ax.plot(d["x"], d["value"], **style)
        for ax in (top[j], bottom[j]):
            ax.set_xticks(range(len(order)), order, rotation=45 if continuous and len(order) > 8 else 0, fontsize=7)
            ax.set_ylim(bottom=0)
        top[j].set_title(_descriptor_label(desc))
        bottom[j].set_xlabel(_descriptor_label(desc))
        if j == 0:
            top[j].set_ylabel(f"Share of held-out $L_\\mathrm{{equiv}}$ (%)\nloss term '{term}'")
            bottom[j].set_ylabel("Mean $L_\\mathrm{equiv}$ per entity\n(loss units)")
        data["s_order"] = data["suffix"].map({x: i for i, x in enumerate(chosen)})
        parts.append(data.sort_values(["s_order", "series", "x"], kind="stable"))
    if len(chosen) > 1:
        handles, labels = top[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", fontsize=7, title="evaluation")
    fig.suptitle(f"{task_title(task)}: where the equivariance error lives (last evaluation)")
    note = (
        "Top: the share of the term's L_equiv carried by the entities in each bin (the bins of one descriptor sum to 100 %), ± one "
        "standard error over held-out samples; bottom: L_equiv per entity in the bin. From the same K rotations as pct."
    )
    return _save(fig, pd.concat(parts, ignore_index=True), stem, note)
