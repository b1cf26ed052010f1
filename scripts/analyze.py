#!/usr/bin/env python
"""Why equivariance is learned fast: the mechanism analyses of the paper (§5.3–§6) on one checkpoint of one run.

    python scripts/analyze.py --run-dir runs/smoke/forcefield_smoke-bd51a5b99c
    python scripts/analyze.py --scale smoke -- task=forcefield experiment=forcefield_smoke seed=0 paths.runs_dir=runs/smoke
    python scripts/analyze.py --scale paper --step 500 -- task=flowmatching experiment=flowmatching_paper seed=0
    python scripts/analyze.py --run-dir DIR --analyses spectrum,landscape --params force_head.ffn --exact-max 0

The run is ``--run-dir`` or the Hydra overrides after ``--``, resolved to the run directory exactly as
``python -m equivrepro.train <overrides>`` would (:func:`equivrepro.train.build.run_dir_for`). The
checkpoint is ``checkpoints/last.pt`` or, with ``--step N``, the snapshot ``checkpoints/step_<N>.pt``
(``trainer.snapshot_steps``); ``--weights ema`` (default, what the training-time evaluation used) or ``model``.

Held-out set. By default exactly the one the run's equivariance callback evaluated: the same
``equivariance.{seed,num_samples,k,batch_size}``, the same samples, frozen task randomness and K Haar
rotations per sample (:class:`equivrepro.train.equivariance.EquivarianceCallback` builds it), so the
losses at the checkpoint match the logged ``equiv/…/{mean,equiv}`` of that step (the summary lists both).
``--num-samples``, ``--k``, ``--seed`` draw another set. A task with several evaluation batches per sample
(flow matching: one per flow time, keys ``t=0`` … ``t=0.99``) is analysed at one of them,
``--eval-suffix``: default the only one, else ``t=0.6`` when present (a mid/late flow time, where the
paper's final pct is a few percent), else the first; ``--eval-suffix all`` pools every one.

Analyses (``--analyses``, comma-separated; default all that apply):

* ``spectrum`` — extreme eigenpairs of the Hessians of L_mean and L_equiv with respect to ``--params``
  (default: the run's ``equivariance.linear_head`` if set, else the module holding the model's last
  parameter — the output head), exact when the subset has ≤ ``--exact-max`` parameters, else
  ``--lanczos-steps`` of Lanczos; κ = λ_max / λ⁺_min of both, their ratio, and how many eigenvalues were
  resolved (:mod:`equivrepro.analysis.hessian`).
* ``landscape`` — both losses on an n×n grid (``--grid-n`` 20) along each loss's min-positive and max
  eigenvectors with spacing ``--grid-step`` (default: the paper's step for the task,
  ``equivrepro.analysis.PAPER_STEPS``, else 0.002), quadratic-fit R² of every surface, the tensors
  (``landscape.pt``) and the 3-D surfaces.
* ``linear-head`` — L_equiv with the head's deviation from its equivariant subspace scaled by α, and the
  log–log slope (2 for a linear head on invariant features); head ``--linear-head`` (default the run's
  ``equivariance.linear_head``; skipped with a message when there is none).
* ``twirl`` — held-out loss of the test-time-twirled model for K ∈ ``--twirl-ks`` against
  L_mean + L_equiv/K, with its inference cost.
* ``gradient-ratio`` — log-space Pearson / Spearman correlation of ``grad_norm_ratio`` with ``pct`` over
  training, from the run's ``metrics.csv`` (skipped with a message when the run did not log gradient norms:
  ``equivariance.grad_norms=true``).

Estimator. The Hessian, the landscape and κ use the **plug-in** L_mean (the loss of the K-rotation mean
prediction, the paper's ``mean_pred_error``) by default: the unbiased L_mean is a difference of two
estimates whose Hessian is indefinite even for a linear head, so its λ⁺_min is not a curvature.
``--estimator unbiased`` switches. The plug-in L_equiv is (K−1)/K times the unbiased one (same κ).

Outputs in ``--out`` (default ``figures/<scale>/analysis-<task>/`` with ``--scale``, else
``<run_dir>/analysis/``): ``summary.json`` (every number; written atomically), ``spectrum.csv``,
``landscape.{pt,png,pdf,csv}``, ``linear_head.{png,pdf,csv}``, ``twirl.{png,pdf,csv}``,
``gradient_ratio.{png,pdf,csv}``. Computation in float64 (``--dtype``) on ``--device`` (auto: CUDA if
available). Exit status 0 when every requested analysis ran or was skipped for a stated reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("analyze")

ANALYSES = ("spectrum", "landscape", "linear-head", "twirl", "gradient-ratio")
PREFERRED_SUFFIXES = ("", "t=0.6")
DEFAULT_GRID_STEP = 0.002
DTYPES = ("float64", "float32")


# ----------------------------------------------------------------------------------------------------
# Run, checkpoint, held-out set
# ----------------------------------------------------------------------------------------------------
def resolve_run_dir(run_dir: Path | None, overrides: Sequence[str], runs_dir: Path | None = None) -> Path:
    """``run_dir`` itself, or the directory the trainer would use for ``overrides`` (composed with Hydra)."""
    if run_dir is not None:
        if overrides:
            raise SystemExit("give either --run-dir or Hydra overrides after '--', not both")
        return Path(run_dir)
    if not overrides:
        raise SystemExit("no run: give --run-dir DIR or Hydra overrides after '--' (e.g. -- experiment=forcefield_smoke seed=0)")
    from equivrepro.train.app import compose_config
    from equivrepro.train.build import run_dir_for

    extra = [f"paths.runs_dir={Path(runs_dir).resolve()}"] if runs_dir is not None else []
    return run_dir_for(compose_config(list(overrides) + extra))


def checkpoint_path(run_dir: Path, step: int | None) -> Path:
    """``checkpoints/last.pt`` or the snapshot ``checkpoints/step_<8-digit step>.pt`` (error listing the snapshots)."""
    ckpt_dir = run_dir / "checkpoints"
    if step is None:
        path = ckpt_dir / "last.pt"
        if not path.exists():
            raise SystemExit(f"no checkpoint {path}: has the run {run_dir} started? (status: {_status(run_dir).get('state', 'none')})")
        return path
    path = ckpt_dir / f"step_{int(step):08d}.pt"
    if not path.exists():
        have = sorted(p.name for p in ckpt_dir.glob("step_*.pt")) if ckpt_dir.exists() else []
        raise SystemExit(f"no snapshot {path}; snapshots of this run: {have or 'none'} "
                         f"(set trainer.snapshot_steps=[{int(step)}] before training to keep one)")
    return path


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class HeldOut:
    """Frozen held-out batches of one evaluation suffix (or all) with their ``(B, K, 3, 3)`` rotations."""

    batches: list
    rotations: list
    suffix: str
    suffixes: list[str]
    num_samples: int
    k: int
    seed: int
    batch_size: int
    matches_training_eval: bool


def pick_suffix(available: Sequence[str], requested: str | None) -> str:
    if requested is not None:
        if requested != "all" and requested not in available:
            raise SystemExit(f"--eval-suffix {requested!r} is not one of this task's evaluation batches: {list(available)} (or 'all')")
        return requested
    if len(available) == 1:
        return available[0]
    for s in PREFERRED_SUFFIXES:
        if s in available:
            return s
    return available[0]


def build_held_out(run, args, device, dtype) -> HeldOut:
    """The held-out set of the run's equivariance callback (or the one ``--num-samples/--k/--seed`` ask for)."""
    import torch

    from equivrepro.analysis import cast_batch
    from equivrepro.train.equivariance import EquivarianceCallback

    ecfg = run.config.equivariance
    num = int(args.num_samples if args.num_samples is not None else ecfg.num_samples)
    k = int(args.k if args.k is not None else ecfg.k)
    seed = int(args.seed if args.seed is not None else ecfg.seed)
    bs = int(args.batch_size if args.batch_size is not None else ecfg.batch_size)
    if k < 2:
        raise SystemExit(f"--k must be ≥ 2 rotations per sample (the equivariance error needs two), got {k}")
    frozen = EquivarianceCallback(run.task, run.datamodule.heldout_dataset, run.datamodule.collate, device,
                                  num_samples=num, k=k, batch_size=bs, chunk_size=ecfg.chunk_size, seed=seed, dtype=torch.float64)
    suffixes = list(frozen.chunks)
    suffix = pick_suffix(suffixes, args.eval_suffix)
    chosen = suffixes if suffix == "all" else [suffix]
    batches, rotations = [], []
    for s in chosen:
        for b, r in zip(frozen.chunks[s], frozen.rotations):
            batches.append(cast_batch(b, dtype))
            rotations.append(r.to(dtype))
    same = (num == int(ecfg.num_samples) and k == int(ecfg.k) and seed == int(ecfg.seed) and bs == int(ecfg.batch_size))
    return HeldOut(batches, rotations, suffix, suffixes, frozen.num_samples, k, seed, bs, same and args.weights == "ema")


