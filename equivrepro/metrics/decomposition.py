"""The twirl decomposition L_total = L_mean + L_equiv, estimated from K rotations per sample.

For a sample x with target y and rotations g_1..g_K, let z_k = g_k⁻¹·f(g_k·x) (the *untwisted*
prediction) and z̄ = mean_k z_k (the K-sample twirl). Per sample:

* ``total``         = mean_k ℓ(z_k, y)                                   (unbiased for L_total)
* ``mean_plugin``   = ℓ(z̄, y)                                            (biased up by L_equiv/K for MSE)
* ``equiv_plugin``  = mean_k ℓ(z_k, z̄)  for quadratic ℓ, else total − mean_plugin
* quadratic ℓ (weighted squared error): the order-2 U-statistics
  ``equiv_unbiased = K/(K−1)·equiv_plugin`` and ``mean_unbiased = total − equiv_unbiased``; both are
  exactly unbiased for any K ≥ 2.
* other convex ℓ (e.g. EScAIP's per-atom L2-MAE): ℓ(E z) has no unbiased estimator, so
  ``mean_unbiased`` is the jackknife ``K·ℓ(z̄, y) − (K−1)·mean_j ℓ(z̄_{−j}, y)`` (leave-one-out means),
  which removes the O(1/K) bias; ``equiv_unbiased = total − mean_unbiased``.
* when the rotations enumerate a finite group exactly (``exact_group=True``) the plug-in values *are*
  the group averages, and no correction is applied.

The headline ``pct = Σ_i equiv_unbiased_i / Σ_i total_i`` is a ratio of sample means; its standard error
comes from the delta method. Per-sample ``pct_i`` (which can be slightly negative for the unbiased
estimator) are summarised by quantiles because the distribution is heavy-tailed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from equivrepro.task import Batch, LossTerm, Prediction, Task, batch_size, repeat_batch, split_copies

Predictor = Callable[[Batch], Prediction]

__all__ = [
    "TermDecomposition",
    "untwisted_predictions",
    "decompose_term",
    "twirl_decomposition",
    "as_predictor",
    "per_sample_rotations",
    "ratio_bootstrap_interval",
]


def as_predictor(model_or_predict: nn.Module | Predictor, task: Task) -> Predictor:
    """A callable batch → prediction: an ``nn.Module`` goes through ``task.predict``."""
    if isinstance(model_or_predict, nn.Module):
        model = model_or_predict
        return lambda b: task.predict(model, b)
    return model_or_predict


def per_sample_rotations(rotations: torch.Tensor, b: int) -> torch.Tensor:
    """``(K, 3, 3)`` shared by all samples, or ``(B, K, 3, 3)`` per sample → ``(B, K, 3, 3)``."""
    if rotations.dim() == 3:
        return rotations.unsqueeze(0).expand(b, *rotations.shape)
    if rotations.dim() == 4 and rotations.shape[0] == b:
        return rotations
    raise ValueError(f"rotations must be (K,3,3) or (B={b},K,3,3); got {tuple(rotations.shape)}")


def untwisted_predictions(
    predictor: nn.Module | Predictor,
    task: Task,
    batch: Batch,
    rotations: torch.Tensor,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """z[key] of shape ``(B, K, ...)``: predictions on rotated copies, rotated back to the input frame.

    All K copies of the B samples go through the model as one batch of ``B·K`` rows; ``chunk_size``
    (rotations per forward pass) bounds memory, giving ``ceil(K / chunk_size)`` passes. There is no loop
    over samples.
    """
    predict = as_predictor(predictor, task)
    b = batch_size(batch)
    rot = per_sample_rotations(rotations, b)
    k = rot.shape[1]
    step = k if chunk_size is None else max(1, int(chunk_size))
    pieces: dict[str, list[torch.Tensor]] = {}
    for start in range(0, k, step):
        r = rot[:, start : start + step]
        c = r.shape[1]
        flat_r = r.reshape(b * c, 3, 3)
        rotated = task.rotate_batch(repeat_batch(batch, c), flat_r)
        pred = task.unrotate_prediction(predict(rotated), flat_r)
        for key, v in pred.items():
            pieces.setdefault(key, []).append(split_copies(v, b, c))
    return {key: torch.cat(v, dim=1) for key, v in pieces.items()}


def _flat(z: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: v.reshape((-1,) + tuple(v.shape[2:])) for key, v in z.items()}


def _loss_per_copy(term: LossTerm, z: Mapping[str, torch.Tensor], target: Prediction, batch: Batch) -> torch.Tensor:
    """ℓ(z_k, target) for every copy: ``(B, K)``."""
    b, k = next(iter(z.values())).shape[:2]
    vals = term.fn(_flat(z), repeat_batch(target, k), repeat_batch(batch, k))
    return vals.reshape(b, k)


@dataclass
class TermDecomposition:
    """Per-sample estimates (each ``(B,)``) for one loss term, and their summaries."""

    name: str
    k: int
    quadratic: bool
    exact_group: bool
    total: torch.Tensor
    mean_plugin: torch.Tensor
    equiv_plugin: torch.Tensor
    mean_unbiased: torch.Tensor
    equiv_unbiased: torch.Tensor
    extras: dict[str, float] = field(default_factory=dict)

    @classmethod
    def concat(cls, parts: list[TermDecomposition]) -> TermDecomposition:
        """Pool per-sample estimates of the same term computed on several chunks of a held-out set."""
        first = parts[0]
        cat = lambda attr: torch.cat([getattr(p, attr) for p in parts])  # noqa: E731
        return cls(
            name=first.name,
            k=first.k,
            quadratic=first.quadratic,
            exact_group=first.exact_group,
            total=cat("total"),
            mean_plugin=cat("mean_plugin"),
            equiv_plugin=cat("equiv_plugin"),
            mean_unbiased=cat("mean_unbiased"),
            equiv_unbiased=cat("equiv_unbiased"),
        )

    @property
    def estimator(self) -> str:
        if self.exact_group:
            return "exact-group"
        return "u-statistic" if self.quadratic else "jackknife"

    @property
    def pct(self) -> torch.Tensor:
        """Headline ratio Σ equiv_unbiased / Σ total (a 0-dim tensor, differentiable)."""
        return self.equiv_unbiased.sum() / self.total.sum()

    def summary(self, bootstrap: int = 0, generator: torch.Generator | None = None, level: float = 0.95) -> dict[str, float]:
        """Batch-averaged values with standard errors over samples, per-sample pct quantiles and, with
        ``bootstrap`` resamples, a percentile bootstrap interval ``pct_ci_lo``/``pct_ci_hi`` of the ratio.

        Also ``n`` (samples) and ``equiv_max_share`` (the largest single sample's share of Σ L_equiv): the
        delta-method SE and the bootstrap interval of a ratio estimator are not to be trusted when n is small
        (≲ 20) or one sample carries a large share (≳ 0.25) — heavy tails make the interval too narrow.
        """
        n = self.total.numel()
        t = self.total.detach().double()
        e = self.equiv_unbiased.detach().double()
        m = self.mean_unbiased.detach().double()

        def se(x: torch.Tensor) -> float:
            return float(x.std(unbiased=True) / n**0.5) if n > 1 else float("nan")

        tbar = t.mean()
        pct = float(e.mean() / tbar) if tbar > 0 else float("nan")
        # delta method for a ratio of means
        pct_se = se(e - pct * t) / float(tbar) if tbar > 0 else float("nan")
        per_sample = e / t.clamp_min(torch.finfo(t.dtype).tiny)
        out = {
            "total": float(tbar),
            "mean": float(m.mean()),
            "equiv": float(e.mean()),
            "mean_plugin": float(self.mean_plugin.detach().double().mean()),
            "equiv_plugin": float(self.equiv_plugin.detach().double().mean()),
            "pct": pct,
            "pct_plugin": float(self.equiv_plugin.detach().double().mean() / tbar) if tbar > 0 else float("nan"),
            "total_se": se(t),
            "mean_se": se(m),
            "equiv_se": se(e),
            "pct_se": pct_se,
            "pct_q50": float(per_sample.quantile(0.5)),
            "pct_q90": float(per_sample.quantile(0.9)),
            "pct_max": float(per_sample.max()),
            "n": float(n),
            "equiv_max_share": float(e.clamp_min(0).max() / e.clamp_min(0).sum()) if float(e.clamp_min(0).sum()) > 0 else float("nan"),
        }
        if bootstrap and n > 1:
            lo, hi = ratio_bootstrap_interval(e, t, bootstrap, generator, level)
            out["pct_ci_lo"], out["pct_ci_hi"] = lo, hi
        out.update(self.extras)
        return out


def ratio_bootstrap_interval(
    num: torch.Tensor, den: torch.Tensor, resamples: int = 1000, generator: torch.Generator | None = None, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of Σ num / Σ den over samples (resampling samples with replacement)."""
    num, den = num.detach().double().cpu(), den.detach().double().cpu()
    n = num.numel()
    idx = torch.randint(0, n, (int(resamples), n), generator=generator)
    ratios = num[idx].sum(1) / den[idx].sum(1)
    a = (1.0 - float(level)) / 2
    q = torch.quantile(ratios[torch.isfinite(ratios)], torch.tensor([a, 1.0 - a], dtype=torch.float64))
    return float(q[0]), float(q[1])


def decompose_term(
    term: LossTerm,
    z: Mapping[str, torch.Tensor],
    target: Prediction,
    batch: Batch,
    exact_group: bool = False,
) -> TermDecomposition:
    """Decomposition of one loss term from untwisted predictions ``z[key] (B, K, ...)``."""
    k = next(iter(z.values())).shape[1]
    if k < 2:
        raise ValueError("the twirl decomposition needs at least K = 2 rotations per sample")
    zbar = {key: v.mean(dim=1) for key, v in z.items()}
    per_copy = _loss_per_copy(term, z, target, batch)  # (B, K)
    total = per_copy.mean(dim=1)
    mean_plugin = term.fn(zbar, target, batch)
    if term.quadratic:
        # mean_k ℓ(z_k, z̄): the within-orbit spread measured with the loss's own weights
        equiv_plugin = _loss_per_copy(term, z, zbar, batch).mean(dim=1)
    else:
        equiv_plugin = total - mean_plugin
    if exact_group:
        mean_unb, equiv_unb = mean_plugin, equiv_plugin
    elif term.quadratic:
        equiv_unb = equiv_plugin * (k / (k - 1))
        mean_unb = total - equiv_unb
    else:
        # jackknife over rotations: leave-one-out means z̄_{-j} = (K z̄ - z_j)/(K - 1)
        loo = {key: (k * zbar[key].unsqueeze(1) - v) / (k - 1) for key, v in z.items()}
        loo_loss = _loss_per_copy(term, loo, target, batch).mean(dim=1)
        mean_unb = k * mean_plugin - (k - 1) * loo_loss
        equiv_unb = total - mean_unb
    return TermDecomposition(
        name=term.name,
        k=k,
        quadratic=term.quadratic,
        exact_group=exact_group,
        total=total,
        mean_plugin=mean_plugin,
        equiv_plugin=equiv_plugin,
        mean_unbiased=mean_unb,
        equiv_unbiased=equiv_unb,
    )


def twirl_decomposition(
    predictor: nn.Module | Predictor,
    task: Task,
    batch: Batch,
    rotations: torch.Tensor,
    *,
    chunk_size: int | None = None,
    exact_group: bool = False,
    terms: tuple[LossTerm, ...] | None = None,
    grad: bool = False,
) -> dict[str, TermDecomposition]:
    """Decompose every loss term of ``task`` on ``batch`` with ``rotations`` ``(K,3,3)`` or ``(B,K,3,3)``.

    ``predictor`` is a model (run through ``task.predict``) or any callable batch → prediction (e.g. a
    :class:`~equivrepro.metrics.twirl.TwirledPredictor` or the oracle ``task.targets``). Set
    ``exact_group=True`` when ``rotations`` enumerate a finite group (every sample sees all of it).
    With ``grad=False`` (default) nothing is recorded for autograd.
    """
    ctx = nullcontext() if grad else torch.no_grad()
    with ctx:
        z = untwisted_predictions(predictor, task, batch, rotations, chunk_size=chunk_size)
        target = task.targets(batch)
        return {t.name: decompose_term(t, z, target, batch, exact_group=exact_group) for t in (terms or task.terms)}
