"""Figures of the mechanism analysis (:mod:`equivrepro.analysis`). Each writes ``<stem>.png``, ``<stem>.pdf``
and the plotted numbers as ``<stem>.csv`` (atomically), and returns those numbers.

* :func:`spectral_densities` — Gaussian-broadened eigenvalue densities of the L_mean and L_equiv curvature over
  log10|λ| (positive solid, negative dashed), one panel per curvature form (Hessian, GGN).
* :func:`top_eigenvalues` — the largest eigenvalues of each operator normalised by its own maximum, resolved
  ones filled, unresolved hollow.
* :func:`landscape_surfaces` — 3-D surfaces of L_mean and L_equiv along their own Hessians' min-positive and
  max eigenvectors (paper ``loss_landscape_3D_L_{mean,equiv}``).
* :func:`landscape_frozen_redrawn` — the same surfaces as heat maps, frozen (fixed samples, noise, rotations)
  above redrawn (all three redrawn at every point), with quadratic-fit R², smoothness and evaluation noise.
* :func:`head_deviation_scatter` — L_equiv against the linear head's deviation from its equivariant subspace over
  training, log–log, coloured by step, with the fitted power law and the correlations (paper
  ``linear_head_deviation_scatter``).
* :func:`gradient_ratio_scatter` — log–log scatter of pct against ‖∇L_equiv‖/‖∇L_mean‖ coloured by step,
  with the EMA trajectory and the log-space Pearson / Spearman correlations (paper ``grad_norm_ratio``).
* :func:`twirl_cost` — held-out loss of the test-time-twirled model against K with the prediction
  L_mean + L_equiv/K, and its relative inference cost on a second axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from equivrepro.atomic import atomic_write_text
from equivrepro.plots.style import PCT_LABEL, STEP_LABEL, new_figure, plt, save_figure

__all__ = [
    "spectral_densities",
    "top_eigenvalues",
    "landscape_surfaces",
    "landscape_frozen_redrawn",
    "head_deviation_scatter",
    "gradient_ratio_scatter",
    "twirl_cost",
]

_LOSS_TEX = {"mean": r"$L_\mathrm{mean}$", "equiv": r"$L_\mathrm{equiv}$", "total": r"$L_\mathrm{total}$"}
_LOSS_COLOR = {"mean": "tab:blue", "equiv": "tab:red", "total": "0.4"}
_FORM_NAME = {"hessian": "Hessian", "ggn": "Gauss–Newton (GGN, PSD)"}


def _write(fig, data: pd.DataFrame, stem: str | Path, note: str | None = None) -> pd.DataFrame:
    if note:
        fig.text(0.01, -0.01, note, fontsize=7, ha="left", va="top", color="0.3")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, stem)
    atomic_write_text(stem.with_name(stem.name + ".csv"), data.to_csv(index=False))
    return data


def _plain_log_x(ax) -> None:
    """Log x ticks as plain numbers, 1-2-5 ticks when the data span less than two decades, no minor labels."""
    from matplotlib import ticker

    lo, hi = ax.get_xlim()
    if lo > 0 and hi / lo < 100:
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        if hi / lo < 3:
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=tuple(np.arange(1.0, 10.0))))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def landscape_surfaces(
    landscape, stem: str | Path, *, losses: Sequence[str] = ("mean", "equiv"), source: str = "own", title: str | None = None
) -> pd.DataFrame:
    """One 3-D surface per loss. ``source='own'``: each loss along its own Hessian's eigenvectors; or a fixed
    source (``'mean'`` / ``'equiv'``) for every panel. Returns ``loss, source, x, y, value`` rows."""
    coords = landscape.coords.double().numpy()
    xx, yy = np.meshgrid(coords, coords, indexing="ij")
    fig = plt.figure(figsize=(5.2 * len(losses), 4.4))
    rows = []
    for i, loss in enumerate(losses):
        src = loss if source == "own" else source
        z = landscape.surfaces[src][loss].double().numpy()
        ax = fig.add_subplot(1, len(losses), i + 1, projection="3d")
        ax.plot_surface(xx, yy, z, cmap="viridis", linewidth=0, antialiased=True, alpha=0.95)
        ax.set_xlabel("Perturbation along\nmin (+) eigenvector", fontsize=8)
        ax.set_ylabel("Perturbation along\nmax eigenvector", fontsize=8)
        ax.set_zlabel(_LOSS_TEX.get(loss, loss), fontsize=8)
        stats = landscape.stats.get(src, {}).get(loss, {})
        lam = landscape.eigenvalues[src]
        ax.set_title(
            f"{_LOSS_TEX.get(loss, loss)} along the eigenvectors of ∇²{_LOSS_TEX.get(src, src)}\n"
            f"λ⁺min = {lam['min_pos']:.3g}, λmax = {lam['max']:.3g}, quadratic-fit R² = {stats.get('r2', float('nan')):.2f}",
            fontsize=8,
        )
        ax.tick_params(labelsize=6)
        rows.append(pd.DataFrame({"loss": loss, "source": src, "x": xx.ravel(), "y": yy.ravel(), "value": z.ravel()}))
    cfg = landscape.config
    if title or cfg:
        names = ", ".join(cfg.get("parameters", [])[:3])
        fig.suptitle(title or f"Loss landscape of {cfg.get('n_params', '?')} parameters ({names})", fontsize=9)
    note = (
        f"Grid {cfg.get('n', '?')}×{cfg.get('n', '?')}, step {cfg.get('step', '?')}; held-out samples: {cfg.get('n_samples', '?')}, "
        f"term {cfg.get('term', '?')}."
    )
    return _write(fig, pd.concat(rows, ignore_index=True), stem, note)


def spectral_densities(
    spectra: Mapping[str, Mapping[str, object]], stem: str | Path, *, sigma: float = 0.15, decades: float = 14.0, title: str | None = None
) -> pd.DataFrame:
    """``spectra[form][loss]`` → :class:`~equivrepro.analysis.curvature.CurvatureSpectrum`; densities in eigenvalues per
    decade of |λ| down to ``decades`` below the largest |λ|, broadened by ``sigma`` decades; the legend counts the
    eigenvalues that are numerically zero. Returns ``form, loss, log10_abs_lambda, positive, negative`` rows."""
    forms = list(spectra)
    fig, axes = new_figure(len(forms), panel_size=(5.0, 3.6))
    rows = []
    for ax, form in zip(axes, forms):
        top = max(float(sp.density.scale) for sp in spectra[form].values())
        hi = np.log10(top) + 1.0 if top > 0 else 1.0
        grid = np.linspace(hi - decades, hi, 700)
        peak, lowest = 0.0, hi
        for loss, sp in spectra[form].items():
            d = sp.density.broadened(grid, sigma, log=True)
            color = _LOSS_COLOR.get(loss, None)
            r = sp.density.ranks()
            zero = f", {d['zero']:.3g} ≈ 0" if d["zero"] >= 0.5 else ""
            ax.plot(
                grid,
                d["positive"],
                "-",
                color=color,
                label=f"{_LOSS_TEX.get(loss, loss)} λ > 0 (entropy rank {r['entropy_rank']:.3g}{zero})",
            )
            if d["negative"].max() > 1e-3:
                ax.plot(grid, d["negative"], "--", color=color, label=f"{_LOSS_TEX.get(loss, loss)} λ < 0 (|λ|)")
            both = d["positive"] + d["negative"]
            peak = max(peak, float(both.max()))
            if (both > 1e-3).any():
                lowest = min(lowest, float(grid[both > 1e-3][0]))
            rows.append(
                pd.DataFrame({"form": form, "loss": loss, "log10_abs_lambda": grid, "positive": d["positive"], "negative": d["negative"]})
            )
        ax.set_yscale("log")
        ax.set_ylim(1e-3, max(2 * peak, 1e-2))
        ax.set_xlim(lowest - 0.5, hi)
        ax.set_xlabel(r"$\log_{10}|\lambda|$")
        ax.set_ylabel("eigenvalues per decade")
        method = next(iter(spectra[form].values())).method
        ax.set_title(f"{_FORM_NAME.get(form, form)} ({'exact' if method == 'exact' else 'SLQ'}, σ = {sigma:g} dec.)", fontsize=9)
        ax.legend(loc="best", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _write(fig, pd.concat(rows, ignore_index=True), stem)


def top_eigenvalues(
    spectra: Mapping[str, Mapping[str, object]], stem: str | Path, *, k: int = 20, title: str | None = None
) -> pd.DataFrame:
    """λ_i / λ_1 of the ``k`` largest eigenvalues of each operator against i (log y); hollow markers are unresolved."""
    forms = list(spectra)
    fig, axes = new_figure(len(forms), panel_size=(4.6, 3.4))
    rows = []
    for ax, form in zip(axes, forms):
        for loss, sp in spectra[form].items():
            top = sp.top(k)
            lam1 = top[0]["eigenvalue"] if top and top[0]["eigenvalue"] != 0 else 1.0
            i = np.arange(1, len(top) + 1)
            val = np.array([t["eigenvalue"] for t in top]) / lam1
            res = np.array([t["resolved"] for t in top], dtype=bool)
            color = _LOSS_COLOR.get(loss, None)
            pos = val > 0
            ax.semilogy(
                i[pos & res],
                val[pos & res],
                "o",
                color=color,
                label=f"{_LOSS_TEX.get(loss, loss)} (κ over resolved "
                f"{sp.condition['kappa']:.3g}, {sp.condition['n_resolved_positive']} resolved > 0)",
            )
            ax.semilogy(i[pos & ~res], val[pos & ~res], "o", mfc="none", color=color)
            rows.append(
                pd.DataFrame(
                    {
                        "form": form,
                        "loss": loss,
                        "rank": i,
                        "eigenvalue": [t["eigenvalue"] for t in top],
                        "normalised": val,
                        "residual": [t["residual"] for t in top],
                        "resolved": res,
                    }
                )
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("rank i")
        ax.set_ylabel(r"$\lambda_i / \lambda_1$")
        ax.set_title(_FORM_NAME.get(form, form), fontsize=9)
        ax.legend(loc="best", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _write(fig, pd.concat(rows, ignore_index=True), stem, "hollow: not resolved (residual bound > rtol·|λ|)")


def landscape_frozen_redrawn(
    frozen, redrawn, stem: str | Path, *, losses: Sequence[str] = ("mean", "equiv"), title: str | None = None
) -> pd.DataFrame:
    """Heat maps: rows frozen / redrawn, columns the losses along their own eigenvectors; R², smoothness, noise SD."""
    rows_of = [("frozen", frozen)] + ([("redrawn", redrawn)] if redrawn is not None else [])
    fig, axes = new_figure(len(rows_of) * len(losses), ncols=len(losses), panel_size=(4.2, 3.6))
    data = []
    for r, (kind, land) in enumerate(rows_of):
        c = land.coords.double().numpy()
        noise = land.config.get("noise", {})
        for j, loss in enumerate(losses):
            ax = axes[r * len(losses) + j]
            z = land.surfaces[loss][loss].double().numpy()
            im = ax.imshow(z.T, origin="lower", extent=(c[0], c[-1], c[0], c[-1]), aspect="auto", cmap="viridis")
            fig.colorbar(im, ax=ax, shrink=0.85)
            st = land.stats[loss][loss]
            extra = f", noise SD {noise[loss]:.2g}" if loss in noise else ""
            ax.set_title(f"{kind}: {_LOSS_TEX.get(loss, loss)}  R² = {st['r2']:.2f}, smooth. {st['smoothness']:.2f}{extra}", fontsize=8)
            ax.set_xlabel("along min (+) eigenvector", fontsize=8)
            ax.set_ylabel("along max eigenvector", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.tick_params(labelsize=7)
            xx, yy = np.meshgrid(c, c, indexing="ij")
            data.append(pd.DataFrame({"kind": kind, "loss": loss, "x": xx.ravel(), "y": yy.ravel(), "value": z.ravel()}))
    if title:
        fig.suptitle(title, fontsize=9)
    note = (
        "smoothness: mean |2nd difference| / range (0.011 for a noiseless 20×20 bowl, ≈ 0.3 for white noise); "
        "redrawn: new samples, task noise and rotations at every point"
    )
    return _write(fig, pd.concat(data, ignore_index=True), stem, note)


def head_deviation_scatter(result: Mapping, stem: str | Path, *, x_label: str | None = None, title: str | None = None) -> pd.DataFrame:
    """Scatter of L_equiv against the head deviation from :func:`~equivrepro.analysis.head_deviation.deviation_correlation`."""
    t = result["table"]
    fig, (ax,) = new_figure(1, panel_size=(5.2, 4.0))
    sc = ax.scatter(t["deviation"], t["l_equiv"], c=np.log10(t["step"].clip(lower=1)), cmap="viridis", s=16, label="evaluations")
    xs = np.geomspace(t["deviation"].min(), t["deviation"].max(), 50)
    ax.plot(
        xs,
        10 ** (result["intercept"] + result["slope"] * np.log10(xs)),
        "--",
        color="0.3",
        label=f"fit: L_equiv ∝ x^{result['slope']:.2f} (95% CI [{result['bootstrap']['slope_ci'][0]:.2f}, "
        f"{result['bootstrap']['slope_ci'][1]:.2f}])",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_x(ax)
    ax.set_xlabel(x_label or result["x"])
    ax.set_ylabel(f"held-out {result['y']}")
    cb = fig.colorbar(sc, ax=ax)
    cb.set_label(f"log10 {STEP_LABEL.lower()}")
    ax.legend(loc="best", fontsize=7)
    b = result["bootstrap"]
    ax.set_title(
        title
        or (
            f"Pearson R = {result['pearson_r']:.2f} [{b['pearson_r_ci'][0]:.2f}, {b['pearson_r_ci'][1]:.2f}], "
            f"Spearman ρ = {result['spearman_rho']:.2f} [{b['spearman_rho_ci'][0]:.2f}, {b['spearman_rho_ci'][1]:.2f}] "
            f"(log values, n = {result['n']})"
        ),
        fontsize=8,
    )
    return _write(fig, t.copy(), stem, f"intervals: {b['method']} bootstrap over evaluations (block {b['block']}, {b['n_boot']} resamples)")


def gradient_ratio_scatter(
    df: pd.DataFrame,
    stem: str | Path,
    *,
    step_col: str = "step",
    pct_col: str = "pct",
    ratio_col: str = "grad_norm_ratio",
    span_fraction: float = 0.01,
    pct_scale: float = 100.0,
    title: str | None = None,
) -> dict:
    """Scatter of pct (× ``pct_scale``, percent by default) vs gradient-norm ratio, coloured by step, plus the
    EMA trajectory. Returns the correlation dict of :func:`~equivrepro.analysis.ratio_correlation`."""
    from equivrepro.analysis.gradient_ratio import ema_trajectory, ratio_correlation

    corr = ratio_correlation(df, step_col=step_col, pct_col=pct_col, ratio_col=ratio_col)
    traj = ema_trajectory(df, step_col=step_col, pct_col=pct_col, ratio_col=ratio_col, span_fraction=span_fraction)
    fig, (ax,) = new_figure(1, panel_size=(5.4, 4.2))
    pos = traj["step"].clip(lower=1)
    sc = ax.scatter(traj["grad_norm_ratio"], traj["pct"] * pct_scale, c=np.log10(pos), cmap="viridis", s=12, alpha=0.6, label="evaluations")
    ax.plot(
        traj["ratio_ema"], traj["pct_ema"] * pct_scale, color="crimson", lw=1.6, label=f"EMA trajectory (span = {span_fraction:g}·step)"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\|\nabla L_\mathrm{equiv}\| \,/\, \|\nabla L_\mathrm{mean}\|$")
    ax.set_ylabel(PCT_LABEL if pct_scale == 100.0 else "pct")
    cb = fig.colorbar(sc, ax=ax)
    cb.set_label(f"log10 {STEP_LABEL.lower()}")
    ax.legend(loc="best")
    ax.set_title(title or f"Pearson R = {corr['pearson_r']:.2f}, Spearman ρ = {corr['spearman_rho']:.2f} (log values, n = {corr['n']})")
    data = traj.assign(pct=traj["pct"] * pct_scale, pct_ema=traj["pct_ema"] * pct_scale)
    _write(fig, data, stem)
    return corr


def twirl_cost(df: pd.DataFrame, stem: str | Path, *, title: str | None = None) -> pd.DataFrame:
    """MSE(K) with standard errors, the prediction L_mean + L_equiv/K as a curve, relative cost on the right axis."""
    fig, (ax,) = new_figure(1, panel_size=(5.4, 3.8))
    ax.errorbar(
        df["k"], df["mse"], yerr=1.96 * df["mse_se"], fmt="o", color="tab:blue", capsize=3, label="measured (±1.96 SE over samples)"
    )
    l_mean, l_equiv = df.attrs.get("l_mean"), df.attrs.get("l_equiv")
    ks = np.geomspace(1, max(df["k"].max(), 2), 100)
    if l_mean is not None and l_equiv is not None:
        ax.plot(ks, l_mean + l_equiv / ks, "-", color="0.3", label=r"$L_\mathrm{mean} + L_\mathrm{equiv}/K$")
        ax.axhline(l_mean, ls=":", color="0.5", label=r"$L_\mathrm{mean}$ (K → ∞)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (rotations averaged at test time)")
    ax.set_ylabel(f"held-out {df.attrs.get('term', 'loss')}")
    ax2 = ax.twinx()
    ax2.plot(df["k"], df["relative_cost"], "s--", color="tab:orange", ms=4, label="relative inference cost")
    ax2.set_ylabel("inference time relative to K = min", color="tab:orange")
    ax2.grid(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", fontsize=7)
    ax.set_title(title or "Test-time twirling: error removed vs inference cost")
    return _write(fig, df.copy(), stem)
