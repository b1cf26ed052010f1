"""Gradient norms of the two parts of the loss: ‖∇θ L_equiv‖, ‖∇θ L_mean‖ and their ratio.

Both losses are the unbiased estimators of :mod:`equivrepro.metrics.decomposition`, averaged over the held-out
samples — one batch, or several chunks pooled with sample weights — and differentiated with respect to ``params``
(every floating parameter by default, including those of an EMA copy that does not require grad: they are switched
on for the measurement and restored). The model is put in eval mode (no dropout), then restored. One forward pass
with autograd per chunk and two backward passes; ``on_predictions`` receives each chunk's detached untwisted
predictions, so a metric can reuse the forward pass instead of running its own (the training callback does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from equivrepro.metrics.decomposition import decompose_term, untwisted_predictions
from equivrepro.task import Batch, LossTerm, Task

__all__ = ["gradient_norms", "trainable"]


@contextmanager
def trainable(params: Iterable[nn.Parameter]) -> Iterator[list[nn.Parameter]]:
    """Every given floating parameter requires grad within the block, restored after."""
    params = [p for p in params if p.is_floating_point()]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield params
    finally:
        for p, r in zip(params, before):
            p.requires_grad_(r)


def _norm(grads: Iterable[torch.Tensor | None]) -> float:
    sq = [g.detach().double().pow(2).sum() for g in grads if g is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def _add(acc: list[torch.Tensor | None] | None, new: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    if acc is None:
        return list(new)
    return [a if b is None else (b if a is None else a + b) for a, b in zip(acc, new)]


def gradient_norms(
    model: nn.Module,
    task: Task,
    batch: Batch | Sequence[Batch],
    rotations: torch.Tensor | Sequence[torch.Tensor],
    *,
    term: LossTerm | None = None,
    params: list[torch.nn.Parameter] | None = None,
    chunk_size: int | None = None,
    on_predictions: Callable[[dict[str, torch.Tensor], Batch, torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """``{'equiv_grad_norm', 'mean_grad_norm', 'grad_norm_ratio', 'pct'}`` for ``term`` (default: the primary) on one
    batch with ``rotations`` ``(B, K, 3, 3)``/``(K, 3, 3)``, or on chunks (lists of both). ``pct`` is the pooled pct of
    exactly these samples and weights."""
    term = term or task.primary_term
    batches = [batch] if isinstance(batch, dict) else list(batch)
    rots = [rotations] if torch.is_tensor(rotations) else list(rotations)
    sizes = [int(next(iter(task.targets(b).values())).shape[0]) for b in batches]
    n = sum(sizes)
    g_equiv = g_mean = None
    equiv = total = 0.0
    was_training = model.training
    model.eval()
    try:
        with trainable(params if params is not None else model.parameters()) as ps:
            for b, r, size in zip(batches, rots, sizes):
                z = untwisted_predictions(model, task, b, r, chunk_size=chunk_size)
                dec = decompose_term(term, z, task.targets(b), b)
                w = size / n
                g_equiv = _add(g_equiv, torch.autograd.grad(dec.equiv_unbiased.mean() * w, ps, retain_graph=True, allow_unused=True))
                g_mean = _add(g_mean, torch.autograd.grad(dec.mean_unbiased.mean() * w, ps, allow_unused=True))
                equiv += float(dec.equiv_unbiased.detach().sum())
                total += float(dec.total.detach().sum())
                if on_predictions is not None:
                    on_predictions({k: v.detach() for k, v in z.items()}, b, r)
    finally:
        model.train(was_training)
    ne, nm = _norm(g_equiv or []), _norm(g_mean or [])
    return {
        "equiv_grad_norm": ne,
        "mean_grad_norm": nm,
        "grad_norm_ratio": ne / nm if nm > 0 else float("nan"),
        "pct": equiv / total if total > 0 else float("nan"),
    }
