"""Curvature operators of L_mean and L_equiv on a parameter subset: the Hessian and a PSD Gauss–Newton form.

Why a second form. The unbiased L_mean = L_total − K/(K−1)·L_equiv^plug-in is a difference of two estimates, so
its Hessian is indefinite even for a linear head (14 of 51 eigenvalues negative were measured); the plug-in
L_mean = ℓ(z̄, y) has a PSD Hessian only while the prediction is linear in θ_S, which fails for any trunk block.
A condition number needs a PSD operator, so κ, the effective ranks and the densities are also reported for the
**generalised Gauss–Newton (GGN) matrix of the plug-in losses**: it keeps the curvature of the loss in the
prediction and drops the curvature of the network (the term weighted by the residuals, which is what turns
indefinite), is PSD by construction, equals the Hessian exactly when the prediction is linear in θ_S, and is the
curvature that (K-FAC-, Adam- or Gauss–Newton-type) optimisers model. For a quadratic term
``ℓ(z, y) = Σ_j w_j (z_j − y_j)²`` per sample (weights from :func:`equivrepro.metrics.quadratic_weights`), with
``J_k = ∂z_k/∂θ_S`` the Jacobian of the k-th untwisted prediction and ``J̄ = mean_k J_k``:

    G_mean  = (2/N) Σ_samples J̄ᵀ W J̄                             (plug-in L_mean = Σ_j w_j (z̄_j − y_j)²)
    G_equiv = (2/N) Σ_samples (1/K) Σ_k (J_k − J̄)ᵀ W (J_k − J̄)   (plug-in L_equiv = mean_k Σ_j w_j (z_kj − z̄_j)²)

(the U-statistic L_equiv's GGN is K/(K−1)·G_equiv: the same spectrum up to scale). ``G v = Jᵀ (H_z (J v))``: ``J v``
by the double-vjp trick (differentiate the linear map u ↦ Jᵀu once more, in u) and ``Jᵀ(·)`` by one vjp, both on
graphs built once, so a product costs two backward passes and no forward pass.

:func:`curvature_operator` returns either form as a callable ``v (P,) or (m, P) ↦ (…, P)`` with ``n``, ``calls``
and ``value`` (the loss at θ_S), the interface of :class:`~equivrepro.analysis.hessian.HessianOperator`;
:func:`curvature_spectrum` turns one into a :class:`CurvatureSpectrum` (exact or SLQ density, top eigenvalues,
κ over resolved eigenvalues, the landscape directions).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from equivrepro.analysis.hessian import HessianOperator, exact_hessian
from equivrepro.analysis.spectral import DEFAULT_RTOL, SpectralDensity, resolved_condition, stochastic_lanczos_quadrature
from equivrepro.analysis.subset import SubsetLosses
from equivrepro.metrics.quadratic import quadratic_weights

__all__ = ["GGNOperator", "curvature_operator", "curvature_operators", "FORMS", "CurvatureSpectrum", "curvature_spectrum"]

#: ``hessian``: ∇² of the loss estimator; ``ggn``: the Gauss–Newton matrix of the plug-in loss (PSD).
FORMS = ("hessian", "ggn")


class GGNOperator:
    """``G v`` for the GGN of the plug-in L_mean (``which='mean'``) or L_equiv (``'equiv'``) at θ_S (module docstring)."""

    def __init__(self, losses: SubsetLosses, which: str, theta: torch.Tensor | None = None):
        if which not in ("mean", "equiv"):
            raise KeyError(f"the GGN is defined for 'mean' and 'equiv', got {which!r}")
        if not losses.term.quadratic:
            raise ValueError(f"the GGN form needs a quadratic loss term; {losses.term.name!r} is not (use the Hessian form)")
        self.which = which
        theta = losses.theta0 if theta is None else theta
        self.theta = theta.detach().clone().requires_grad_(True)
        self.n = int(self.theta.numel())
        self.calls = 0
        n_samples = float(losses.n_samples)
        self._z, self._w = [], []
        values = {"mean": 0.0, "equiv": 0.0}
        with torch.enable_grad():
            for i, batch in enumerate(losses.batches):
                z = losses.untwisted(self.theta, i)
                target = losses.task.targets(batch)
                w = quadratic_weights(losses.term, target, batch)
                keys = [k for k in w if k in z]
                k_rot = next(iter(z.values())).shape[1]
                for key in keys:
                    zk, wk = z[key], w[key].detach().unsqueeze(1)  # (B, K, …), (B, 1, …)
                    zbar = zk.mean(1, keepdim=True)
                    with torch.no_grad():
                        values["mean"] += float((wk.squeeze(1) * (zbar.squeeze(1) - target[key]) ** 2).sum())
                        values["equiv"] += float((wk * (zk - zbar) ** 2).sum() / k_rot)
                    self._z.append(zk)
                    self._w.append(wk * (2.0 / (n_samples * k_rot)))
            self._values = {w: torch.tensor(v / n_samples, dtype=torch.float64) for w, v in values.items()}
            self.value = self._values[which]
            flat = [z.reshape(-1) for z in self._z]
            self._zflat = torch.cat(flat) if flat else torch.zeros(0)
            self._u = torch.zeros_like(self._zflat, requires_grad=True)
            # Jᵀu, linear in u; None when the predictions do not depend on θ_S (G = 0)
            (self._jt_u,) = torch.autograd.grad(self._zflat, self.theta, self._u, create_graph=True, allow_unused=True)

    def for_loss(self, which: str) -> GGNOperator:
        """The GGN of the other loss on the same graph (no new forward pass)."""
        if which not in self._values:
            raise KeyError(f"the GGN is defined for 'mean' and 'equiv', got {which!r}")
        other = copy.copy(self)
        other.which, other.value, other.calls = which, self._values[which], 0
        return other

    def _h_z(self, jv: torch.Tensor) -> torch.Tensor:
        """Loss Hessian in prediction space applied to ``jv`` (flat like the stacked z)."""
        out, start = [], 0
        for z, w in zip(self._z, self._w):
            a = jv[start : start + z.numel()].view_as(z)
            start += z.numel()
            abar = a.mean(1, keepdim=True)
            out.append((w * (abar.expand_as(a) if self.which == "mean" else a - abar)).reshape(-1))
        return torch.cat(out)

    def _one(self, v: torch.Tensor) -> torch.Tensor:
        if self._jt_u is None:
            return torch.zeros_like(v)
        (jv,) = torch.autograd.grad(self._jt_u, self._u, v, retain_graph=True)
        (gv,) = torch.autograd.grad(self._zflat, self.theta, self._h_z(jv), retain_graph=True)
        return gv.detach()

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.theta)
        if v.dim() == 1:
            self.calls += 1
            return self._one(v)
        self.calls += v.shape[0]
        return torch.stack([self._one(row) for row in v])


def curvature_operator(losses: SubsetLosses, which: str, form: str = "hessian", theta: torch.Tensor | None = None):
    """The Hessian of ``losses``' estimator of L_which or the GGN of the plug-in L_which, at θ_S (default the model's)."""
    return curvature_operators(losses, form, (which,), theta)[which]


def curvature_operators(
    losses: SubsetLosses, form: str = "hessian", which: tuple[str, ...] = ("mean", "equiv"), theta: torch.Tensor | None = None
) -> dict:
    """:func:`curvature_operator` for several losses from one forward pass (the expensive part of building one)."""
    theta = losses.theta0 if theta is None else theta
    if form == "hessian":
        return HessianOperator.shared(losses.evaluate, theta, tuple(which))
    if form == "ggn":
        first = GGNOperator(losses, which[0], theta)
        return {w: (first if w == which[0] else first.for_loss(w)) for w in which}
    raise ValueError(f"unknown curvature form {form!r}; choose from {FORMS}")


@dataclass
class CurvatureSpectrum:
    """The spectrum of one curvature operator (``form`` of L_``loss``) on θ_S.

    ``method``: ``'exact'`` (all P eigenpairs; ``residuals`` None) or ``'lanczos'`` (the Ritz pairs of the first SLQ
    probe, with residual norms). ``density``: the exact eigenvalue measure or the SLQ estimate. ``condition``:
    :func:`~equivrepro.analysis.spectral.resolved_condition` (κ over resolved eigenvalues only).
    """

    loss: str
    form: str
    method: str
    n_params: int
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor | None
    density: SpectralDensity
    condition: dict
    value: float
    calls: int

    def top(self, k: int = 10) -> list[dict]:
        """The ``k`` largest eigenvalues (Ritz values), each with its residual bound and whether it is resolved."""
        order = torch.argsort(self.eigenvalues, descending=True)[:k]
        ok = self.condition["resolved"]
        res = self.residuals
        return [
            {
                "index": int(i),
                "eigenvalue": float(self.eigenvalues[i]),
                "residual": float(res[i]) if res is not None else 0.0,
                "resolved": bool(ok[int(i)]),
            }
            for i in order
        ]

    def extreme_directions(self) -> dict:
        """Unit eigenvectors of the smallest resolved positive eigenvalue and of the largest one (landscape axes)."""
        ok = torch.as_tensor(self.condition["resolved"]) & (self.eigenvalues.cpu() > 0)
        if not bool(ok.any()):
            raise ValueError(f"the {self.form} of L_{self.loss} has no resolved positive eigenvalue to perturb along")
        idx = torch.arange(self.eigenvalues.numel())[ok]
        vals = self.eigenvalues.cpu()[idx]
        i_min, i_max = int(idx[vals.argmin()]), int(idx[vals.argmax()])
        return {
            "min_pos": self.eigenvectors[:, i_min],
            "max": self.eigenvectors[:, i_max],
            "lambda_min_pos": float(self.eigenvalues[i_min]),
            "lambda_max": float(self.eigenvalues[i_max]),
        }

    def summary(self, top_k: int = 10) -> dict:
        cond = {k: v for k, v in self.condition.items() if k != "resolved"}
        return {
            "loss": self.loss,
            "form": self.form,
            "method": self.method,
            "n_params": self.n_params,
            "value": self.value,
            "operator_calls": self.calls,
            "condition": cond,
            "density": self.density.summary(),
            "top_eigenvalues": self.top(top_k),
        }


def curvature_spectrum(
    losses: SubsetLosses,
    which: str,
    form: str = "hessian",
    *,
    exact_max: int = 512,
    steps: int = 40,
    probes: int = 4,
    rtol: float = DEFAULT_RTOL,
    generator: torch.Generator | None = None,
    chunk: int = 64,
    operator=None,
) -> CurvatureSpectrum:
    """The whole spectrum of one operator: exact when ``n_params ≤ exact_max`` (P products), else ``probes`` SLQ
    runs of ``steps`` Lanczos steps (the first run's Ritz pairs give the top eigenvalues, κ and the directions).
    ``operator``: one of :func:`curvature_operators` (default: built here)."""
    op = operator if operator is not None else curvature_operator(losses, which, form)
    n = losses.n_params
    if n <= exact_max:
        h = exact_hessian(op, chunk=chunk)
        vals, vecs = torch.linalg.eigh(h)
        density = SpectralDensity.from_eigenvalues(vals)
        cond = resolved_condition(vals, None, n=n, rtol=rtol)
        return CurvatureSpectrum(which, form, "exact", n, vals, vecs, None, density, cond, float(op.value.detach()), op.calls)
    density, runs = stochastic_lanczos_quadrature(
        op, n, steps=steps, probes=probes, generator=generator, dtype=losses.theta0.dtype, device=losses.theta0.device
    )
    first = runs[0]
    cond = resolved_condition(first.values, first.residuals, rtol=rtol)
    return CurvatureSpectrum(
        which, form, "lanczos", n, first.values, first.vectors, first.residuals, density, cond, float(op.value.detach()), op.calls
    )
