r"""The degree spectrum of one checkpoint: where its equivariance error lives, with as many rotations as asked for.

    python -m equivrepro.analysis.degree_spectrum --run-dir runs/smoke/forcefield_smoke-bd51a5b99c --k 50 --out /tmp/spec

:func:`degree_spectrum_analysis` takes a restored run (:func:`equivrepro.train.restore.load_run`) and a frozen held-out
set (:func:`equivrepro.analysis.heldout.freeze_heldout`; a larger ``k`` — e.g. 50 — resolves the high degrees the
training-time K = 4 or 10 cannot) and computes, per evaluation suffix, from one set of K untwisted copies per sample:

* the twirl decomposition of every term (``pct``, ``equiv``, ``total``);
* the degree spectrum of every quadratic term up to ``l_max`` (:func:`equivrepro.metrics.spectral.degree_spectra`):
  E_l with standard errors, E_l / L_equiv, the remainder above l_max and the Lie-derivative sum;
* the per-entity attribution of the task (:meth:`equivrepro.task.Task.attribution`): the share of L_equiv per bin;
* for the primary term, the error against rotation angle, measured (``angle_rotations`` extra Haar rotations per
  sample and angle) and predicted from the spectrum.

It returns a JSON-ready dict and, with ``out``, writes ``degree_spectrum.json`` and the end-of-training figures of
:mod:`equivrepro.plots.spectrum` for this checkpoint (``spectrum``, ``angle``, ``attribution``; PNG + PDF + CSV),
drawn from the same metric keys the training-time callback logs, so a checkpoint and a run's last evaluation are
read the same way. With the run's own held-out set (its ``equivariance.{num_samples,k,batch_size,seed}``) and the
EMA weights, the numbers equal the ``spectrum/…`` values the run logged at that step.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from equivrepro.analysis.heldout import HeldOutSet
from equivrepro.metrics import keys
from equivrepro.metrics.metric import EquivarianceMetric

__all__ = ["degree_spectrum_analysis", "DEFAULT_ANGLES", "FIGURES", "main"]

#: Angles (degrees) of the angle curve.
DEFAULT_ANGLES = (15.0, 30.0, 60.0, 90.0, 120.0, 180.0)
#: The figures written for one checkpoint: file stem → drawing function of :mod:`equivrepro.plots.spectrum`.
FIGURES = {"spectrum": "final_spectrum", "angle": "angle_curve", "attribution": "attribution"}


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _spectrum_numbers(spec) -> dict[str, Any]:
    """JSON-ready numbers of one :class:`~equivrepro.metrics.spectral.DegreeSpectrum`."""
    mean, se, share, share_se = spec.mean, spec.se, spec.equiv_share, spec.equiv_share_se
    return {
        "k": spec.k,
        "l_max": spec.l_max,
        "n_samples": spec.n_samples,
        "centring": spec.centring,
        "equiv": _finite(spec.equiv.mean()),
        "total": _finite(spec.total.mean()),
        "degrees": {
            str(d): {
                "E": _finite(mean[d]),
                "se": _finite(se[d]),
                "share_of_equiv": _finite(share[d]),
                "share_of_equiv_se": _finite(share_se[d]),
            }
            for d in range(1, spec.l_max + 1)
        },
        "twirl_sq_norm": _finite(mean[0]),
        "remainder": _finite(spec.remainder.mean()),
        "remainder_share_of_equiv": _finite(spec.remainder.mean() / spec.equiv.mean()) if spec.equiv.mean() > 0 else None,
        "lie": _finite(spec.lie.mean()),
    }


def _angle_numbers(degrees: Sequence[float], measured, predicted) -> dict[str, Any]:
    return {
        "degrees": [float(a) for a in degrees],
        "measured": [_finite(v) for v in measured.mean],
        "measured_se": [_finite(v) for v in measured.se],
        "predicted": [_finite(v) for v in predicted.mean],
        "predicted_se": [_finite(v) for v in predicted.se],
        "predicted_upper": [_finite(v) for v in predicted.upper],
    }


def _angle_metrics(term: str, suffix: str, degrees: Sequence[float], measured, predicted) -> dict[str, float]:
    out = {}
    for i, a in enumerate(degrees):
        out[keys.angle_key(term, "measured", a, suffix)] = float(measured.mean[i])
        out[keys.angle_key(term, "measured", a, suffix, "se")] = float(measured.se[i])
        out[keys.angle_key(term, "predicted", a, suffix)] = float(predicted.mean[i])
        out[keys.angle_key(term, "predicted", a, suffix, "se")] = float(predicted.se[i])
        out[keys.angle_key(term, "predicted", a, suffix, "upper")] = float(predicted.upper[i])
    return out


def _attribution_numbers(binned) -> dict[str, Any]:
    out: dict[str, Any] = {"entity": binned.entity, "descriptors": {}}
    for d, lab, stat, v in binned.summary().values():
        out["descriptors"].setdefault(d, {}).setdefault(lab, {})[stat or "share"] = _finite(v)
    return out


def degree_spectrum_analysis(
    run,
    heldout: HeldOutSet,
    *,
    l_max: int = 8,
    angle_degrees: Sequence[float] = DEFAULT_ANGLES,
    angle_rotations: int = 4,
    suffixes: Sequence[str] | None = None,
    out: str | Path | None = None,
    chunk_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Spectrum, angle curve and attribution of ``run.model`` (a :class:`~equivrepro.train.restore.RestoredRun`) on
    ``heldout`` (module docstring). ``suffixes``: evaluation suffixes to analyse (default all); ``angle_rotations``:
    Haar rotations per sample of the measured angle curve (0: no angle curve); ``seed``: of its rotations;
    ``chunk_size``: rotations per forward pass. The model is evaluated in its own dtype on the held-out batches'
    device. Returns ``{'step', 'k', 'num_samples', 'l_max', 'removed_degrees', 'suffixes': {suffix: {'terms': {term:
    {'pct', 'equiv', 'total', 'spectrum', 'attribution', 'angle'}}}}, 'metrics': {logged key: value (None if not
    finite)}, 'seconds', 'figures', 'figures_skipped'}``; every number a float or None (JSON-ready)."""
    from equivrepro.metrics.spectral import AngleCurve, angle_curve_measured, angle_curve_predicted, removed_degrees
    from equivrepro.rotations import icosahedral_group, octahedral_group

    task, model = run.task, run.model
    chosen = list(heldout.suffixes if suffixes is None else suffixes)
    if heldout.k < 3:
        raise ValueError(f"the degree spectrum needs K ≥ 3 rotations per sample for a useful estimate; the held-out set has k={heldout.k}")
    omegas = torch.tensor([float(a) for a in angle_degrees], dtype=torch.float64) * (math.pi / 180)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {
        "step": int(run.step),
        "k": int(heldout.k),
        "num_samples": int(heldout.num_samples),
        "seed": int(heldout.seed),
        "l_max": int(l_max),
        "removed_degrees": {
            "cube": list(removed_degrees(octahedral_group(), l_max)),
            "icosahedral": list(removed_degrees(icosahedral_group(), l_max)),
        },
        "suffixes": {},
    }
    logged: dict[str, float] = {}
    try:
        for suffix in chosen:
            batches, rotations = heldout.select(suffix)
            metric = EquivarianceMetric(
                task,
                k=heldout.k,
                suffix=suffix,
                chunk_size=chunk_size,
                spectrum_l_max=int(l_max),
                bootstrap=0,
                sync=False,
                attribution=True,
            )
            with torch.no_grad():
                for batch, rot in zip(batches, rotations):
                    metric.update(model, batch, rot)
            metrics = metric.compute()
            spectra, binned, decs = metric.spectra(), metric.attributions(), metric.results()
            terms: dict[str, Any] = {}
            for term in task.terms:
                d = decs[term.name]
                entry: dict[str, Any] = {
                    "quadratic": term.quadratic,
                    "pct": _finite(metrics[keys.key(keys.EQUIV, term.name, "pct", suffix)]),
                    "equiv": _finite(metrics[keys.key(keys.EQUIV, term.name, "equiv", suffix)]),
                    "total": _finite(d.total.double().mean()),
                }
                if term.name in spectra:
                    entry["spectrum"] = _spectrum_numbers(spectra[term.name])
                if term.name in binned:
                    entry["attribution"] = _attribution_numbers(binned[term.name])
                terms[term.name] = entry
            primary = task.primary_term
            if angle_rotations > 0 and primary.name in spectra and len(omegas):
                gen = torch.Generator().manual_seed(int(seed))
                with torch.no_grad():
                    parts = [
                        angle_curve_measured(model, task, b, omegas, int(angle_rotations), gen, primary, chunk_size=chunk_size)
                        for b in batches
                    ]
                measured = AngleCurve(omegas, torch.cat([p.per_sample for p in parts]))
                predicted = angle_curve_predicted(spectra[primary.name], omegas)
                terms[primary.name]["angle"] = _angle_numbers(angle_degrees, measured, predicted)
                metrics.update(_angle_metrics(primary.name, suffix, angle_degrees, measured, predicted))
            result["suffixes"][suffix] = {"terms": terms}
            logged.update(
                {
                    k: v
                    for k, v in metrics.items()
                    if keys.parse(k) is not None and keys.parse(k).family in (keys.EQUIV, keys.SPECTRUM, keys.ANGLE, keys.ATTRIBUTION)
                }
            )
    finally:
        model.train(was_training)
    result["seconds"] = time.perf_counter() - t0
    result["metrics"] = {k: _finite(v) for k, v in logged.items()}
    result["figures"], result["figures_skipped"] = [], {}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result["figures"], result["figures_skipped"] = _draw(run, logged, out)
        from equivrepro.atomic import atomic_write_text

        atomic_write_text(out / "degree_spectrum.json", json.dumps(result, indent=1, allow_nan=False))
    return result


