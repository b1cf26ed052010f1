"""Why equivariance is learned fast: the mechanism analyses of the paper (§5.3–§6) on one checkpoint of one run.

    equivrepro-analyze --run-dir runs/smoke/forcefield_smoke-bd51a5b99c
    equivrepro-analyze --scale smoke -- experiment=forcefield_smoke seed=0 paths.runs_dir=runs/smoke
    equivrepro-analyze --scale paper --step 500 -- experiment=flowmatching_paper seed=0
    equivrepro-analyze --run-dir DIR --analyses spectrum,landscape --params all --forms ggn

The run is ``--run-dir`` or the Hydra overrides after ``--``, resolved to the run directory exactly as
``python -m equivrepro.train <overrides>`` would. The checkpoint is the run's last one or, with ``--step N``, its
snapshot of step N (``trainer.snapshot_steps``); ``--weights ema`` (default, what the training-time evaluation
used) or ``model``. Per-task defaults come from the task card's ``analysis`` block (``configs/reproduce/<task>.yaml``:
``params``, ``grid_step``, ``suffix``, ``smoke_flags`` — extra command-line flags applied before the given ones with
``--scale smoke``); without a card: all parameters, step 0.002, the first suffix.

Held-out set. By default exactly the one the run's training-time evaluation used
(:func:`equivrepro.analysis.heldout.freeze_heldout` with the run's ``equivariance.{seed,num_samples,k,batch_size}``),
so the losses at the checkpoint match the logged ``equiv/…`` values of that step (``logged_at_step`` in the
summary). ``--num-samples``, ``--k``, ``--seed`` draw another set. A task with several evaluation batches per sample
(one per flow time, say) is analysed at one, ``--eval-suffix`` (default: the card's ``suffix``), or ``all`` pooled.

Analyses (``--analyses``, comma-separated; default all):

* ``spectrum`` — whole spectra of the curvature of L_mean and L_equiv on ``--params`` in each ``--forms``
  (``hessian``: ∇² of the ``--estimator`` losses, plug-in by default; ``ggn``: the Gauss–Newton matrix of the
  plug-in losses, PSD, :mod:`equivrepro.analysis.curvature`): exact up to ``--exact-max`` parameters, else
  stochastic Lanczos quadrature (``--slq-probes`` × ``--lanczos-steps``); the top eigenvalues, the density,
  the effective ranks, κ over resolved eigenvalues only (``--rtol``; how many) and the structural verdict
  (:mod:`equivrepro.analysis.structure`): "structurally equal" means the comparison is forced and κ ratios are
  reported as n/a.
* ``landscape`` — both losses on an n×n grid (``--grid-n``) along each loss's min-positive and max Hessian
  eigenvectors, step ``--grid-step``: **frozen** (fixed samples, noise, rotations) and **redrawn** (all three drawn
  afresh at every point of a ``--redrawn-grid-n`` grid over the same span, plus the evaluation noise from
  ``--centre-draws`` draws at the checkpoint), each with quadratic-fit R², residual SD and smoothness.
* ``head-deviation`` — the paper's linear-head measurement: over the run's training evaluations, the head's
  deviation (``--head-metric``, default ``deviation``, logged as ``head/<metric>``) against L_equiv of the headline
  term, log–log fit, Pearson and Spearman with block-bootstrap intervals (:mod:`equivrepro.analysis.head_deviation`).
* ``twirl`` — held-out loss of the test-time-twirled model for K ∈ ``--twirl-ks`` against L_mean + L_equiv/K.
* ``gradient-ratio`` — log-space Pearson / Spearman of ‖∇L_equiv‖/‖∇L_mean‖ with pct over training.

Outputs in ``--out`` (default ``figures/<scale>/analysis-<task>/`` with ``--scale``, else the run's ``analysis/``):
``summary.json`` (every number; atomic), ``spectrum.csv``, ``spectral_density.*``, ``top_eigenvalues.*``,
``landscape.{pt,png,pdf,csv}``, ``landscape_redrawn.pt``, ``landscape_frozen_redrawn.*``, ``head_deviation.*``,
``twirl.*``, ``gradient_ratio.*`` (PNG + PDF + the plotted numbers). Computation in ``--dtype`` (float64) on
``--device`` (auto: CUDA if available). Exit status 0 when every requested analysis ran or was skipped for a
stated reason.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("equivrepro.analyze")

ANALYSES = ("spectrum", "landscape", "head-deviation", "twirl", "gradient-ratio", "degree-spectrum")
DTYPES = ("float64", "float32")
GENERIC_DEFAULTS: dict[str, Any] = {"params": "all", "grid_step": 0.002, "suffix": None, "smoke_flags": []}
HEAD_METRIC = "deviation"


# ----------------------------------------------------------------------------------------------------
# Run, defaults, checkpoint, held-out set
# ----------------------------------------------------------------------------------------------------
def analysis_defaults(task_name: str) -> dict[str, Any]:
    """The task card's ``analysis`` block over :data:`GENERIC_DEFAULTS` (no card: the generic ones)."""
    try:
        from equivrepro import catalog

        declared = dict(catalog.card(task_name).analysis)
    except (ImportError, KeyError, FileNotFoundError):
        declared = {}
    unknown = set(declared) - set(GENERIC_DEFAULTS)
    if unknown:
        raise SystemExit(f"task card of {task_name!r}: unknown analysis keys {sorted(unknown)} (allowed: {sorted(GENERIC_DEFAULTS)})")
    return {**GENERIC_DEFAULTS, **{k: v for k, v in declared.items() if v is not None}}