def default_params(run) -> str:
    """The run's configured linear head, else the module holding the model's last parameter (the output head)."""
    head = run.config.equivariance.get("linear_head")
    if head:
        return str(head)
    names = [n for n, p in run.model.named_parameters() if p.requires_grad]
    if not names:
        raise SystemExit("the model has no trainable parameters")
    return names[-1].rsplit(".", 1)[0] if "." in names[-1] else names[-1]


def logged_metrics(run_dir: Path) -> pd.DataFrame | None:  # noqa: F821
    import pandas as pd

    from equivrepro.train.loggers import read_results

    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    return pd.DataFrame(read_results(path), columns=["step", "metric", "value"])


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


# ----------------------------------------------------------------------------------------------------
# The analyses
# ----------------------------------------------------------------------------------------------------
def analyse_spectrum(losses, args, out: Path) -> tuple[dict, dict]:
    import pandas as pd
    import torch

    from equivrepro.analysis import condition_numbers
    from equivrepro.train.checkpoint import atomic_write_text

    method = "exact" if losses.n_params <= args.exact_max else "lanczos"
    res = condition_numbers(losses, method=method, rel_threshold=args.rel_threshold, k=args.lanczos_steps,
                            generator=torch.Generator().manual_seed(args.seed_analysis), chunk=args.hvp_chunk)
    spectra = res.pop("spectra")
    rows = []
    for loss, spec in spectra.items():
        ok = spec.resolved_mask()
        for i, lam in enumerate(spec.eigenvalues.tolist()):
            rows.append({"loss": loss, "index": i, "eigenvalue": lam,
                         "residual": float(spec.residuals[i]) if spec.residuals is not None else 0.0, "resolved": bool(ok[i])})
    atomic_write_text(out / "spectrum.csv", pd.DataFrame(rows).to_csv(index=False))
    summary = {
        "method": method, "estimator": losses.estimator, "n_params": losses.n_params, "parameters": losses.names,
        "mean": res["mean"], "equiv": res["equiv"], "kappa_ratio_mean_over_equiv": res["kappa_ratio_mean_over_equiv"],
        "hvp_calls": {w: s.info.get("hvp_calls") for w, s in spectra.items()},
    }
    for loss, spec in spectra.items():
        summary[loss].update(spectrum_shape(spec, args.rel_threshold))
    summary["kappa_ratio_by_threshold"] = {
        t: (summary["mean"]["kappa_by_threshold"][t] / summary["equiv"]["kappa_by_threshold"][t]) for t in summary["mean"]["kappa_by_threshold"]}
    if method == "lanczos":
        summary["lanczos_steps"] = {w: s.info.get("lanczos_steps") for w, s in spectra.items()}
        summary["note"] = "Lanczos: κ uses resolved Ritz values only; λ⁺_min is the smallest resolved one, so κ is a lower estimate"
    return summary, spectra


