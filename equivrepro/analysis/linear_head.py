"""Linear-head decomposition θ = θ_∥ + θ_⊥ and the quadratic law L_equiv(θ_∥ + α θ_⊥) = α² L_equiv(θ) (paper §6.3).

Setting. A linear output head ``nn.Linear(d → m)``, ``u = W φ + b`` (W ``(m, d)``, b ``(m,)``), on
rotation-invariant features φ, whose output is turned into the prediction linearly in u. The set of
(W, b) giving an equivariant model is a linear subspace; with P the orthogonal projector onto it,
acting on the output index (``W_∥ = P W``, ``b_∥ = P b``), the deviation is ``W_⊥ = (I − P) W``,
``b_⊥ = (I − P) b``. Because the untwisted predictions are affine in (W, b) and the θ_∥ part is the
same for every rotation, L_equiv (a weighted squared spread of those predictions) is an exact quadratic
form in θ_⊥: scaling θ_⊥ by α scales L_equiv by α² (and the U-statistic estimator inherits this
exactly for fixed inputs and rotations).

Projectors (``projector`` argument):

* ``None`` (default) — **equal rows**: the EScAIP direct-force head
  ``F_i = Σ_j (W φ_ij + b) ⊙ r̂_ij`` is equivariant iff the three rows of W are equal and b₁ = b₂ = b₃,
  i.e. ``u ∝ (1, 1, 1)``. P = 11ᵀ/m, so W_∥ is the row mean broadcast to every row and W_⊥ the row
  deviations (:func:`equal_rows_projector`).
* a ``(m, m)`` tensor — any orthogonal projector on the output index, e.g. **zeros** for a head
  ``Linear(d → 3)`` that maps invariant features directly to a Cartesian vector: no nonzero such map is
  equivariant, the equivariant subspace is {0} and the deviation is all of (W, b)
  (:func:`vector_output_projector`).
* a callable ``(W, b) -> (W_∥, b_∥)`` — any other linear projection (checked to be idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from equivrepro.analysis.subset import SubsetLosses
from equivrepro.task import Batch, LossTerm, Task

__all__ = [
    "HeadParams",
    "equal_rows_projector",
    "vector_output_projector",
    "get_linear_head",
    "split_head",
    "deviation_norm",
    "scaled_deviation",
    "fit_loglog_slope",
    "DeviationScaling",
    "deviation_scaling",
]

Projector = torch.Tensor | Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]] | None


@dataclass
class HeadParams:
    """Weight ``(m, d)`` and bias ``(m,)`` (or None) of one part of a linear head."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def flat(self) -> torch.Tensor:
        parts = [self.weight.reshape(-1)] + ([self.bias.reshape(-1)] if self.bias is not None else [])
        return torch.cat(parts)

    def norm(self) -> float:
        return float(self.flat().double().norm())