def _draw(run, metrics: dict[str, float], out: Path) -> tuple[list[str], dict[str, str]]:
    """The end-of-training figures of :mod:`equivrepro.plots.spectrum` from a one-step table of this checkpoint."""
    import pandas as pd
    from omegaconf import OmegaConf

    from equivrepro.plots import spectrum as plots
    from equivrepro.results import TABLE_COLUMNS, run_columns

    config = OmegaConf.to_container(run.config, resolve=False)
    cols = run_columns(config, {"state": "checkpoint", "step": int(run.step)}, run.run_dir)
    rows = [{**cols, "step": int(run.step), "metric": m, "value": float(v)} for m, v in metrics.items()]
    table = pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)
    drawn, skipped = [], {}
    for stem, fn in FIGURES.items():
        try:
            getattr(plots, fn)(table, out / stem)
            drawn.append(str(out / stem))
        except ValueError as exc:  # e.g. a task without per-entity descriptors has no attribution figure
            skipped[stem] = str(exc)
    return drawn, skipped


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m equivrepro.analysis.degree_spectrum", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, type=Path, help="the run directory")
    p.add_argument("--out", required=True, type=Path, help="where degree_spectrum.json and the figures go")
    p.add_argument("--step", type=int, default=None, help="a snapshot step (trainer.snapshot_steps); default: the last checkpoint")
    p.add_argument(
        "--k", type=int, default=None, help="Haar rotations per sample (default: the run's equivariance.k; 50 resolves l ≤ 8 well)"
    )
    p.add_argument("--num-samples", type=int, default=None, help="held-out samples (default: the run's equivariance.num_samples)")
    p.add_argument("--batch-size", type=int, default=None, help="held-out samples per forward pass (default: the run's)")
    p.add_argument("--seed", type=int, default=None, help="seed of the held-out set (default: the run's equivariance.seed)")
    p.add_argument("--l-max", type=int, default=None, help="largest degree (default: the run's equivariance.spectrum_l_max, else 8)")
    p.add_argument("--angle-rotations", type=int, default=4, help="Haar rotations per sample of the measured angle curve (0: none)")
    p.add_argument("--eval-suffix", action="append", default=None, help="evaluation suffix to analyse (repeatable; default: all)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema")
    p.add_argument("--chunk-size", type=int, default=None, help="rotations per forward pass")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="model and batch dtype")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from equivrepro.analysis.heldout import freeze_heldout
    from equivrepro.analysis.subset import cast_batch
    from equivrepro.train.restore import load_run

    if not args.run_dir.is_dir():
        raise SystemExit(f"--run-dir {args.run_dir}: no such run directory")
    dtype = getattr(torch, args.dtype)
    run = load_run(args.run_dir, weights=args.weights, device=args.device, checkpoint=args.step)
    run.model.to(dtype)
    ecfg = run.config.equivariance
    pick = lambda v, name: int(v if v is not None else ecfg[name])  # noqa: E731
    l_max = args.l_max if args.l_max is not None else int(ecfg.get("spectrum_l_max") or 8)
    held = freeze_heldout(
        run.task,
        run.datamodule.heldout_dataset,
        run.datamodule.collate,
        pick(args.num_samples, "num_samples"),
        pick(args.k, "k"),
        pick(args.batch_size, "batch_size"),
        pick(args.seed, "seed"),
        device=args.device,
        dtype=dtype,
    )
    held.chunks = {s: [cast_batch(b, dtype) for b in bs] for s, bs in held.chunks.items()}
    if args.eval_suffix:
        bad = [s for s in args.eval_suffix if s not in held.suffixes]
        if bad:
            raise SystemExit(f"--eval-suffix {bad}: not among this task's evaluation batches {held.suffixes}")
    res = degree_spectrum_analysis(
        run, held, l_max=l_max, angle_rotations=args.angle_rotations, suffixes=args.eval_suffix, out=args.out, chunk_size=args.chunk_size
    )
    for suffix, entry in res["suffixes"].items():
        for term, t in entry["terms"].items():
            if "spectrum" not in t:
                continue
            if t["pct"] is not None and abs(t["pct"]) < 1e-9:  # exactly equivariant to round-off: its shares are noise
                print(f"[spectrum] step {res['step']} {suffix or '-'} {term}: pct {100 * t['pct']:.3g}% (equivariant to round-off)")
                continue
            shares = ", ".join(
                f"l={d}: {100 * v['share_of_equiv']:.1f}%" for d, v in t["spectrum"]["degrees"].items() if v["share_of_equiv"] is not None
            )
            rem = t["spectrum"]["remainder_share_of_equiv"]
            print(
                f"[spectrum] step {res['step']} {suffix or '-'} {term}: pct {100 * (t['pct'] or 0):.3g}% | {shares}"
                + (f" | >l_max: {100 * rem:.1f}%" if rem is not None else "")
            )
    for stem, why in res["figures_skipped"].items():
        print(f"[spectrum] figure {stem} skipped: {why}", file=sys.stderr)
    print(f"[spectrum] wrote {args.out / 'degree_spectrum.json'} ({res['seconds']:.1f} s, K = {res['k']}, {res['num_samples']} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