KAPPA_THRESHOLDS = (1e-6, 1e-4, 1e-2)


def spectrum_shape(spec, rel_threshold: float) -> dict:
    """How much κ depends on where "zero" ends, and how concentrated the curvature is.

    ``kappa_by_threshold``: κ with λ⁺_min the smallest resolved eigenvalue above t·max|λ| for t in
    :data:`KAPPA_THRESHOLDS` (when the spectrum decays smoothly over many decades, κ ≈ 1/t is set by the
    threshold, not by the loss); ``participation_ratio`` (Σλ)²/Σλ² over resolved eigenvalues above the
    threshold (the effective number of curved directions); ``top_eigenvalues``: the five largest resolved.
    """
    ok = spec.resolved_mask()
    vals = spec.eigenvalues.double()[ok]
    thr = rel_threshold * float(vals.abs().max()) if vals.numel() else 0.0
    pos = vals[vals > thr]
    pr = float(pos.sum() ** 2 / (pos**2).sum()) if pos.numel() else float("nan")
    by = {f"{t:g}": spec.condition(t) for t in KAPPA_THRESHOLDS}
    return {"kappa_by_threshold": {t: c["kappa"] for t, c in by.items()},
            "n_positive_by_threshold": {t: c["n_positive"] for t, c in by.items()},
            "participation_ratio": pr, "top_eigenvalues": sorted(vals.tolist(), reverse=True)[:5]}


