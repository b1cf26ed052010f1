"""Hessians of L_mean and L_equiv with respect to a parameter subset, and their condition numbers.

* :class:`HessianOperator` — v ↦ H v by double backward. The gradient graph is built once
  (``create_graph=True``) and reused, so each product costs one backward pass, not a new forward.
* :func:`exact_hessian` — the full ``(P, P)`` matrix from H applied to the basis vectors (chunks of them
  at a time through ``is_grads_batched``), symmetrised. For subsets up to a few thousand parameters.
* :func:`lanczos` — k steps of Lanczos with full re-orthogonalisation (classical Gram–Schmidt applied
  twice per step), giving Ritz pairs whose residuals ``‖H y − θ y‖ = β_k |s_k|`` say which are
  converged; the extreme eigenvalues converge first. Memory: the ``(P, k)`` Krylov basis.
* :func:`power_iteration` — the simplest alternative: the eigenvalue of largest magnitude of
  ``H − shift·I`` (use ``shift = λ_max`` to reach the bottom of the spectrum).
* :func:`hessian_spectrum` / :func:`condition_numbers` — the above applied to a
  :class:`~equivrepro.analysis.subset.SubsetLosses`.

Condition number (:meth:`Spectrum.condition`, kept for the landscape's direction choice). The analyses report κ
over *resolved* eigenvalues instead (:func:`equivrepro.analysis.spectral.resolved_condition`): a cut-off κ of a
spectrum that decays smoothly over many decades is ≈ 1/cut-off, a statement about the cut-off, not the loss.
Here ``κ = λ_max / λ⁺_min`` where λ⁺_min is the smallest eigenvalue **above the relative
threshold** ``rel_threshold · max_i |λ_i|`` (default 1e-6). Eigenvalues within ± that threshold count
as numerically zero (flat directions, e.g. the equivariant subspace for L_equiv), those below it as
negative (the unbiased L_mean estimator is a difference of two estimates and need not be convex).
With Lanczos only *resolved* Ritz values (residual ≤ ``resolved_tol · max|θ|``) enter κ; the summary
says how many Ritz values there were, how many resolved, and how many of those were positive above
the threshold. A Lanczos κ is a statement about the part of the spectrum the Krylov space resolved:
λ_max converges quickly, while the resolved λ⁺_min is the smallest *resolved* positive Ritz value,
so κ from a partial run is a lower estimate of the full-spectrum κ.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from equivrepro.analysis.subset import SubsetLosses

__all__ = [
    "HessianOperator",
    "hvp",
    "exact_hessian",
    "LanczosResult",
    "lanczos",
    "power_iteration",
    "Spectrum",
    "hessian_spectrum",
    "condition_numbers",
    "DEFAULT_REL_THRESHOLD",
]

#: Eigenvalues ≤ this fraction of max|λ| are treated as zero when looking for λ⁺_min.
DEFAULT_REL_THRESHOLD = 1e-6

ScalarFn = Callable[[torch.Tensor], torch.Tensor]


class HessianOperator:
    """``H v`` for the Hessian of ``fn`` at ``theta`` ``(P,)``; call it with ``v (P,)`` or ``(m, P)`` rows."""

    def __init__(self, fn: ScalarFn | None, theta: torch.Tensor, *, value: torch.Tensor | None = None):
        """``fn(theta)`` is evaluated here; or pass ``value`` already computed from ``theta`` (a leaf that requires
        grad, shared by several operators on one forward pass, :meth:`shared`)."""
        if value is None:
            self.theta = theta.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                value = fn(self.theta)
        else:
            self.theta = theta
        self.value = value
        with torch.enable_grad():
            (self.grad,) = torch.autograd.grad(self.value, self.theta, create_graph=True, retain_graph=True, allow_unused=True)
        if self.grad is None or not self.grad.requires_grad:  # fn is constant or affine in theta: H = 0
            self.grad = None
        self.n = int(self.theta.numel())
        self.calls = 0

    @classmethod
    def shared(
        cls, fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], theta: torch.Tensor, names: tuple[str, ...]
    ) -> dict[str, HessianOperator]:
        """One operator per ``names`` key of ``fn(theta)`` (a dict of scalars), all from a single forward pass."""
        leaf = theta.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            values = fn(leaf)
        return {name: cls(None, leaf, value=values[name]) for name in names}

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.theta)
        self.calls += 1 if v.dim() == 1 else v.shape[0]
        if self.grad is None:
            return torch.zeros_like(v)
        if v.dim() == 1:
            (hv,) = torch.autograd.grad(self.grad, self.theta, v, retain_graph=True, allow_unused=True)
            return torch.zeros_like(v) if hv is None else hv.detach()
        (hv,) = torch.autograd.grad(self.grad, self.theta, v, retain_graph=True, is_grads_batched=True, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv.detach()


def hvp(fn: ScalarFn, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One Hessian-vector product ``∇²fn(theta) · v`` (builds the gradient graph for this one call)."""
    return HessianOperator(fn, theta)(v)