def resolve_run_dir(run_dir: Path | None, overrides: Sequence[str], runs_dir: Path | None = None):
    """The :class:`~equivrepro.runs.RunDir` of ``run_dir``, or the one the trainer would use for ``overrides``."""
    from equivrepro.runs import RunDir

    if run_dir is not None:
        if overrides:
            raise SystemExit("give either --run-dir or Hydra overrides after '--', not both")
        return RunDir(Path(run_dir).resolve())
    if not overrides:
        raise SystemExit("no run: give --run-dir DIR or Hydra overrides after '--' (e.g. -- experiment=<task>_smoke seed=0)")
    from equivrepro.train.app import compose_config
    from equivrepro.train.build import run_dir_for

    extra = [f"paths.runs_dir={Path(runs_dir).resolve()}"] if runs_dir is not None else []
    return RunDir(run_dir_for(compose_config(list(overrides) + extra)).resolve())


def _task_name(rd) -> str:
    cfg = rd.read_config()
    name = (cfg.get("task") or {}).get("name")
    if not name:
        raise SystemExit(f"{rd.config_path}: the run's config has no task.name")
    return str(name)


def held_out_for(run, args, device, dtype, preferred_suffix: str | None):
    """The run's frozen held-out set (or the one ``--num-samples/--k/--seed/--batch-size`` ask for), the chosen suffix,
    its batches cast to ``dtype`` and rotations, and a description."""
    from equivrepro.analysis.heldout import freeze_heldout, pick_suffix
    from equivrepro.analysis.subset import cast_batch

    ecfg = run.config.equivariance
    want = {"num_samples": args.num_samples, "k": args.k, "seed": args.seed, "batch_size": args.batch_size}
    use = {key: int(v if v is not None else ecfg[key]) for key, v in want.items()}
    if use["k"] < 2:
        raise SystemExit(f"--k must be ≥ 2 rotations per sample (the equivariance error needs two), got {use['k']}")
    held = freeze_heldout(
        run.task,
        run.datamodule.heldout_dataset,
        run.datamodule.collate,
        use["num_samples"],
        use["k"],
        use["batch_size"],
        use["seed"],
        device=device,
        dtype=dtype,
    )
    try:
        suffix = pick_suffix(held.suffixes, args.eval_suffix, preferred_suffix)
    except KeyError as exc:
        raise SystemExit(f"--eval-suffix: {exc.args[0]}") from exc
    batches, rotations = held.select(suffix)
    batches = [cast_batch(b, dtype) for b in batches]
    rotations = [r.to(dtype) for r in rotations]
    same = all(use[key] == int(ecfg[key]) for key in use)
    info = {
        **use,
        "num_samples": held.num_samples,
        "suffix": suffix,
        "available_suffixes": held.suffixes,
        "heldout_dataset_size": held.dataset_size,
        "matches_training_eval": same and args.weights == "ema",
    }
    return held, suffix, batches, rotations, info


def _draw_factory(run, args, device, dtype, suffix: str, info: dict, params):
    """``draw(i)``: SubsetLosses on the i-th fresh held-out draw (new samples when the held-out set is larger,
    new task randomness and rotations) — the redrawn landscape's evaluations."""
    from equivrepro.analysis.heldout import freeze_heldout
    from equivrepro.analysis.subset import SubsetLosses, cast_batch

    def draw(i: int):
        seed = (int(info["seed"]) * 1_000_003 + 7_919 * (i + 1) + int(args.seed_analysis)) % (2**62)
        h = freeze_heldout(
            run.task,
            run.datamodule.heldout_dataset,
            run.datamodule.collate,
            info["num_samples"],
            info["k"],
            info["batch_size"],
            seed,
            device=device,
            dtype=dtype,
        )
        batches, rotations = h.select(suffix)
        return SubsetLosses(
            run.model,
            run.task,
            [cast_batch(b, dtype) for b in batches],
            [r.to(dtype) for r in rotations],
            params,
            estimator=args.estimator,
            chunk_size=run.config.equivariance.chunk_size,
        )

    return draw


