"""The weights of a quadratic loss term, read off the term itself.

A :class:`~equivrepro.task.LossTerm` with ``quadratic=True`` promises
``fn(pred, target, batch)_b = Σ_j w_j(batch) (pred_j − target_j)²`` with ``w ≥ 0``. Estimators that need
the inner product ``⟨a, b⟩_W = Σ_j w_j a_j b_j`` itself — the degree spectrum, per-atom maps, weighted
least squares for baselines — get ``w`` here from one Hessian-vector product at ``pred = target``
(the Hessian of ``Σ_b fn`` in ``pred`` is ``diag(2w)``), and the promise is checked on a random
perturbation, so a term that is not a diagonal weighted squared error fails loudly instead of giving
wrong numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from equivrepro.task import Batch, LossTerm, Prediction

__all__ = ["quadratic_weights", "weighted_inner", "NotQuadraticError"]


class NotQuadraticError(ValueError):
    """The term is not (or does not behave as) a diagonal weighted squared error."""


def quadratic_weights(
    term: LossTerm, target: Prediction, batch: Batch, *, check: bool = True, rtol: float = 1e-4
) -> dict[str, torch.Tensor]:
    """``w[key]``, shaped like ``target[key]``, such that ``term.fn(pred, target, batch)`` is ``Σ_j w_j (pred_j − target_j)²``
    summed per sample. Keys the term ignores get zero weights. Computed in the target's dtype (use float64
    for the tightest check)."""
    if not term.quadratic:
        raise NotQuadraticError(f"loss term {term.name!r} is not quadratic: it has no weights (it is not decomposable by degree)")
    keys = [k for k, v in target.items() if torch.is_tensor(v) and v.is_floating_point()]
    with torch.enable_grad():
        pred = {k: target[k].detach().clone().requires_grad_(True) for k in keys}
        loss = term.fn(pred, {k: target[k].detach() for k in keys}, batch).sum()
        grads = torch.autograd.grad(loss, [pred[k] for k in keys], create_graph=True, allow_unused=True)
        used = [(k, g) for k, g in zip(keys, grads) if g is not None]
        if not used:
            raise NotQuadraticError(f"loss term {term.name!r} does not depend on any prediction key ({keys})")
        hv = torch.autograd.grad(sum(g.sum() for _, g in used), [pred[k] for k, _ in used], allow_unused=True)
    w = {k: torch.zeros_like(target[k]) for k in keys}
    for (k, _), h in zip(used, hv):
        if h is not None:
            w[k] = (0.5 * h).detach()
    if check:
        gen = torch.Generator(device="cpu").manual_seed(0)
        delta = {k: torch.randn(target[k].shape, generator=gen, dtype=target[k].dtype).to(target[k].device) for k in keys}
        with torch.no_grad():
            direct = term.fn({k: target[k] + delta[k] for k in keys}, target, batch)
            b = direct.shape[0]
            implied = sum((w[k] * delta[k] ** 2).reshape(b, -1).sum(1) for k in keys)
        scale = direct.abs().max().clamp_min(torch.finfo(direct.dtype).tiny)
        if (direct - implied).abs().max() > rtol * scale + 1e-12:
            raise NotQuadraticError(
                f"loss term {term.name!r} is marked quadratic but is not a diagonal weighted squared error "
                f"(max deviation {float((direct - implied).abs().max()):.3g} of {float(scale):.3g})"
            )
        if any((v < -1e-12 * float(scale)).any() for v in w.values()):
            raise NotQuadraticError(f"loss term {term.name!r} has negative weights: not a convex squared error")
    return w


def weighted_inner(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], w: Mapping[str, torch.Tensor], sample_dims: int = 1
) -> torch.Tensor:
    """``Σ_j w_j a_j b_j`` over every non-sample axis of every key: shape ``a[key].shape[:sample_dims]``.

    ``w[key]`` broadcasts against ``a[key]`` (e.g. ``(B, 1, N, 3)`` against ``(B, K, N, 3)``)."""
    out = None
    for k, wk in w.items():
        if k not in a:
            continue
        prod = a[k] * b[k] * wk
        s = prod.reshape(prod.shape[:sample_dims] + (-1,)).sum(-1)
        out = s if out is None else out + s
    if out is None:
        raise ValueError("no common keys between the tensors and the weights")
    return out