def analyse_landscape(losses, spectra, args, out: Path, task_name: str) -> dict:
    from equivrepro.analysis import PAPER_STEPS, loss_landscape
    from equivrepro.plots.analysis import landscape_surfaces

    step = args.grid_step if args.grid_step is not None else PAPER_STEPS.get(task_name, DEFAULT_GRID_STEP)
    land = loss_landscape(losses, n=args.grid_n, step=step, spectra=spectra, rel_threshold=args.rel_threshold,
                          points_per_call=args.points_per_call)
    land.save(out / "landscape.pt")
    landscape_surfaces(land, out / "landscape")
    own = land.summary()
    cross = {f"{loss}_along_{src}": {"r2": land.stats[src][loss]["r2"], "smoothness": land.stats[src][loss]["smoothness"]}
             for src in land.surfaces for loss in ("mean", "equiv") if loss != src}
    return {"n": args.grid_n, "step": step, "estimator": losses.estimator, "centre": land.centre,
            "mean": own.get("mean"), "equiv": own.get("equiv"), "cross": cross,
            "points_per_call": land.config.get("points_per_call")}


def analyse_linear_head(run, held: HeldOut, head: str, args, out: Path) -> dict:
    import numpy as np

    from equivrepro.analysis import deviation_scaling, vector_output_projector
    from equivrepro.plots.analysis import linear_head_scaling

    projector = None if args.head_projector == "equal-rows" else vector_output_projector(3)
    alphas = np.logspace(args.alpha_min, 0.0, args.alpha_points)
    res = deviation_scaling(run.model, run.task, held.batches, held.rotations, head, alphas=alphas, projector=projector)
    linear_head_scaling(res, out / "linear_head")
    return {**res.summary(), "projector": args.head_projector, "alphas": [float(a) for a in alphas],
            "l_equiv_at_alpha_1": float(res.table["l_equiv"].iloc[-1])}


def analyse_twirl(run, held: HeldOut, args, out: Path) -> dict:
    import torch

    from equivrepro.analysis import twirl_mse_table
    from equivrepro.plots.analysis import twirl_cost

    gen = torch.Generator().manual_seed(args.seed_analysis + 1)
    df = twirl_mse_table(run.model, run.task, held.batches, None, ks=args.twirl_ks, n_draws=args.twirl_draws,
                         reference_k=args.reference_k, generator=gen, chunk_size=run.config.equivariance.chunk_size)
    twirl_cost(df, out / "twirl")
    return {**df.attrs, "ks": [int(k) for k in df["k"]], "table": df.to_dict(orient="records")}


