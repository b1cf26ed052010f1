"""Figures of the mechanism analysis (:mod:`equivrepro.analysis`). Each writes ``<stem>.png``, ``<stem>.pdf``
and the plotted numbers as ``<stem>.csv`` (atomically), and returns those numbers.

* :func:`landscape_surfaces` — 3-D surfaces of L_mean and L_equiv along their own Hessians' min-positive and
  max eigenvectors (paper ``loss_landscape_3D_L_{mean,equiv}``).
* :func:`gradient_ratio_scatter` — log–log scatter of pct against ‖∇L_equiv‖/‖∇L_mean‖ coloured by step,
  with the EMA trajectory and the log-space Pearson / Spearman correlations (paper ``grad_norm_ratio``).
* :func:`linear_head_scaling` — L_equiv against the head's deviation from the equivariant subspace, log–log,
  with the fitted slope (≈ 2).
* :func:`twirl_cost` — held-out loss of the test-time-twirled model against K with the prediction
  L_mean + L_equiv/K, and its relative inference cost on a second axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from equivrepro.plots.style import PCT_LABEL, STEP_LABEL, new_figure, plt, save_figure
from equivrepro.train.checkpoint import atomic_write_text

__all__ = ["landscape_surfaces", "gradient_ratio_scatter", "linear_head_scaling", "twirl_cost"]

_LOSS_TEX = {"mean": r"$L_\mathrm{mean}$", "equiv": r"$L_\mathrm{equiv}$", "total": r"$L_\mathrm{total}$"}


def _write(fig, data: pd.DataFrame, stem: str | Path, note: str | None = None) -> pd.DataFrame:
    if note:
        fig.text(0.01, -0.01, note, fontsize=7, ha="left", va="top", color="0.3")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, stem)
    atomic_write_text(stem.with_name(stem.name + ".csv"), data.to_csv(index=False))
    return data


def landscape_surfaces(landscape, stem: str | Path, *, losses: Sequence[str] = ("mean", "equiv"), source: str = "own",
                       title: str | None = None) -> pd.DataFrame:
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
        fig.suptitle(title or f"Loss landscape of {cfg.get('n_params', '?')} parameters ({', '.join(cfg.get('parameters', [])[:3])})", fontsize=9)
    note = f"Grid {cfg.get('n', '?')}×{cfg.get('n', '?')}, step {cfg.get('step', '?')}; held-out samples: {cfg.get('n_samples', '?')}, term {cfg.get('term', '?')}."
    return _write(fig, pd.concat(rows, ignore_index=True), stem, note)


def gradient_ratio_scatter(df: pd.DataFrame, stem: str | Path, *, step_col: str = "step", pct_col: str = "pct",
                           ratio_col: str = "grad_norm_ratio", span_fraction: float = 0.01, pct_scale: float = 100.0,
                           title: str | None = None) -> dict:
    """Scatter of pct (× ``pct_scale``, percent by default) vs gradient-norm ratio, coloured by step, plus the
    EMA trajectory. Returns the correlation dict of :func:`~equivrepro.analysis.ratio_correlation`."""
    from equivrepro.analysis.gradient_ratio import ema_trajectory, ratio_correlation

    corr = ratio_correlation(df, step_col=step_col, pct_col=pct_col, ratio_col=ratio_col)
    traj = ema_trajectory(df, step_col=step_col, pct_col=pct_col, ratio_col=ratio_col, span_fraction=span_fraction)
    fig, (ax,) = new_figure(1, panel_size=(5.4, 4.2))
    pos = traj["step"].clip(lower=1)
    sc = ax.scatter(traj["grad_norm_ratio"], traj["pct"] * pct_scale, c=np.log10(pos), cmap="viridis", s=12, alpha=0.6,
                    label="evaluations")
    ax.plot(traj["ratio_ema"], traj["pct_ema"] * pct_scale, color="crimson", lw=1.6, label=f"EMA trajectory (span = {span_fraction:g}·step)")
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


def linear_head_scaling(result, stem: str | Path, *, title: str | None = None) -> pd.DataFrame:
    """L_equiv vs ‖θ_⊥‖ (log–log) from a :class:`~equivrepro.analysis.DeviationScaling`, with the fitted line."""
    t = result.table
    fig, (ax,) = new_figure(1, panel_size=(5.0, 3.8))
    ax.loglog(t["deviation"], t["l_equiv"], "o", color="tab:blue", label=r"measured $L_\mathrm{equiv}$")
    xs = np.geomspace(t["deviation"].min(), t["deviation"].max(), 50)
    ax.loglog(xs, np.exp(result.intercept) * xs**result.slope, "--", color="0.3",
              label=f"fit: slope {result.slope:.4f} (R² = {result.r2:.4f})")
    ax.set_xlabel(r"head deviation $\alpha\|\theta_\perp\|$ from the equivariant subspace")
    ax.set_ylabel(r"$L_\mathrm{equiv}$ (held-out)")
    ax.legend(loc="best")
    ax.set_title(title or f"{result.head}: equivariance error is quadratic in the deviation")
    return _write(fig, t.copy(), stem)


def twirl_cost(df: pd.DataFrame, stem: str | Path, *, title: str | None = None) -> pd.DataFrame:
    """MSE(K) with standard errors, the prediction L_mean + L_equiv/K as a curve, relative cost on the right axis."""
    fig, (ax,) = new_figure(1, panel_size=(5.4, 3.8))
    ax.errorbar(df["k"], df["mse"], yerr=1.96 * df["mse_se"], fmt="o", color="tab:blue", capsize=3,
                label="measured (±1.96 SE over samples)")
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