def equal_rows_projector(m: int = 3, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """P = 11ᵀ/m: projects each column of W onto equal entries (all rows replaced by the row mean)."""
    return torch.full((m, m), 1.0 / m, dtype=dtype, device=device)


def vector_output_projector(m: int = 3, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """P = 0: a ``Linear(d → 3)`` from invariant features to a vector is equivariant only when zero."""
    return torch.zeros(m, m, dtype=dtype, device=device)


def get_linear_head(model: nn.Module, head_name: str) -> nn.Linear:
    """``model.get_submodule(head_name)``, checked to be an ``nn.Linear``."""
    try:
        head = model.get_submodule(head_name)
    except AttributeError as exc:
        raise KeyError(f"model {type(model).__name__} has no submodule {head_name!r}") from exc
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{head_name!r} is a {type(head).__name__}, not an nn.Linear")
    return head


def _project(weight: torch.Tensor, bias: torch.Tensor | None, projector: Projector) -> HeadParams:
    if callable(projector) and not torch.is_tensor(projector):
        w_par, b_par = projector(weight, bias)
        # idempotence check: a projector applied twice changes nothing
        w2, b2 = projector(w_par, b_par)
        scale = max(float(weight.abs().max()), 1e-300)
        if float((w2 - w_par).abs().max()) > 1e-6 * scale or (b_par is not None and float((b2 - b_par).abs().max()) > 1e-6 * scale):
            raise ValueError("projector is not idempotent (P(P θ) ≠ P θ)")
        return HeadParams(w_par, b_par)
    m = weight.shape[0]
    p = equal_rows_projector(m) if projector is None else projector
    p = p.to(dtype=weight.dtype, device=weight.device)
    if p.shape != (m, m):
        raise ValueError(f"projector must be ({m}, {m}) for a head with {m} outputs, got {tuple(p.shape)}")
    tol = 1e-6
    if float((p @ p - p).abs().max()) > tol or float((p - p.T).abs().max()) > tol:
        raise ValueError("projector must be symmetric and idempotent (an orthogonal projector)")
    return HeadParams(p @ weight, p @ bias if bias is not None else None)


def split_head(linear: nn.Linear, projector: Projector = None) -> tuple[HeadParams, HeadParams]:
    """``(θ_∥, θ_⊥)`` of a linear head, detached copies; ``θ_∥ + θ_⊥`` equals the head's (W, b)."""
    w = linear.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else None
    par = _project(w, b, projector)
    dev = HeadParams(w - par.weight, (b - par.bias) if b is not None else None)
    return par, dev


def deviation_norm(linear: nn.Linear, projector: Projector = None) -> dict[str, float]:
    """Size of the deviation from the equivariant subspace.

    ``weight_deviation`` = ‖W_⊥‖_F, ``bias_deviation`` = ‖b_⊥‖, ``deviation`` = ‖(W_⊥, b_⊥)‖,
    ``relative_weight_deviation`` = ‖W_⊥‖_F / ‖W‖_F, ``relative_deviation`` = ‖θ_⊥‖ / ‖θ‖, and
    ``row_variance`` = mean over input features of the unbiased variance of W's column across its rows
    (one plausible reading of the paper's unpublished ``force_head_weight_variance``; equals
    ‖W_⊥‖²_F / ((m−1) d) for the equal-rows projector).
    """
    par, dev = split_head(linear, projector)
    w = linear.weight.detach().double()
    full = HeadParams(linear.weight.detach(), linear.bias.detach() if linear.bias is not None else None)
    wd = float(dev.weight.double().norm())
    bd = float(dev.bias.double().norm()) if dev.bias is not None else 0.0
    wn, tn = float(w.norm()), full.norm()
    return {
        "weight_deviation": wd,
        "bias_deviation": bd,
        "deviation": dev.norm(),
        "weight_norm": wn,
        "relative_weight_deviation": wd / wn if wn > 0 else float("nan"),
        "relative_deviation": dev.norm() / tn if tn > 0 else float("nan"),
        "row_variance": float(w.var(dim=0, unbiased=True).mean()) if w.shape[0] > 1 else float("nan"),
    }


@contextmanager
def scaled_deviation(model: nn.Module, head_name: str, alpha: float, projector: Projector = None) -> Iterator[nn.Linear]:
    """Within the block the head holds ``θ_∥ + α θ_⊥``; its exact original values are restored afterwards."""
    head = get_linear_head(model, head_name)
    par, dev = split_head(head, projector)
    saved_w = head.weight.detach().clone()
    saved_b = head.bias.detach().clone() if head.bias is not None else None
    try:
        with torch.no_grad():
            head.weight.copy_(par.weight + alpha * dev.weight)
            if head.bias is not None:
                head.bias.copy_(par.bias + alpha * dev.bias)
        yield head
    finally:
        with torch.no_grad():
            head.weight.copy_(saved_w)
            if saved_b is not None:
                head.bias.copy_(saved_b)


def fit_loglog_slope(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares line ``log y = slope · log x + intercept`` over points with x, y > 0 (R² in log space)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        raise ValueError(f"need ≥ 2 positive points for a log–log fit, got {int(keep.sum())}")
    lx, ly = np.log(x[keep]), np.log(y[keep])
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2, "n_points": int(keep.sum()), "n_dropped": int((~keep).sum())}


@dataclass
class DeviationScaling:
    """Result of :func:`deviation_scaling`: the table and the log–log fit of L_equiv against the deviation."""

    table: pd.DataFrame
    slope: float
    intercept: float
    r2: float
    head: str
    base: dict[str, float]

    def summary(self) -> dict:
        return {"head": self.head, "slope": self.slope, "intercept": self.intercept, "r2": self.r2, **self.base}


def deviation_scaling(
    model: nn.Module,
    task: Task,
    batches: Batch | Sequence[Batch] | Mapping[str, Batch],
    rotations: torch.Tensor | Sequence[torch.Tensor],
    head_name: str,
    *,
    alphas: Sequence[float] | None = None,
    projector: Projector = None,
    term: LossTerm | str | None = None,
    chunk_size: int | None = None,
    exact_group: bool = False,
) -> DeviationScaling:
    """L_equiv, L_mean, L_total on held-out batches with the head set to ``θ_∥ + α θ_⊥`` for each α.

    ``alphas`` default ``logspace(−3, 0, 7)``. Columns: ``alpha, deviation`` (= α‖θ_⊥‖),
    ``relative_deviation, l_equiv, l_mean, l_total, pct, l_equiv_over_alpha2``. The slope of
    log L_equiv vs log deviation is 2 for a genuine linear head on invariant features (NaN with fewer
    than two positive points). The model itself is not modified (parameters are substituted
    functionally).
    """
    alphas = list(np.logspace(-3, 0, 7) if alphas is None else alphas)
    head = get_linear_head(model, head_name)
    names = [f"{head_name}.weight"] + ([f"{head_name}.bias"] if head.bias is not None else [])
    losses = SubsetLosses(model, task, batches, rotations, names, term=term, chunk_size=chunk_size, exact_group=exact_group)
    par, dev = split_head(head, projector)
    base = deviation_norm(head, projector)
    full_norm = HeadParams(head.weight.detach(), head.bias.detach() if head.bias is not None else None).norm()
    rows = []
    with torch.no_grad():
        for a in alphas:
            theta = par.flat() + float(a) * dev.flat()
            vals = {k: float(v) for k, v in losses.evaluate(theta.to(losses.theta0)).items()}
            scaled_norm = float(theta.double().norm())
            rows.append(
                {
                    "alpha": float(a),
                    "deviation": abs(float(a)) * base["deviation"],
                    "relative_deviation": abs(float(a)) * base["deviation"] / scaled_norm if scaled_norm > 0 else float("nan"),
                    "l_equiv": vals["equiv"],
                    "l_mean": vals["mean"],
                    "l_total": vals["total"],
                    "pct": vals["equiv"] / vals["total"] if vals["total"] != 0 else float("nan"),
                    "l_equiv_over_alpha2": vals["equiv"] / float(a) ** 2 if a != 0 else float("nan"),
                }
            )
    table = pd.DataFrame(rows)
    positive = int(((table["deviation"] > 0) & (table["l_equiv"] > 0)).sum())
    nan_fit = dict.fromkeys(("slope", "intercept", "r2"), float("nan"))
    fit = fit_loglog_slope(table["deviation"], table["l_equiv"]) if positive >= 2 else nan_fit
    base = {**base, "theta_norm": full_norm, "term": losses.term.name, "n_samples": losses.n_samples}
    return DeviationScaling(table, fit["slope"], fit["intercept"], fit["r2"], head_name, base)