# ----------------------------------------------------------------------------------------------------
# The analyses
# ----------------------------------------------------------------------------------------------------
def analyse_spectrum(run, losses, batches, args, out: Path) -> tuple[dict, dict]:
    """Spectra of every form × loss, the structural verdict, ``spectrum.csv`` and the two spectrum figures."""
    import pandas as pd
    import torch

    from equivrepro.analysis.curvature import curvature_operators, curvature_spectrum
    from equivrepro.analysis.structure import structure_verdict
    from equivrepro.atomic import atomic_write_text
    from equivrepro.plots.analysis import spectral_densities, top_eigenvalues

    gen = torch.Generator().manual_seed(int(args.seed_analysis))
    spectra: dict[str, dict] = {}
    notes = []
    for form in args.forms:
        if form == "ggn" and not losses.term.quadratic:
            notes.append(f"GGN skipped: term {losses.term.name!r} is not quadratic")
            continue
        ops = curvature_operators(losses, form)
        spectra[form] = {
            w: curvature_spectrum(
                losses,
                w,
                form,
                exact_max=args.exact_max,
                steps=args.lanczos_steps,
                probes=args.slq_probes,
                rtol=args.rtol,
                generator=gen,
                chunk=args.hvp_chunk,
                operator=ops[w],
            )
            for w in ("mean", "equiv")
        }
        del ops
    verdict = structure_verdict(
        run.model,
        run.task,
        batches,
        args.params,
        linear_head=run.config.equivariance.get("linear_head"),
        term=losses.term,
        samples=args.structure_samples,
        chunk_size=run.config.equivariance.chunk_size,
        exact_max=args.exact_max,
        steps=args.structure_steps,
        generator=torch.Generator().manual_seed(1),
        numeric=args.structure == "cube",
        rtol=args.structure_rtol,
    )
    rows = []
    for form, by_loss in spectra.items():
        for loss, sp in by_loss.items():
            ok = sp.condition["resolved"]
            for i, lam in enumerate(sp.eigenvalues.tolist()):
                rows.append(
                    {
                        "form": form,
                        "loss": loss,
                        "index": i,
                        "eigenvalue": lam,
                        "residual": float(sp.residuals[i]) if sp.residuals is not None else 0.0,
                        "resolved": bool(ok[i]),
                    }
                )
    atomic_write_text(out / "spectrum.csv", pd.DataFrame(rows).to_csv(index=False))
    title = f"{losses.n_params} parameters of {args.params} ({verdict.verdict})"
    if spectra:
        spectral_densities(spectra, out / "spectral_density", title=title)
        top_eigenvalues(spectra, out / "top_eigenvalues", title=title)
    summary: dict[str, Any] = {
        "n_params": losses.n_params,
        "parameters": losses.names,
        "estimator": losses.describe()["estimator"],
        "rtol": args.rtol,
        "structure": verdict.to_dict(),
        "notes": notes,
        "forms": {},
    }
    for form, by_loss in spectra.items():
        m, e = by_loss["mean"], by_loss["equiv"]
        km, ke = m.condition["kappa"], e.condition["kappa"]
        rm, re_ = m.density.ranks(), e.density.ranks()
        summary["forms"][form] = {
            "method": m.method,
            "mean": m.summary(args.top_k),
            "equiv": e.summary(args.top_k),
            "kappa_ratio_mean_over_equiv": None if verdict.forced or not (km > 0 and ke > 0) else km / ke,
            "entropy_rank_ratio_mean_over_equiv": rm["entropy_rank"] / re_["entropy_rank"] if re_["entropy_rank"] > 0 else None,
            "lambda_max_ratio_mean_over_equiv": (
                m.condition["lambda_max"] / e.condition["lambda_max"] if e.condition["lambda_max"] > 0 else None
            ),
        }
    return summary, spectra


def analyse_landscape(losses, spectra: dict, draw, args, out: Path, grid_step: float) -> dict:
    from equivrepro.analysis.landscape import loss_landscape, redrawn_landscape
    from equivrepro.plots.analysis import landscape_frozen_redrawn, landscape_surfaces

    form = "hessian" if "hessian" in spectra else next(iter(spectra))
    directions = {w: spectra[form][w].extreme_directions() for w in ("mean", "equiv")}
    frozen = loss_landscape(losses, n=args.grid_n, step=grid_step, directions=directions, points_per_call=args.points_per_call)
    frozen.config["direction_form"] = form
    frozen.save(out / "landscape.pt")
    landscape_surfaces(frozen, out / "landscape")
    result: dict[str, Any] = {
        "n": args.grid_n,
        "step": grid_step,
        "span": grid_step * args.grid_n / 2,
        "direction_form": form,
        "estimator": losses.describe()["estimator"],
        "centre": frozen.centre,
        "frozen": _landscape_numbers(frozen),
        "points_per_call": frozen.config.get("points_per_call"),
    }
    redrawn = None
    if args.redrawn_grid_n > 0:
        redrawn = redrawn_landscape(draw, frozen, n=args.redrawn_grid_n, centre_draws=args.centre_draws)
        redrawn.save(out / "landscape_redrawn.pt")
        noise = redrawn.config["noise"]
        result["redrawn"] = {
            **_landscape_numbers(redrawn),
            "n": args.redrawn_grid_n,
            "centre_draws": args.centre_draws,
            "noise_sd": noise,
            "centre_mean": redrawn.centre,
        }
        result["frozen_range_over_noise"] = {
            w: (result["frozen"][w]["max"] - result["frozen"][w]["min"]) / noise[w] if noise[w] > 0 else None for w in ("mean", "equiv")
        }
    landscape_frozen_redrawn(
        frozen,
        redrawn,
        out / "landscape_frozen_redrawn",
        title=f"{losses.n_params} parameters of {args.params}, span ±{grid_step * args.grid_n / 2:.3g}",
    )
    return result


def _landscape_numbers(land) -> dict:
    s = land.summary()
    out = {}
    for w in ("mean", "equiv"):
        st = land.stats[w][w]
        out[w] = {**s[w], "residual_sd": st["residual_sd"]}
    return out