def analyse_gradient_ratio(metrics, held: HeldOut, term: str, args, out: Path) -> dict:
    """Correlation for the analysed suffix (figure) and every suffix that logged grad norms (table)."""
    from equivrepro.analysis import ratio_correlation, wide_from_results
    from equivrepro.plots.analysis import gradient_ratio_scatter

    if metrics is None:
        return {"skipped": "the run has no metrics.csv"}
    names = set(metrics["metric"].unique())
    per_suffix = {}
    for s in held.suffixes:
        pct, ratio = _join("equiv", s, term, "pct"), _join("equiv", s, term, "grad_norm_ratio")
        if pct in names and ratio in names:
            df = wide_from_results(metrics, pct_metric=pct, ratio_metric=ratio)
            try:
                per_suffix[s] = ratio_correlation(df)
            except ValueError as exc:
                per_suffix[s] = {"skipped": str(exc)}
    if not per_suffix:
        return {"skipped": f"the run logged no equiv/…/{term}/grad_norm_ratio (train with equivariance.grad_norms=true)"}
    fig_suffix = held.suffix if held.suffix in per_suffix else pick_suffix(list(per_suffix), None)
    if "skipped" in per_suffix[fig_suffix]:
        return {"skipped": f"suffix {fig_suffix!r}: {per_suffix[fig_suffix]['skipped']}", "per_suffix": per_suffix}
    df = wide_from_results(metrics, pct_metric=_join("equiv", fig_suffix, term, "pct"),
                           ratio_metric=_join("equiv", fig_suffix, term, "grad_norm_ratio"))
    corr = gradient_ratio_scatter(df, out / "gradient_ratio", span_fraction=args.ema_span)
    return {"suffix": fig_suffix, "metric": _join("equiv", fig_suffix, term, "grad_norm_ratio"), **corr,
            "per_suffix": per_suffix if len(per_suffix) > 1 else None}


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------
def _clean(obj: Any) -> Any:
    """JSON-safe: numpy / torch scalars → Python, non-finite floats → None, paths → str."""
    import numpy as np
    import torch

    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt(x, spec: str = ".4g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def print_summary(s: dict) -> None:
    print(f"== analysis of {s['run_dir']} at step {s['step']} ({s['weights']} weights, {s['checkpoint']}) ==")
    h = s["held_out"]
    print(f"held-out: {h['num_samples']} samples × K={h['k']} rotations, suffix {h['suffix']!r}, term {s['term']}")
    if "spectrum" in s and "skipped" not in s["spectrum"]:
        sp = s["spectrum"]
        print(f"spectrum ({sp['method']}, {sp['n_params']} params of {s['params']}, {sp['estimator']} L_mean):")
        for w in ("mean", "equiv"):
            c = sp[w]
            print(f"  κ(L_{w:5s}) = {_fmt(c['kappa'])}   λ_max = {_fmt(c['lambda_max'])}  λ⁺_min = {_fmt(c['lambda_min_pos'])}  "
                  f"(+{c['n_positive']} / 0:{c['n_zero']} / −{c['n_negative']} of {c['n_resolved']} resolved)")
        print(f"  κ(L_mean)/κ(L_equiv) = {_fmt(sp['kappa_ratio_mean_over_equiv'])};  at thresholds "
              + ", ".join(f"{t}: {_fmt(sp['mean']['kappa_by_threshold'][t], '.3g')} / {_fmt(sp['equiv']['kappa_by_threshold'][t], '.3g')}"
                          for t in sp["mean"]["kappa_by_threshold"]) + " (κ_mean / κ_equiv)")
        print(f"  participation ratio (effective curved directions): L_mean {_fmt(sp['mean']['participation_ratio'], '.3g')}, "
              f"L_equiv {_fmt(sp['equiv']['participation_ratio'], '.3g')}")
    if "landscape" in s and "skipped" not in s["landscape"]:
        la = s["landscape"]
        print(f"landscape {la['n']}×{la['n']}, step {la['step']}: R²(L_mean) = {_fmt(la['mean']['r2'], '.3f')}, "
              f"R²(L_equiv) = {_fmt(la['equiv']['r2'], '.3f')}; centre L_mean = {_fmt(la['centre']['mean'])}, L_equiv = {_fmt(la['centre']['equiv'])}")
    if "linear_head" in s and "skipped" not in s["linear_head"]:
        lh = s["linear_head"]
        print(f"linear head {lh['head']}: log–log slope of L_equiv vs deviation = {_fmt(lh['slope'], '.6f')} (R² {_fmt(lh['r2'], '.6f')})")
    if "twirl" in s and "skipped" not in s["twirl"]:
        tw = s["twirl"]
        print(f"test-time twirl (L_mean = {_fmt(tw['l_mean'])}, L_equiv = {_fmt(tw['l_equiv'])}):")
        for r in tw["table"]:
            print(f"  K={r['k']:3d}  MSE = {_fmt(r['mse'])} ± {_fmt(r['mse_se'], '.2g')}  predicted {_fmt(r['predicted'])}  "
                  f"rel. dev {_fmt(r['rel_deviation'], '+.3f')}  cost ×{_fmt(r['relative_cost'], '.2f')}")
    if "gradient_ratio" in s and "skipped" not in s["gradient_ratio"]:
        g = s["gradient_ratio"]
        print(f"gradient ratio vs pct ({g['metric']}; n = {g['n']} evaluations): Pearson {_fmt(g['pearson_r'], '.3f')}, Spearman {_fmt(g['spearman_rho'], '.3f')}")
    for name in ("spectrum", "landscape", "linear_head", "twirl", "gradient_ratio"):
        if name in s and "skipped" in s[name]:
            print(f"{name}: skipped — {s[name]['skipped']}")
    print(f"wall time: {', '.join(f'{k} {v:.1f} s' for k, v in s['seconds'].items())}")
    print(f"→ {s['out']}/summary.json")


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--run-dir", type=Path, default=None, help="the run directory (or give Hydra overrides after '--')")
    p.add_argument("--runs-dir", type=Path, default=None, help="with overrides: the runs directory (sets paths.runs_dir)")
    p.add_argument("--step", type=int, default=None, help="analyse the snapshot checkpoints/step_<N>.pt (default: last.pt)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema")
    p.add_argument("--analyses", default="all", help=f"comma-separated subset of {','.join(ANALYSES)} (default: all that apply)")
    p.add_argument("--scale", choices=("smoke", "paper"), default=None, help="only sets the default --out: figures/<scale>/analysis-<task>/")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: see --scale, else <run_dir>/analysis/)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available) | cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default="float64")
    g = p.add_argument_group("held-out set")
    g.add_argument("--num-samples", type=int, default=None, help="held-out samples (default: the run's equivariance.num_samples)")
    g.add_argument("--k", type=int, default=None, help="rotations per sample (default: the run's equivariance.k)")
    g.add_argument("--seed", type=int, default=None, help="held-out selection / rotation seed (default: the run's equivariance.seed)")
    g.add_argument("--batch-size", type=int, default=None, help="held-out samples per forward pass (default: the run's equivariance.batch_size)")
    g.add_argument("--eval-suffix", default=None, help="evaluation batch to analyse (flow matching: t=0 … t=0.99, or all); default t=0.6 / the only one")
    g = p.add_argument_group("Hessian and landscape")
    g.add_argument("--params", default=None, help="parameter subset: all | module or parameter name | glob (default: the run's linear head, else the output module)")
    g.add_argument("--estimator", choices=("plugin", "unbiased"), default="plugin", help="L_mean/L_equiv estimator of the Hessian and landscape")
    g.add_argument("--exact-max", type=int, default=512, help="exact Hessian (one HVP per parameter) up to this many parameters, Lanczos above")
    g.add_argument("--lanczos-steps", type=int, default=40)
    g.add_argument("--hvp-chunk", type=int, default=32, help="Hessian-vector products per batched backward (exact Hessian)")
    g.add_argument("--rel-threshold", type=float, default=None, help="eigenvalues ≤ this × max|λ| count as zero (default 1e-6)")
    g.add_argument("--grid-n", type=int, default=20)
    g.add_argument("--grid-step", type=float, default=None, help="grid step (default: the paper's for the task, else 0.002)")
    g.add_argument("--points-per-call", type=int, default=50, help="landscape points per vmapped evaluation (1: one at a time)")
    g = p.add_argument_group("linear head, twirling, gradient ratio")
    g.add_argument("--linear-head", default=None, help="module name of the linear head (default: the run's equivariance.linear_head)")
    g.add_argument("--head-projector", choices=("equal-rows", "zero"), default="equal-rows",
                   help="equivariant subspace of the head: equal rows (EScAIP direct forces) or {0} (invariant features → vector)")
    g.add_argument("--alpha-min", type=float, default=-3.0, help="α grid: logspace(alpha_min, 0, alpha_points)")
    g.add_argument("--alpha-points", type=int, default=7)
    g.add_argument("--twirl-ks", default="1,2,4,8,16")
    g.add_argument("--twirl-draws", type=int, default=3, help="independent rotation draws per K")
    g.add_argument("--reference-k", type=int, default=32, help="rotations of the decomposition that predicts MSE(K)")
    g.add_argument("--ema-span", type=float, default=0.01, help="EMA span / step of the gradient-ratio trajectory (paper: 0.01 EScAIP, 0.001 Proteina)")
    g.add_argument("--seed-analysis", type=int, default=0, help="seed of Lanczos start vectors and twirling rotations")
    p.add_argument("overrides", nargs="*", help="Hydra overrides naming the run, after '--'")
    args = p.parse_args(argv)
    args.twirl_ks = [int(x) for x in str(args.twirl_ks).split(",") if x.strip()]
    wanted = [a.strip() for a in args.analyses.split(",") if a.strip()]
    if wanted == ["all"]:
        args.selected, args.explicit = list(ANALYSES), False
    else:
        unknown = [a for a in wanted if a not in ANALYSES]
        if unknown:
            p.error(f"unknown analyses {unknown}; choose from {', '.join(ANALYSES)} (or all)")
        args.selected, args.explicit = [a for a in ANALYSES if a in wanted], True
    if args.grid_n < 2:
        p.error("--grid-n must be ≥ 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[analyze] %(message)s")
    for name in ("analyze", "equivrepro"):
        logging.getLogger(name).setLevel(logging.INFO)
    with warnings.catch_warnings():
        # vmap's per-op fallback notice (e.g. index_copy_ in the force-field scatter): slower, not wrong
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching rule")
        return analyse(args)