def exact_hessian(fn_or_op: ScalarFn | HessianOperator, theta: torch.Tensor | None = None, chunk: int = 64) -> torch.Tensor:
    """The full symmetric Hessian ``(P, P)``; ``chunk`` basis vectors per batched backward.

    Falls back (with a warning) to one backward per basis vector when the model's ops do not support
    batched gradients.
    """
    # any operator with ``n`` and ``theta`` (HessianOperator, the GGN of :mod:`equivrepro.analysis.curvature`) is used as is
    op = fn_or_op if hasattr(fn_or_op, "n") and hasattr(fn_or_op, "theta") else HessianOperator(fn_or_op, theta)
    n = op.n
    eye = torch.eye(n, dtype=op.theta.dtype, device=op.theta.device)
    cols = []
    batched = chunk > 1
    for start in range(0, n, max(1, chunk)):
        block = eye[start : start + chunk]
        if batched:
            try:
                cols.append(op(block))
                continue
            except RuntimeError as exc:
                warnings.warn(f"batched Hessian-vector products unsupported ({exc}); using one backward per column", stacklevel=2)
                batched = False
        cols.append(torch.stack([op(e) for e in block]))
    h = torch.cat(cols, dim=0)
    return 0.5 * (h + h.T)


@dataclass
class LanczosResult:
    """Ritz values ``(m,)`` ascending, Ritz vectors ``(P, m)`` (unit columns), residual norms ``(m,)``, and the
    first components ``(m,)`` of the tridiagonal matrix's eigenvectors (their squares are the Gauss-quadrature
    weights of stochastic Lanczos quadrature, :mod:`equivrepro.analysis.spectral`)."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    steps: int
    breakdown: bool
    first_components: torch.Tensor | None = None


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    v0: torch.Tensor | None = None,
    breakdown_tol: float = 1e-12,
) -> LanczosResult:
    """``min(k, n)`` Lanczos steps on a symmetric operator with full re-orthogonalisation.

    Stops early when the Krylov space becomes invariant (``β_j ≤ breakdown_tol · ‖T‖``); the Ritz values
    are then exact eigenvalues of H (up to round-off) and all residuals are ≈ 0.
    """
    k = int(min(k, n))
    if k < 1:
        raise ValueError("Lanczos needs k >= 1")
    if v0 is None:
        v0 = torch.randn(n, generator=generator, dtype=torch.float64)
    q = v0.to(dtype=dtype, device=device)
    q = q / q.norm()
    basis = torch.zeros(n, k, dtype=dtype, device=device)
    alphas, betas = [], []
    beta_prev, q_prev = 0.0, torch.zeros_like(q)
    breakdown = False
    for j in range(k):
        basis[:, j] = q
        w = matvec(q).to(dtype) - beta_prev * q_prev
        alpha = float(q @ w)
        w = w - alpha * q
        vj = basis[:, : j + 1]
        for _ in range(2):  # full re-orthogonalisation, twice ("twice is enough")
            w = w - vj @ (vj.T @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0), 1e-300)
        if j == k - 1:
            betas.append(beta)
            break
        if beta <= breakdown_tol * scale:
            betas.append(beta)
            breakdown = True
            break
        betas.append(beta)
        q_prev, q, beta_prev = q, w / beta, beta
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    evals, evecs = torch.linalg.eigh(t)
    residuals = abs(betas[m - 1]) * evecs[m - 1].abs()
    vectors = basis[:, :m] @ evecs.to(dtype=dtype, device=basis.device)
    return LanczosResult(
        values=evals.to(dtype),
        vectors=vectors,
        residuals=residuals.to(dtype),
        steps=m,
        breakdown=breakdown,
        first_components=evecs[0].clone(),
    )


def power_iteration(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    shift: float = 0.0,
    iters: int = 500,
    tol: float = 1e-10,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[float, torch.Tensor, int, bool]:
    """Eigenpair of largest |λ − shift|: returns ``(λ, unit vector (P,), iterations, converged)``.

    Convergence: relative change of the Rayleigh quotient ≤ ``tol`` and residual ``‖Hv − λv‖ ≤ √tol·|λ|``.
    """
    v = torch.randn(n, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    v = v / v.norm()
    lam = 0.0
    for it in range(1, iters + 1):
        hv = matvec(v).to(dtype)
        w = hv - shift * v
        new_lam = float(v @ hv)
        res = float((hv - new_lam * v).norm())
        converged = abs(new_lam - lam) <= tol * max(abs(new_lam), 1e-300) and res <= math.sqrt(tol) * max(abs(new_lam), 1e-300)
        lam = new_lam
        if converged:
            return lam, v, it, True
        nw = w.norm()
        if float(nw) == 0.0:
            return lam, v, it, True
        v = w / nw
    return lam, v, iters, False


def _canonical_sign(vectors: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its largest-magnitude entry is positive (eigenvectors have no sign)."""
    if vectors.numel() == 0:
        return vectors
    idx = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[idx, torch.arange(vectors.shape[1], device=vectors.device)])
    signs[signs == 0] = 1
    return vectors * signs