def analyse_head_deviation(rd, term: str, suffix: str, args, out: Path) -> dict:
    from equivrepro.analysis.head_deviation import deviation_correlation
    from equivrepro.metrics import keys
    from equivrepro.plots.analysis import head_deviation_scatter

    frame = rd.metrics_frame()
    if frame is None:
        return {"skipped": f"the run has no {rd.METRICS}"}
    y = keys.key(keys.EQUIV, term, "equiv", suffix)
    heads = sorted(c for c in frame.columns if str(c).startswith(keys.scalar_key(keys.HEAD, "")))
    if not heads:
        return {"skipped": "the run logged no head/… metrics (set equivariance.linear_head to the model's linear output head)"}
    if y not in frame.columns:
        return {"skipped": f"the run logged no {y}"}
    x = keys.scalar_key(keys.HEAD, args.head_metric)
    if x not in frame.columns:
        return {"skipped": f"the run logged no {x}; it has {heads}"}
    res = deviation_correlation(frame, x, y, n_boot=args.bootstrap, seed=args.seed_analysis)
    head_deviation_scatter(res, out / "head_deviation")
    by_metric = {}
    for h in heads:
        try:
            r = deviation_correlation(frame, h, y, n_boot=args.bootstrap, seed=args.seed_analysis)
        except ValueError as exc:
            by_metric[h] = {"skipped": str(exc)}
            continue
        by_metric[h] = {k: r[k] for k in ("n", "slope", "pearson_r", "spearman_rho")} | {
            "pearson_r_ci": r["bootstrap"]["pearson_r_ci"],
            "spearman_rho_ci": r["bootstrap"]["spearman_rho_ci"],
        }
    return {**{k: v for k, v in res.items() if k != "table"}, "by_metric": by_metric}


def analyse_twirl(run, batches, args, out: Path) -> dict:
    import torch

    from equivrepro.analysis.test_time_twirl import twirl_mse_table
    from equivrepro.plots.analysis import twirl_cost

    gen = torch.Generator().manual_seed(args.seed_analysis + 1)
    df = twirl_mse_table(
        run.model,
        run.task,
        batches,
        None,
        ks=args.twirl_ks,
        n_draws=args.twirl_draws,
        reference_k=args.reference_k,
        generator=gen,
        chunk_size=run.config.equivariance.chunk_size,
    )
    twirl_cost(df, out / "twirl")
    return {**df.attrs, "ks": [int(k) for k in df["k"]], "table": df.to_dict(orient="records")}


