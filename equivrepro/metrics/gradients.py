"""Gradient norms of the two parts of the loss: ‖∇θ L_equiv‖, ‖∇θ L_mean‖ and their ratio.

Both losses are the unbiased estimators of :mod:`equivrepro.metrics.decomposition`, averaged over the
batch, differentiated with respect to ``params`` (all trainable parameters by default). The model is
put in eval mode for the measurement (no dropout), then restored.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from equivrepro.metrics.decomposition import twirl_decomposition
from equivrepro.task import Batch, LossTerm, Task

__all__ = ["gradient_norms"]


def _norm(grads: Iterable[torch.Tensor | None]) -> float:
    sq = [g.detach().double().pow(2).sum() for g in grads if g is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def gradient_norms(
    model: nn.Module,
    task: Task,
    batch: Batch,
    rotations: torch.Tensor,
    *,
    term: LossTerm | None = None,
    params: list[torch.nn.Parameter] | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """``{'equiv_grad_norm', 'mean_grad_norm', 'grad_norm_ratio'}`` for ``term`` (default: the primary)."""
    term = term or task.primary_term
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        dec = twirl_decomposition(model, task, batch, rotations, chunk_size=chunk_size, terms=(term,), grad=True)[term.name]
        l_equiv = dec.equiv_unbiased.mean()
        l_mean = dec.mean_unbiased.mean()
        g_equiv = torch.autograd.grad(l_equiv, params, retain_graph=True, allow_unused=True)
        g_mean = torch.autograd.grad(l_mean, params, allow_unused=True)
    finally:
        model.train(was_training)
    ne, nm = _norm(g_equiv), _norm(g_mean)
    return {"equiv_grad_norm": ne, "mean_grad_norm": nm, "grad_norm_ratio": ne / nm if nm > 0 else float("nan")}