def analyse(args: argparse.Namespace) -> int:
    """Run the selected analyses of one run (``args`` from :func:`parse_args`); writes ``summary.json``."""
    import torch

    from equivrepro.analysis import DEFAULT_REL_THRESHOLD, SubsetLosses
    from equivrepro.train.checkpoint import atomic_write_json
    from equivrepro.train.restore import load_run

    if args.rel_threshold is None:
        args.rel_threshold = DEFAULT_REL_THRESHOLD
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    run_dir = resolve_run_dir(args.run_dir, args.overrides, args.runs_dir).resolve()
    if not run_dir.exists():
        raise SystemExit(f"run directory {run_dir} does not exist: train the run first (python -m equivrepro.train {' '.join(args.overrides)})")
    ckpt = checkpoint_path(run_dir, args.step)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    dtype = getattr(torch, args.dtype)

    t = time.perf_counter()
    run = load_run(run_dir, weights=args.weights, device=device, checkpoint=ckpt)
    run.model.to(dtype=dtype)
    task_name = str(run.config.task.get("name") or run.task.name)
    out = args.out or (ROOT / "figures" / args.scale / f"analysis-{task_name}" if args.scale else run_dir / "analysis")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    held = build_held_out(run, args, device, dtype)
    term = run.task.primary_term.name
    params = args.params or default_params(run)
    seconds["load"] = time.perf_counter() - t
    log.info("run %s, step %d (%s), task %s: %d held-out samples × K=%d, suffix %r, parameters %r",
             run_dir, run.step, ckpt.name, task_name, held.num_samples, held.k, held.suffix, params)

    summary: dict[str, Any] = {
        "run_dir": str(run_dir.resolve()), "run_id": _status(run_dir).get("run_id") or run_dir.name.rsplit("-", 1)[-1],
        "task": task_name, "step": run.step, "checkpoint": str(ckpt.relative_to(run_dir)), "weights": args.weights,
        "device": str(device), "dtype": args.dtype, "term": term, "params": params, "out": str(out),
        "held_out": {"num_samples": held.num_samples, "k": held.k, "seed": held.seed, "batch_size": held.batch_size,
                     "suffix": held.suffix, "available_suffixes": held.suffixes, "matches_training_eval": held.matches_training_eval},
    }
    metrics = logged_metrics(run_dir)
    if metrics is not None and held.suffix != "all" and held.matches_training_eval:
        at = metrics[metrics["step"] == run.step]
        keys = ("total", "mean", "equiv", "pct", "mean_plugin", "equiv_plugin")
        summary["logged_at_step"] = {k: float(at[at["metric"] == _join("equiv", held.suffix, term, k)]["value"].iloc[-1])
                                     for k in keys if (at["metric"] == _join("equiv", held.suffix, term, k)).any()}

    need_hessian = any(a in args.selected for a in ("spectrum", "landscape"))
    spectra = None
    if need_hessian:
        losses = SubsetLosses(run.model, run.task, held.batches, held.rotations, params, estimator=args.estimator,
                              chunk_size=run.config.equivariance.chunk_size)
        with torch.no_grad():
            summary["losses_at_checkpoint"] = {k: float(v) for k, v in losses.evaluate().items()}
        t = time.perf_counter()
        spec_summary, spectra = analyse_spectrum(losses, args, out)
        seconds["spectrum"] = time.perf_counter() - t
        if "spectrum" in args.selected:
            summary["spectrum"] = spec_summary
        if "landscape" in args.selected:
            t = time.perf_counter()
            try:
                summary["landscape"] = analyse_landscape(losses, spectra, args, out, task_name)
            except ValueError as exc:  # no positive eigenvalue to perturb along
                log.warning("landscape: skipped — %s", exc)
                summary["landscape"] = {"skipped": str(exc)}
            seconds["landscape"] = time.perf_counter() - t

    if "linear-head" in args.selected:
        head = args.linear_head or run.config.equivariance.get("linear_head")
        if not head:
            msg = "no linear head configured for this run (equivariance.linear_head is null; pass --linear-head MODULE)"
            log.warning("linear-head: skipped — %s", msg)
            summary["linear_head"] = {"skipped": msg}
        else:
            t = time.perf_counter()
            summary["linear_head"] = analyse_linear_head(run, held, str(head), args, out)
            seconds["linear_head"] = time.perf_counter() - t

    if "twirl" in args.selected:
        t = time.perf_counter()
        summary["twirl"] = analyse_twirl(run, held, args, out)
        seconds["twirl"] = time.perf_counter() - t

    if "gradient-ratio" in args.selected:
        t = time.perf_counter()
        summary["gradient_ratio"] = analyse_gradient_ratio(metrics, held, term, args, out)
        if "skipped" in summary["gradient_ratio"]:
            log.warning("gradient-ratio: skipped — %s", summary["gradient_ratio"]["skipped"])
        seconds["gradient_ratio"] = time.perf_counter() - t

    seconds["total"] = time.perf_counter() - t_start
    summary["seconds"] = seconds
    summary["threads"] = torch.get_num_threads()
    summary = _clean(summary)
    atomic_write_json(out / "summary.json", summary)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