def analyse_gradient_ratio(rd, suffixes: list[str], suffix: str, term: str, args, out: Path) -> dict:
    """Correlation for the analysed suffix (figure) and every suffix that logged gradient norms (table)."""
    import pandas as pd

    from equivrepro.analysis.gradient_ratio import ratio_correlation, wide_from_results
    from equivrepro.analysis.heldout import pick_suffix
    from equivrepro.metrics import keys
    from equivrepro.plots.analysis import gradient_ratio_scatter

    if not rd.metrics_path.exists():
        return {"skipped": f"the run has no {rd.METRICS}"}
    table = pd.DataFrame(rd.read_metrics(), columns=["step", "metric", "value"])
    names = set(table["metric"].unique())

    def pct_key(s: str) -> str:
        """``grad_pct`` (the pct of exactly the samples and weights the gradients were taken on) when the run logged it."""
        own = keys.key(keys.EQUIV, term, "grad_pct", s)
        return own if own in names else keys.key(keys.EQUIV, term, "pct", s)

    per_suffix = {}
    for s in suffixes:
        pct, ratio = pct_key(s), keys.key(keys.EQUIV, term, "grad_norm_ratio", s)
        if pct in names and ratio in names:
            try:
                per_suffix[s] = ratio_correlation(wide_from_results(table, pct_metric=pct, ratio_metric=ratio))
            except ValueError as exc:
                per_suffix[s] = {"skipped": str(exc)}
    if not per_suffix:
        return {"skipped": f"the run logged no {keys.key(keys.EQUIV, term, 'grad_norm_ratio')} (train with equivariance.grad_norms=true)"}
    fig_suffix = suffix if suffix in per_suffix else pick_suffix(list(per_suffix))
    if "skipped" in per_suffix[fig_suffix]:
        return {"skipped": f"suffix {fig_suffix!r}: {per_suffix[fig_suffix]['skipped']}", "per_suffix": per_suffix}
    ratio_key = keys.key(keys.EQUIV, term, "grad_norm_ratio", fig_suffix)
    df = wide_from_results(table, pct_metric=pct_key(fig_suffix), ratio_metric=ratio_key)
    corr = gradient_ratio_scatter(df, out / "gradient_ratio", span_fraction=args.ema_span)
    return {
        "suffix": fig_suffix,
        "metric": ratio_key,
        "pct_metric": pct_key(fig_suffix),
        **corr,
        "per_suffix": per_suffix if len(per_suffix) > 1 else None,
    }


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
    if isinstance(obj, np.ndarray):
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
    sp = s.get("spectrum")
    if sp and "skipped" not in sp:
        st = sp["structure"]
        print(
            f"spectrum of {sp['n_params']} parameters of {s['params']} ({sp['estimator']} estimator): "
            f"{st['verdict'].upper()} — {st['reason']}"
        )
        for form, f in sp["forms"].items():
            print(f"  {form} ({f['method']}):")
            for w in ("mean", "equiv"):
                c, d = f[w]["condition"], f[w]["density"]
                print(
                    f"    L_{w:5s} κ(resolved) = {_fmt(c['kappa'], '.3g')} over {c['n_resolved_positive']} resolved positive "
                    f"({c['n_resolved']} resolved, {c['n_resolved_negative']} negative, of {c['n_values']}); "
                    f"λ_max = {_fmt(c['lambda_max'], '.3g')}; "
                    f"effective rank: trace {_fmt(d['trace_rank'], '.3g')}, entropy {_fmt(d['entropy_rank'], '.3g')}; "
                    f"negative mass {_fmt(d['negative_mass'], '.2g')}"
                )
            ratio = f["kappa_ratio_mean_over_equiv"]
            print(
                f"    κ(L_mean)/κ(L_equiv) = {_fmt(ratio, '.3g') if ratio is not None else 'n/a (' + st['verdict'] + ')'}; "
                f"entropy-rank ratio {_fmt(f['entropy_rank_ratio_mean_over_equiv'], '.3g')}"
            )
        for note in sp.get("notes", []):
            print(f"  note: {note}")
    la = s.get("landscape")
    if la and "skipped" not in la:
        fz = la["frozen"]
        print(
            f"landscape ±{_fmt(la['span'], '.3g')} along the {la['direction_form']} eigenvectors: frozen {la['n']}×{la['n']} "
            f"R²(L_mean) = {_fmt(fz['mean']['r2'], '.3f')}, R²(L_equiv) = {_fmt(fz['equiv']['r2'], '.3f')}; "
            f"smoothness {_fmt(fz['mean']['smoothness'], '.3f')} / {_fmt(fz['equiv']['smoothness'], '.3f')}"
        )
        if "redrawn" in la:
            rd = la["redrawn"]
            print(
                f"  redrawn {rd['n']}×{rd['n']}: R²(L_mean) = {_fmt(rd['mean']['r2'], '.3f')}, "
                f"R²(L_equiv) = {_fmt(rd['equiv']['r2'], '.3f')}; "
                f"smoothness {_fmt(rd['mean']['smoothness'], '.3f')} / {_fmt(rd['equiv']['smoothness'], '.3f')}; evaluation noise SD "
                f"{_fmt(rd['noise_sd']['mean'], '.3g')} / {_fmt(rd['noise_sd']['equiv'], '.3g')} (frozen range / noise: "
                f"{_fmt(la['frozen_range_over_noise']['mean'], '.3g')} / {_fmt(la['frozen_range_over_noise']['equiv'], '.3g')})"
            )
    hd = s.get("head_deviation")
    if hd and "skipped" not in hd:
        b = hd["bootstrap"]
        print(
            f"head deviation vs L_equiv ({hd['x']} vs {hd['y']}, n = {hd['n']} evaluations): slope {_fmt(hd['slope'], '.3g')} "
            f"[{_fmt(b['slope_ci'][0], '.3g')}, {_fmt(b['slope_ci'][1], '.3g')}], Pearson {_fmt(hd['pearson_r'], '.3f')} "
            f"[{_fmt(b['pearson_r_ci'][0], '.2f')}, {_fmt(b['pearson_r_ci'][1], '.2f')}], Spearman {_fmt(hd['spearman_rho'], '.3f')} "
            f"[{_fmt(b['spearman_rho_ci'][0], '.2f')}, {_fmt(b['spearman_rho_ci'][1], '.2f')}]"
        )
    tw = s.get("twirl")
    if tw and "skipped" not in tw:
        print(f"test-time twirl (L_mean = {_fmt(tw['l_mean'])}, L_equiv = {_fmt(tw['l_equiv'])}):")
        for r in tw["table"]:
            print(
                f"  K={r['k']:3d}  MSE = {_fmt(r['mse'])} ± {_fmt(r['mse_se'], '.2g')}  predicted {_fmt(r['predicted'])}  "
                f"rel. dev {_fmt(r['rel_deviation'], '+.3f')}  cost ×{_fmt(r['relative_cost'], '.2f')}"
            )
    g = s.get("gradient_ratio")
    if g and "skipped" not in g:
        print(
            f"gradient ratio vs pct ({g['metric']}; n = {g['n']} evaluations): Pearson {_fmt(g['pearson_r'], '.3f')}, "
            f"Spearman {_fmt(g['spearman_rho'], '.3f')}"
        )
    for name in ("spectrum", "landscape", "head_deviation", "twirl", "gradient_ratio"):
        if name in s and "skipped" in s[name]:
            print(f"{name}: skipped — {s[name]['skipped']}")
    print(f"wall time: {', '.join(f'{k} {v:.1f} s' for k, v in s['seconds'].items())}")
    print(f"→ {s['out']}/summary.json")


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="equivrepro-analyze",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--run-dir", type=Path, default=None, help="the run directory (or give Hydra overrides after '--')")
    p.add_argument("--task", default=None, help="a task's default run at --scale (seed 0 of its card's default sweep)")
    p.add_argument("--all-tasks", action="store_true", help="every task of `make reproduce` in turn (outputs in --figures-dir)")
    p.add_argument(
        "--train-missing", action="store_true", help="with --task / --all-tasks at smoke scale: train the default run first if needed"
    )
    p.add_argument("--figures-dir", type=Path, default=None, help="with --task / --all-tasks: outputs go to <figures-dir>/analysis-<task>")
    p.add_argument("--runs-dir", type=Path, default=None, help="with overrides: the runs directory (sets paths.runs_dir)")
    p.add_argument("--step", type=int, default=None, help="analyse the snapshot of this step (default: the last checkpoint)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema")
    p.add_argument("--analyses", default="all", help=f"comma-separated subset of {','.join(ANALYSES)} (default: all)")
    p.add_argument(
        "--scale",
        choices=("smoke", "paper"),
        default=None,
        help="sets the default --out figures/<scale>/analysis-<task>/; smoke also applies the card's smoke_flags",
    )
    p.add_argument("--out", type=Path, default=None, help="output directory (default: see --scale, else the run's analysis/)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available) | cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default="float64")
    p.add_argument("--seed-analysis", type=int, default=0, help="seed of probe vectors, redrawn held-out sets and twirling rotations")
    g = p.add_argument_group("held-out set")
    g.add_argument("--num-samples", type=int, default=None, help="held-out samples (default: the run's equivariance.num_samples)")
    g.add_argument("--k", type=int, default=None, help="rotations per sample (default: the run's equivariance.k)")
    g.add_argument("--seed", type=int, default=None, help="held-out selection / rotation seed (default: the run's equivariance.seed)")
    g.add_argument(
        "--batch-size", type=int, default=None, help="held-out samples per forward pass (default: the run's equivariance.batch_size)"
    )
    g.add_argument("--eval-suffix", default=None, help="evaluation batch to analyse, or 'all' (default: the card's suffix / the only one)")
    g = p.add_argument_group("spectra")
    g.add_argument("--params", default=None, help="parameter subset: all | module or parameter name | glob (default: the card's)")
    g.add_argument(
        "--forms", default="hessian,ggn", help="curvature forms: hessian (of --estimator), ggn (Gauss–Newton of the plug-in, PSD)"
    )
    g.add_argument(
        "--estimator", choices=("plugin", "unbiased"), default="plugin", help="L_mean/L_equiv estimator of the Hessian and landscape"
    )
    g.add_argument("--exact-max", type=int, default=512, help="exact matrices (one product per parameter) up to this many parameters")
    g.add_argument(
        "--lanczos-steps", type=int, default=40, help="Lanczos steps per SLQ probe (the first probe also gives κ and the top eigenvalues)"
    )
    g.add_argument("--slq-probes", type=int, default=4, help="SLQ probe vectors")
    g.add_argument("--rtol", type=float, default=None, help="a Ritz value is resolved when its residual ≤ rtol·|θ| (default 1e-3)")
    g.add_argument("--top-k", type=int, default=10, help="top eigenvalues listed in the summary")
    g.add_argument("--hvp-chunk", type=int, default=32, help="products per batched backward (exact matrices)")
    g.add_argument(
        "--structure",
        choices=("cube", "declared"),
        default="cube",
        help="structural verdict: numeric under the exact cube twirl (falls back to declared), or by declaration only",
    )
    g.add_argument("--structure-samples", type=int, default=4, help="held-out samples of the cube-twirl check")
    g.add_argument("--structure-steps", type=int, default=40, help="Lanczos steps of the cube-twirl check (above --exact-max)")
    g.add_argument("--structure-rtol", type=float, default=1e-2, help="resolution of the cube-twirl Ritz values")
    g = p.add_argument_group("landscapes")
    g.add_argument("--grid-n", type=int, default=20, help="frozen grid points per axis")
    g.add_argument("--grid-step", type=float, default=None, help="grid step (default: the card's grid_step)")
    g.add_argument("--points-per-call", type=int, default=50, help="frozen landscape points per vmapped evaluation (1: one at a time)")
    g.add_argument(
        "--redrawn-grid-n",
        type=int,
        default=7,
        help="redrawn grid points per axis over the same span (0: no redrawn landscape; one full forward pass per point)",
    )
    g.add_argument("--centre-draws", type=int, default=8, help="redrawn evaluations at the checkpoint (the evaluation noise)")
    g = p.add_argument_group("head deviation, twirling, gradient ratio")
    g.add_argument(
        "--head-metric", default=HEAD_METRIC, help="x-axis: the logged head/<metric> (deviation, relative_deviation, row_variance, …)"
    )
    g.add_argument("--bootstrap", type=int, default=2000, help="block-bootstrap resamples of the correlation intervals")
    g.add_argument("--twirl-ks", default="1,2,4,8,16")
    g.add_argument(
        "--spectrum-l-max",
        type=int,
        default=8,
        help="degree-spectrum analysis: largest degree (use a larger --k, e.g. 50, to resolve the high degrees)",
    )
    g.add_argument("--twirl-draws", type=int, default=3, help="independent rotation draws per K")
    g.add_argument("--reference-k", type=int, default=32, help="rotations of the decomposition that predicts MSE(K)")
    g.add_argument(
        "--ema-span", type=float, default=0.01, help="EMA span / step of the gradient-ratio trajectory (paper: 0.01 EScAIP, 0.001 Proteina)"
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides naming the run, after '--'")
    return p


def parse_args(argv: Sequence[str] | None, defaults: dict | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``defaults`` (a task card's analysis block) fills --params, --grid-step and --eval-suffix."""
    from equivrepro.analysis.curvature import FORMS
    from equivrepro.analysis.spectral import DEFAULT_RTOL

    p = build_parser()
    args = p.parse_args(argv)
    args.twirl_ks = [int(x) for x in str(args.twirl_ks).split(",") if x.strip()]
    args.forms = [f.strip() for f in str(args.forms).split(",") if f.strip()]
    bad = [f for f in args.forms if f not in FORMS]
    if bad:
        p.error(f"unknown --forms {bad}; choose from {', '.join(FORMS)}")
    wanted = [a.strip() for a in args.analyses.split(",") if a.strip()]
    if wanted == ["all"]:
        args.selected = list(ANALYSES)
    else:
        unknown = [a for a in wanted if a not in ANALYSES]
        if unknown:
            p.error(f"unknown analyses {unknown}; choose from {', '.join(ANALYSES)} (or all)")
        args.selected = [a for a in ANALYSES if a in wanted]
    if args.grid_n < 2:
        p.error("--grid-n must be ≥ 2")
    if args.redrawn_grid_n == 1 or args.redrawn_grid_n < 0:
        p.error("--redrawn-grid-n must be 0 (off) or ≥ 2")
    d = {**GENERIC_DEFAULTS, **(defaults or {})}
    args.params = args.params or d["params"]
    args.grid_step = float(args.grid_step if args.grid_step is not None else d["grid_step"])
    args.preferred_suffix = d["suffix"]
    args.rtol = DEFAULT_RTOL if args.rtol is None else args.rtol
    return args


def _task_runs(first: argparse.Namespace, argv: list[str]) -> int:
    """``--task`` / ``--all-tasks``: analyse each task's default run (seed 0 of its card's default sweep at ``--scale``)."""
    from equivrepro import catalog, reproduce, sweeps

    scale = first.scale or "smoke"
    names = [first.task] if first.task else [c.task for c in catalog.cards().values() if c.in_reproduce]
    passthrough, skip = [], {"--task": 1, "--all-tasks": 0, "--train-missing": 0, "--figures-dir": 1, "--out": 1}
    i = 0
    while i < len(argv):
        key = argv[i].split("=", 1)[0]
        if key in skip:
            i += 1 + (skip[key] if "=" not in argv[i] else 0)
            continue
        if argv[i] == "--":
            break
        passthrough.append(argv[i])
        i += 1
    rc = 0
    for name in names:
        try:
            overrides = sweeps.expand(catalog.card(name).default_sweep.overrides(scale))[0]
        except KeyError as exc:
            raise SystemExit(str(exc)) from None
        if first.train_missing and scale == "smoke":
            extra = ["--runs-dir", str(first.runs_dir)] if first.runs_dir else []
            if reproduce.main(["--scale", "smoke", "--task", name, "--no-draw", *extra]) != 0:
                raise SystemExit(f"the default run of {name} could not be trained")
        figures_dir = first.figures_dir or Path("figures") / scale
        rc |= main([*passthrough, "--scale", scale, "--out", str(Path(figures_dir) / f"analysis-{name}"), "--", *overrides])
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``equivrepro-analyze`` (and ``scripts/analyze.py``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="[analyze] %(message)s")
    logging.getLogger("equivrepro").setLevel(logging.INFO)
    first = parse_args(argv)
    if first.task or first.all_tasks:
        return _task_runs(first, argv)
    rd = resolve_run_dir(first.run_dir, first.overrides, first.runs_dir)
    if not rd.exists():
        raise SystemExit(
            f"run directory {rd.path} does not exist: train the run first (python -m equivrepro.train {' '.join(first.overrides)})"
        )
    defaults = analysis_defaults(_task_name(rd))
    if first.scale == "smoke" and defaults["smoke_flags"]:
        argv = [str(a) for a in defaults["smoke_flags"]] + argv
    args = parse_args(argv, defaults)
    with warnings.catch_warnings():
        # vmap's per-op fallback notice (e.g. index_copy_ in a scatter): slower, not wrong
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching rule")
        return analyse(args, rd)


def analyse(args: argparse.Namespace, rd) -> int:
    """Run the selected analyses of the run ``rd`` (a :class:`~equivrepro.runs.RunDir`); writes ``summary.json``."""
    import torch

    from equivrepro.analysis.subset import SubsetLosses
    from equivrepro.atomic import atomic_write_json
    from equivrepro.metrics import keys
    from equivrepro.train.restore import load_run

    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    try:
        ckpt = rd.checkpoint(args.step)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from exc
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    dtype = getattr(torch, args.dtype)

    t = time.perf_counter()
    run = load_run(rd.path, weights=args.weights, device=device, checkpoint=ckpt)
    run.model.to(dtype=dtype)
    task_name = str(run.config.task.get("name") or run.task.name)
    out = Path(args.out or (Path("figures") / args.scale / f"analysis-{task_name}" if args.scale else rd.analysis_dir))
    out.mkdir(parents=True, exist_ok=True)
    held, suffix, batches, rotations, held_info = held_out_for(run, args, device, dtype, args.preferred_suffix)
    term = run.task.primary_term.name
    seconds["load"] = time.perf_counter() - t
    log.info(
        "run %s, step %d (%s), task %s: %d held-out samples × K=%d, suffix %r, parameters %r",
        rd.path,
        run.step,
        ckpt.name,
        task_name,
        held.num_samples,
        held.k,
        suffix,
        args.params,
    )

    summary: dict[str, Any] = {
        "run_dir": str(rd.path),
        "run_id": rd.read_status().get("run_id") or rd.name.rsplit("-", 1)[-1],
        "task": task_name,
        "step": run.step,
        "checkpoint": str(ckpt.relative_to(rd.path)),
        "weights": args.weights,
        "device": str(device),
        "dtype": args.dtype,
        "term": term,
        "params": args.params,
        "out": str(out),
        "held_out": held_info,
    }
    if rd.metrics_path.exists() and suffix != "all" and held_info["matches_training_eval"]:
        frame = rd.metrics_frame()
        if frame is not None and run.step in frame.index:
            at = frame.loc[run.step]
            logged = {}
            for q in ("total", "mean", "equiv", "pct", "mean_plugin", "equiv_plugin"):
                name = keys.key(keys.EQUIV, term, q, suffix)
                if name in at.index and math.isfinite(float(at[name])):
                    logged[q] = float(at[name])
            summary["logged_at_step"] = logged

    spectra: dict = {}
    if "spectrum" in args.selected or "landscape" in args.selected:
        try:
            losses = SubsetLosses(
                run.model,
                run.task,
                batches,
                rotations,
                args.params,
                estimator=args.estimator,
                chunk_size=run.config.equivariance.chunk_size,
            )
        except KeyError as exc:
            raise SystemExit(f"--params: {exc.args[0]}") from exc
        with torch.no_grad():
            summary["losses_at_checkpoint"] = {k: float(v) for k, v in losses.evaluate().items()}
        t = time.perf_counter()
        spec_summary, spectra = analyse_spectrum(run, losses, batches, args, out)
        seconds["spectrum"] = time.perf_counter() - t
        if "spectrum" in args.selected:
            summary["spectrum"] = spec_summary
        if "landscape" in args.selected:
            t = time.perf_counter()
            try:
                if not spectra:
                    raise ValueError("no curvature spectrum to take directions from (--forms)")
                draw = _draw_factory(run, args, device, dtype, suffix, held_info, args.params)
                summary["landscape"] = analyse_landscape(losses, spectra, draw, args, out, args.grid_step)
            except ValueError as exc:  # no resolved positive eigenvalue to perturb along
                log.warning("landscape: skipped — %s", exc)
                summary["landscape"] = {"skipped": str(exc)}
            seconds["landscape"] = time.perf_counter() - t

    if "head-deviation" in args.selected:
        t = time.perf_counter()
        summary["head_deviation"] = analyse_head_deviation(rd, term, suffix if suffix != "all" else held.suffixes[0], args, out)
        seconds["head_deviation"] = time.perf_counter() - t

    if "twirl" in args.selected:
        t = time.perf_counter()
        summary["twirl"] = analyse_twirl(run, batches, args, out)
        seconds["twirl"] = time.perf_counter() - t

    if "gradient-ratio" in args.selected:
        t = time.perf_counter()
        summary["gradient_ratio"] = analyse_gradient_ratio(rd, held.suffixes, suffix, term, args, out)
        seconds["gradient_ratio"] = time.perf_counter() - t

    if "degree-spectrum" in args.selected:
        from dataclasses import replace

        from equivrepro.analysis.degree_spectrum import degree_spectrum_analysis
        from equivrepro.analysis.subset import cast_batch

        t = time.perf_counter()
        held_cast = replace(  # the held-out set in the analysis dtype, like the other analyses' batches
            held,
            chunks={s: [cast_batch(b, dtype) for b in bs] for s, bs in held.chunks.items()},
            rotations=[r.to(dtype) for r in held.rotations],
        )
        ds = degree_spectrum_analysis(
            run,
            held_cast,
            l_max=args.spectrum_l_max,
            suffixes=None if suffix == "all" else [suffix],
            out=out / "degree_spectrum",
            chunk_size=run.config.equivariance.chunk_size,
            seed=args.seed_analysis,
        )
        summary["degree_spectrum"] = {k: v for k, v in ds.items() if k != "metrics"}
        seconds["degree_spectrum"] = time.perf_counter() - t

    for name in ("head_deviation", "gradient_ratio"):
        if name in summary and "skipped" in summary[name]:
            log.warning("%s: skipped — %s", name.replace("_", "-"), summary[name]["skipped"])
    seconds["total"] = time.perf_counter() - t_start
    summary["seconds"] = seconds
    summary["threads"] = torch.get_num_threads()
    summary = _clean(summary)
    atomic_write_json(out / "summary.json", summary)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
