"""Test-time twirling: held-out loss of f̄_K(x) = (1/K) Σ_k g_k⁻¹ f(g_k x) against K, and what it costs.

For a quadratic loss term and i.i.d. Haar g_k, E‖f̄_K(x) − y‖² = L_mean + L_equiv / K exactly (paper
§6.4): twirling removes a fraction 1 − 1/K of the equivariance error at K× the inference cost.
:func:`twirl_mse_table` measures the left side with :class:`~equivrepro.metrics.TwirledPredictor`
(fresh per-sample rotations, averaged over ``n_draws`` independent draws) and the right side from one
twirl decomposition with ``reference_k`` rotations, and compares them per sample (paired, so the
comparison's standard error excludes the between-sample spread). For non-quadratic terms the
prediction is only an approximation (reported, flagged ``quadratic = False``).

:func:`twirled_equivariance` measures pct of the twirled predictor itself: ≈ L_equiv / (K L_mean) for
Haar rotations, and 0 (to round-off) for a linear model twirled over a finite group whose 3-D
representation is irreducible (e.g. the icosahedral group; Schur's lemma).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from equivrepro.analysis.subset import as_batch_list, eval_mode, resolve_term
from equivrepro.metrics import TermDecomposition, TwirledPredictor, twirl_decomposition
from equivrepro.rotations import haar_rotations
from equivrepro.task import Batch, LossTerm, Task, batch_size

__all__ = ["twirl_mse_table", "twirled_equivariance", "draw_rotations"]
__test__ = False  # the module name starts with "test_"; it holds no tests

DEFAULT_KS = (1, 2, 4, 8, 16)


def _float_like(batch: Batch) -> torch.Tensor:
    for v in batch.values():
        if torch.is_tensor(v) and v.is_floating_point():
            return v
    return next(v for v in batch.values() if torch.is_tensor(v))


def draw_rotations(batch: Batch, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(B, k, 3, 3)`` i.i.d. Haar rotations on the batch's device, in its floating dtype."""
    ref = _float_like(batch)
    b = batch_size(batch)
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    return haar_rotations(b * k, generator=generator, dtype=dtype, device=ref.device).reshape(b, k, 3, 3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reference(model, task, batches, rotations, term, chunk_size) -> TermDecomposition:
    parts = []
    for batch, rot in zip(batches, rotations):
        parts.append(twirl_decomposition(model, task, batch, rot, chunk_size=chunk_size, terms=(term,))[term.name])
    return TermDecomposition.concat(parts)


def twirl_mse_table(
    model: nn.Module,
    task: Task,
    batches: Batch | Sequence[Batch] | Mapping[str, Batch],
    rotations: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    n_draws: int = 3,
    reference_k: int = 64,
    term: LossTerm | str | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    z: float = 1.96,
) -> pd.DataFrame:
    """Held-out loss of the K-rotation twirled model for each K, its cost, and the prediction.

    ``rotations``: the reference decomposition's rotations (``(K_ref,3,3)``, ``(B,K_ref,3,3)`` or one per
    batch); default ``reference_k`` fresh Haar rotations per sample from ``generator``, which also
    draws the twirling rotations.

    Columns: ``k, n_draws, n_samples, mse`` (mean over samples of the per-sample loss averaged over
    draws), ``mse_se`` (over samples), ``predicted`` (L_mean + L_equiv/K), ``diff = mse − predicted``,
    ``diff_se`` (paired), ``rel_deviation = diff / predicted``, ``within_ci`` (|diff| ≤ z·diff_se),
    ``time_per_sample_s`` (wall time of the twirled forward per held-out sample), ``relative_cost``
    (vs the smallest K; each K gets one untimed warm-up call first). ``df.attrs`` holds ``l_mean, l_equiv, l_total, pct,
    reference_k, term, quadratic``.
    """
    term = resolve_term(task, term)
    batches = as_batch_list(batches)
    if rotations is None:
        ref_rot = [draw_rotations(b, reference_k, generator) for b in batches]
    elif torch.is_tensor(rotations):
        ref_rot = [rotations.to(_float_like(b)) for b in batches]
    else:
        ref_rot = [r.to(_float_like(b)) for r, b in zip(rotations, batches)]
    ks = sorted({int(k) for k in ks})
    if ks[0] < 1:
        raise ValueError("K must be ≥ 1")
    with eval_mode(model), torch.no_grad():
        ref = _reference(model, task, batches, ref_rot, term, chunk_size)
        mean_i = ref.mean_unbiased.double()
        equiv_i = ref.equiv_unbiased.double()
        n = int(mean_i.numel())
        targets = [task.targets(b) for b in batches]
        device = _float_like(batches[0]).device
        rows = []
        for k in ks:
            # untimed warm-up per K: first calls at a new shape pay one-off costs (allocation, kernel choice)
            TwirledPredictor(model, task, draw_rotations(batches[0], k, generator), chunk_size=chunk_size)(batches[0])
            per_sample = torch.zeros(n, dtype=torch.float64)
            seconds = 0.0
            for _ in range(n_draws):
                losses = []
                for batch, target in zip(batches, targets):
                    rot = draw_rotations(batch, k, generator)
                    predictor = TwirledPredictor(model, task, rot, chunk_size=chunk_size)
                    _sync(device)
                    t0 = time.perf_counter()
                    pred = predictor(batch)
                    _sync(device)
                    seconds += time.perf_counter() - t0
                    losses.append(term.fn(pred, target, batch).detach().double().cpu())
                per_sample += torch.cat(losses)
            per_sample /= n_draws
            predicted_i = (mean_i + equiv_i / k).cpu()
            diff_i = per_sample - predicted_i
            se = lambda x: float(x.std(unbiased=True) / n**0.5) if n > 1 else float("nan")  # noqa: E731
            mse, pred, diff = float(per_sample.mean()), float(predicted_i.mean()), float(diff_i.mean())
            rows.append(
                {
                    "k": k,
                    "n_draws": n_draws,
                    "n_samples": n,
                    "mse": mse,
                    "mse_se": se(per_sample),
                    "predicted": pred,
                    "diff": diff,
                    "diff_se": se(diff_i),
                    "rel_deviation": diff / pred if pred != 0 else float("nan"),
                    "within_ci": bool(abs(diff) <= z * se(diff_i)) if n > 1 else False,
                    "time_per_sample_s": seconds / (n_draws * n),
                }
            )
    df = pd.DataFrame(rows)
    df["relative_cost"] = df["time_per_sample_s"] / df["time_per_sample_s"].iloc[0]
    s = ref.summary()
    df.attrs.update(
        {
            "l_mean": s["mean"],
            "l_equiv": s["equiv"],
            "l_total": s["total"],
            "pct": s["pct"],
            "reference_k": ref.k,
            "term": term.name,
            "quadratic": term.quadratic,
            "z": z,
        }
    )
    return df


def twirled_equivariance(
    model: nn.Module,
    task: Task,
    batches: Batch | Sequence[Batch] | Mapping[str, Batch],
    rotations: torch.Tensor | Sequence[torch.Tensor],
    twirl_rotations: torch.Tensor,
    *,
    term: LossTerm | str | None = None,
    chunk_size: int | None = None,
) -> dict:
    """Decomposition summaries (``total, mean, equiv, pct, …``) of the raw model and of its twirl.

    ``rotations`` are the evaluation rotations of the decomposition; ``twirl_rotations`` ``(K,3,3)``
    (shared, e.g. a finite group) or ``(B,K,3,3)`` define the twirled predictor (one batch only when
    per-sample). Returns ``{'model': summary, 'twirled': summary, 'k_twirl': K}`` pooled over the batches.
    """
    term = resolve_term(task, term)
    batches = as_batch_list(batches)
    rots = [rotations] * len(batches) if torch.is_tensor(rotations) else list(rotations)
    out = {}
    with eval_mode(model), torch.no_grad():
        twirled = TwirledPredictor(model, task, twirl_rotations.to(_float_like(batches[0])), chunk_size=chunk_size)
        for name, predictor in (("model", model), ("twirled", twirled)):
            parts = [
                twirl_decomposition(predictor, task, b, r.to(_float_like(b)), chunk_size=chunk_size, terms=(term,))[term.name]
                for b, r in zip(batches, rots)
            ]
            out[name] = TermDecomposition.concat(parts).summary()
    out["k_twirl"] = int(twirl_rotations.shape[-3])
    return out