@dataclass
class Spectrum:
    """Eigenvalues (ascending) and unit eigenvectors ``(P, m)`` of one Hessian, and how they were computed.

    ``method``: ``'exact'`` (all P eigenpairs, ``residuals`` None) or ``'lanczos'`` (m Ritz pairs with
    residual norms).
    """

    loss: str
    method: str
    n_params: int
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    def resolved_mask(self, resolved_tol: float = 1e-6) -> torch.Tensor:
        """Which eigenpairs are trustworthy: all for ``exact``; residual ≤ tol·max|λ| for Lanczos."""
        if self.residuals is None:
            return torch.ones_like(self.eigenvalues, dtype=torch.bool)
        scale = float(self.eigenvalues.abs().max()) if self.eigenvalues.numel() else 0.0
        return self.residuals <= resolved_tol * max(scale, 1e-300)

    def _pick(self, rel_threshold: float, resolved_tol: float) -> tuple[int | None, int | None]:
        ok = self.resolved_mask(resolved_tol)
        vals = self.eigenvalues
        scale = float(vals.abs().max()) if vals.numel() else 0.0
        thr = rel_threshold * scale
        idx = torch.arange(vals.numel(), device=vals.device)
        pos = idx[ok & (vals > thr)]
        if pos.numel() == 0:
            return None, None
        return int(pos[0]), int(pos[-1])  # ascending: first = λ⁺_min, last = λ_max

    def condition(self, rel_threshold: float = DEFAULT_REL_THRESHOLD, resolved_tol: float = 1e-6) -> dict:
        """``κ = λ_max / λ⁺_min`` and the counts behind it (see the module docstring)."""
        vals = self.eigenvalues.double()
        ok = self.resolved_mask(resolved_tol)
        scale = float(vals.abs().max()) if vals.numel() else 0.0
        thr = rel_threshold * scale
        i_min, i_max = self._pick(rel_threshold, resolved_tol)
        lam_max = float(vals[i_max]) if i_max is not None else float("nan")
        lam_min = float(vals[i_min]) if i_min is not None else float("nan")
        return {
            "loss": self.loss,
            "method": self.method,
            "n_params": self.n_params,
            "n_eigenvalues": int(vals.numel()),
            "n_resolved": int(ok.sum()),
            "n_positive": int((ok & (vals > thr)).sum()),
            "n_zero": int((ok & (vals.abs() <= thr)).sum()),
            "n_negative": int((ok & (vals < -thr)).sum()),
            "lambda_max": lam_max,
            "lambda_min_pos": lam_min,
            "lambda_min": float(vals[ok].min()) if bool(ok.any()) else float("nan"),
            "kappa": lam_max / lam_min if i_min is not None else float("nan"),
            "rel_threshold": rel_threshold,
            "threshold": thr,
        }

    def extreme_vectors(self, rel_threshold: float = DEFAULT_REL_THRESHOLD, resolved_tol: float = 1e-6) -> dict:
        """Unit eigenvectors of λ⁺_min and λ_max: ``{'min_pos': (P,), 'max': (P,), 'lambda_min_pos', 'lambda_max'}``."""
        i_min, i_max = self._pick(rel_threshold, resolved_tol)
        if i_min is None:
            raise ValueError(f"Hessian of L_{self.loss} has no resolved eigenvalue above {rel_threshold:g}·max|λ|")
        return {
            "min_pos": self.eigenvectors[:, i_min],
            "max": self.eigenvectors[:, i_max],
            "lambda_min_pos": float(self.eigenvalues[i_min]),
            "lambda_max": float(self.eigenvalues[i_max]),
        }


def hessian_spectrum(
    losses: SubsetLosses,
    which: str,
    *,
    method: str = "auto",
    exact_max_params: int = 4096,
    k: int = 100,
    generator: torch.Generator | None = None,
    chunk: int = 64,
    theta: torch.Tensor | None = None,
) -> Spectrum:
    """Spectrum of ``∇²L_which`` at θ_S (default: the model's values).

    ``method='auto'`` uses the exact Hessian when ``n_params ≤ exact_max_params``, else Lanczos with ``k``
    steps (start vector from ``generator``). ``'exact'`` / ``'lanczos'`` force one.
    """
    theta = losses.theta0 if theta is None else theta
    n = losses.n_params
    if method == "auto":
        method = "exact" if n <= exact_max_params else "lanczos"
    op = HessianOperator(losses.function(which), theta)
    info = {"loss_value": float(op.value.detach()), **losses.describe()}
    if method == "exact":
        h = exact_hessian(op, chunk=chunk)
        vals, vecs = torch.linalg.eigh(h)
        info["hvp_calls"] = op.calls
        return Spectrum(which, "exact", n, vals, _canonical_sign(vecs), None, info)
    if method == "lanczos":
        res = lanczos(op, n, k, generator=generator, dtype=theta.dtype, device=theta.device)
        info.update(hvp_calls=op.calls, lanczos_steps=res.steps, breakdown=res.breakdown)
        return Spectrum(which, "lanczos", n, res.values, _canonical_sign(res.vectors), res.residuals, info)
    raise ValueError(f"unknown Hessian method {method!r}; use 'auto', 'exact' or 'lanczos'")


def condition_numbers(
    losses: SubsetLosses,
    *,
    method: str = "auto",
    rel_threshold: float = DEFAULT_REL_THRESHOLD,
    resolved_tol: float = 1e-6,
    **spectrum_kw,
) -> dict:
    """Condition numbers of the Hessians of L_mean and L_equiv and their ratio.

    Returns ``{'mean': condition dict, 'equiv': condition dict, 'kappa_ratio_mean_over_equiv': float,
    'spectra': {'mean': Spectrum, 'equiv': Spectrum}}`` (see :meth:`Spectrum.condition`).
    """
    spectra = {w: hessian_spectrum(losses, w, method=method, **spectrum_kw) for w in ("mean", "equiv")}
    cond = {w: s.condition(rel_threshold, resolved_tol) for w, s in spectra.items()}
    ratio = cond["mean"]["kappa"] / cond["equiv"]["kappa"]
    return {"mean": cond["mean"], "equiv": cond["equiv"], "kappa_ratio_mean_over_equiv": ratio, "spectra": spectra}
