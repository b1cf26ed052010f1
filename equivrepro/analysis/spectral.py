"""Whole spectra of a symmetric ``(P, P)`` curvature operator: density, effective rank, resolved κ, comparison.

* :func:`stochastic_lanczos_quadrature` — the eigenvalue density by stochastic Lanczos quadrature (SLQ;
  Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao 2019): for each of ``probes`` Rademacher vectors v
  (‖v‖² = P), m Lanczos steps started at v/√P give nodes θ_i (Ritz values) and weights τ_i² (squared first
  components of the tridiagonal matrix's eigenvectors, Σ_i τ_i² = 1), and
  ``tr f(H) ≈ (P / probes) Σ_probes Σ_i τ_i² f(θ_i)`` (exact for polynomials of degree < 2m per probe, unbiased
  over probes). The density ``φ(λ) = (P / probes) Σ τ_i² δ(λ − θ_i)`` integrates to P.
* :class:`SpectralDensity` — that discrete measure (or the exact eigenvalues, weight 1/P each), its
  Gaussian-broadened curve on a linear or a log10|λ| axis, trace functionals and effective ranks.
* :func:`effective_ranks` — ``trace rank = (Σ|λ|)² / Σλ²`` (the participation ratio) and
  ``entropy rank = exp(−Σ p_i log p_i)``, ``p_i = |λ_i| / Σ|λ|`` (Roy & Vetterli 2007): both equal r for r
  equal nonzero eigenvalues and less than r for an uneven spectrum.
* :func:`resolved_condition` — κ = λ_max / λ⁺_min over the eigenvalues that are *resolved*: a Ritz value θ
  with residual r = ‖Hy − θy‖ has an eigenvalue within r of it, so it is resolved when r ≤ ``rtol``·|θ| (it is
  known to relative accuracy ``rtol``). Exact eigenvalues carry the round-off bound r = ε·P·max|λ|. Zero
  eigenvalues (flat directions) are never resolved as positive. For a partial Lanczos run κ is the condition
  number of the part of the spectrum the Krylov space resolved: a lower bound of the full one.
* :func:`spectrum_distance` — how far apart two normalised spectra are as *sets* of values (log scale,
  multiplicities ignored): 0 when one Hessian is a rescaled copy of the other up to multiplicity, as for a
  linear head on invariant features under an exact group twirl (:mod:`equivrepro.analysis.structure`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from equivrepro.analysis.hessian import LanczosResult, lanczos

__all__ = [
    "SpectralDensity",
    "stochastic_lanczos_quadrature",
    "effective_ranks",
    "resolved_condition",
    "spectrum_distance",
    "DEFAULT_RTOL",
    "EPS_FLOOR",
]

#: A Ritz value is resolved when its residual bound is at most this fraction of its own magnitude.
DEFAULT_RTOL = 1e-3
#: |λ| ≤ this × max|λ| counts as zero in the log-scale densities and the ranks (below float64 round-off of a P ≲ 10⁶ Hessian).
EPS_FLOOR = 1e-12


@dataclass
class SpectralDensity:
    """Discrete spectral measure: ``nodes (probes, m)``, ``weights (probes, m)`` (rows sum to 1), dimension ``n``.

    ``φ(λ) = (n / probes) Σ_p Σ_i weights[p, i] δ(λ − nodes[p, i])``; ``method``: ``'exact'`` or ``'slq'``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    n: int
    method: str = "slq"

    @classmethod
    def from_eigenvalues(cls, eigenvalues: torch.Tensor | np.ndarray | Sequence[float]) -> SpectralDensity:
        lam = np.asarray(torch.as_tensor(eigenvalues).detach().cpu().double()).reshape(1, -1)
        return cls(lam, np.full_like(lam, 1.0 / lam.shape[1]), int(lam.shape[1]), "exact")

    @property
    def probes(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def scale(self) -> float:
        """max |node| (the spectral radius estimate: Lanczos' extreme Ritz values converge first)."""
        return float(np.abs(self.nodes).max()) if self.nodes.size else 0.0

    def trace(self, f: Callable[[np.ndarray], np.ndarray]) -> float:
        """``tr f(H) ≈ (n / probes) Σ weights · f(nodes)``."""
        return float(self.n * (self.weights * f(self.nodes)).sum() / self.probes)

    def integral(self) -> float:
        """∫ φ = n (exactly, up to round-off: each probe's weights sum to 1)."""
        return self.trace(np.ones_like)

    def ranks(self, floor: float = EPS_FLOOR) -> dict[str, float]:
        """:func:`effective_ranks` of the measure, with the trace moments it is built from."""
        return _ranks_from_measure(self.nodes, self.weights, self.n / self.probes, floor)

    def broadened(self, grid: np.ndarray, sigma: float, *, log: bool = False, floor: float = EPS_FLOOR) -> dict[str, np.ndarray]:
        """Gaussian-broadened density on ``grid``.

        ``log=False``: eigenvalues per unit λ, ``{'density'}`` (integrates to n over a grid that covers the spectrum).
        ``log=True``: ``grid`` is log10|λ| and ``sigma`` in decades; ``{'positive', 'negative'}`` in eigenvalues per
        decade for λ > floor·max|λ| and λ < −floor·max|λ|, plus ``'zero'``, the count within ±floor·max|λ|
        (so ∫ positive + ∫ negative + zero = n).
        """
        grid = np.asarray(grid, dtype=float)
        scale = self.n / self.probes
        nodes, w = self.nodes.ravel(), self.weights.ravel() * scale

        def kde(x: np.ndarray, wx: np.ndarray) -> np.ndarray:
            if x.size == 0:
                return np.zeros_like(grid)
            d = (grid[:, None] - x[None, :]) / sigma
            return (np.exp(-0.5 * d**2) * wx[None, :]).sum(1) / (sigma * math.sqrt(2 * math.pi))

        if not log:
            return {"density": kde(nodes, w)}
        thr = floor * self.scale
        pos, neg = nodes > thr, nodes < -thr
        return {
            "positive": kde(np.log10(nodes[pos]), w[pos]),
            "negative": kde(np.log10(-nodes[neg]), w[neg]),
            "zero": float(w[~(pos | neg)].sum()),
        }

    def summary(self, floor: float = EPS_FLOOR) -> dict:
        r = self.ranks(floor)
        return {"method": self.method, "n": self.n, "probes": self.probes, "steps": int(self.nodes.shape[1]), **r}


def _ranks_from_measure(nodes: np.ndarray, weights: np.ndarray, scale: float, floor: float) -> dict[str, float]:
    a = np.abs(nodes)
    big = a > floor * (a.max() if a.size else 0.0)
    s1 = scale * float((weights * a).sum())  # tr |H|
    s2 = scale * float((weights * nodes**2).sum())  # ‖H‖_F²
    neg = scale * float((weights * np.where(nodes < 0, a, 0.0)).sum())
    alog = np.where(big, a * np.log(np.where(big, a, 1.0)), 0.0)
    slog = scale * float((weights * alog).sum())  # Σ |λ| log |λ|
    if s1 <= 0:
        nan = float("nan")
        return {"trace_abs": 0.0, "frobenius_sq": 0.0, "trace_rank": nan, "entropy_rank": nan, "negative_mass": nan}
    entropy = math.log(s1) - slog / s1
    return {"trace_abs": s1, "frobenius_sq": s2, "trace_rank": s1**2 / s2, "entropy_rank": math.exp(entropy), "negative_mass": neg / s1}


def effective_ranks(eigenvalues: torch.Tensor | np.ndarray | Sequence[float], floor: float = EPS_FLOOR) -> dict[str, float]:
    """``trace_rank`` (Σ|λ|)²/Σλ², ``entropy_rank`` exp(H(|λ|/Σ|λ|)), ``negative_mass`` Σ_{λ<0}|λ| / Σ|λ| (module docstring)."""
    return SpectralDensity.from_eigenvalues(eigenvalues).ranks(floor)


def stochastic_lanczos_quadrature(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    steps: int = 40,
    probes: int = 4,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[SpectralDensity, list[LanczosResult]]:
    """SLQ density from ``probes`` runs of ``steps`` Lanczos steps (full re-orthogonalisation), and the runs
    themselves (each with Ritz vectors and residuals: the first serves as the extreme-eigenpair estimate)."""
    if probes < 1:
        raise ValueError(f"SLQ needs at least one probe vector, got probes={probes}")
    runs, nodes, weights = [], [], []
    m_max = int(min(steps, n))
    for _ in range(int(probes)):
        v = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64).mul_(2).sub_(1)
        res = lanczos(matvec, n, m_max, dtype=dtype, device=device, v0=v)
        runs.append(res)
        theta = res.values.double().cpu().numpy()
        tau2 = res.first_components.double().cpu().numpy() ** 2
        # a run that broke down early (invariant Krylov space) has fewer nodes: pad with zero weight
        pad = m_max - theta.size
        nodes.append(np.concatenate([theta, np.zeros(pad)]))
        weights.append(np.concatenate([tau2 / tau2.sum(), np.zeros(pad)]))
    return SpectralDensity(np.stack(nodes), np.stack(weights), int(n), "slq"), runs


def resolved_condition(
    values: torch.Tensor | np.ndarray, residuals: torch.Tensor | np.ndarray | None, *, n: int | None = None, rtol: float = DEFAULT_RTOL
) -> dict:
    """κ over resolved eigenvalues (module docstring). ``residuals`` None: exact eigenvalues of an ``n × n``
    matrix, with the round-off bound ε·n·max|λ|. Returns counts, λ_max, λ⁺_min, κ and the resolved mask."""
    vals = np.asarray(torch.as_tensor(values).detach().cpu().double())
    scale = float(np.abs(vals).max()) if vals.size else 0.0
    if residuals is None:
        res = np.full_like(vals, np.finfo(np.float64).eps * (n or vals.size) * scale)
    else:
        res = np.asarray(torch.as_tensor(residuals).detach().cpu().double())
    ok = (res <= rtol * np.abs(vals)) & (np.abs(vals) > 0)
    pos, neg = ok & (vals > 0), ok & (vals < 0)
    lam_max = float(vals[pos].max()) if pos.any() else float("nan")
    lam_min = float(vals[pos].min()) if pos.any() else float("nan")
    return {
        "n_values": int(vals.size),
        "n_resolved": int(ok.sum()),
        "n_resolved_positive": int(pos.sum()),
        "n_resolved_negative": int(neg.sum()),
        "lambda_max": lam_max,
        "lambda_min_pos": lam_min,
        "lambda_min": float(vals[ok].min()) if ok.any() else float("nan"),
        "kappa": lam_max / lam_min if pos.any() else float("nan"),
        "rtol": rtol,
        "resolved": ok,
    }


def spectrum_distance(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    floor: float = 1e-8,
    a_ref: Sequence[float] | np.ndarray | None = None,
    b_ref: Sequence[float] | np.ndarray | None = None,
) -> dict:
    """How far apart two spectra are as *sets* of normalised positive eigenvalues.

    Each list is normalised by its own maximum and restricted to values above ``floor``. Over the range both lists
    reach (a list that repeats values reaches less far down), every value of ``a`` is matched with the nearest value
    of ``b_ref`` (default ``b``) and every value of ``b`` with the nearest of ``a_ref`` (default ``a``); the references
    let resolved Ritz values be matched against all Ritz values of the other operator. Returns ``{'distance'}`` —
    the largest mismatch in log10 (a symmetric Hausdorff distance; 0 when the spectra are rescaled copies of each
    other up to multiplicity, ``inf`` when a list is empty) — and ``{'compared_a', 'compared_b'}``, how many values
    below the common maximum (1) took part: a distance over no such value says nothing.
    """

    def prep(x, top_of=None):
        x = np.sort(np.asarray(torch.as_tensor(x).detach().cpu().double()).ravel())[::-1]
        x = x[x > 0]
        if x.size == 0:
            return x
        x = x / (x[0] if top_of is None else top_of)
        return np.log10(x[x > floor])

    def top(x):
        x = np.asarray(torch.as_tensor(x).detach().cpu().double()).ravel()
        return float(x.max()) if x.size else 0.0

    la, lb = prep(a), prep(b)
    if la.size == 0 or lb.size == 0:
        return {"distance": float("inf"), "compared_a": 0, "compared_b": 0}
    ra = la if a_ref is None else prep(a_ref, top(a))
    rb = lb if b_ref is None else prep(b_ref, top(b))
    low = max(la.min(), lb.min())
    in_a, in_b = la[la >= low], lb[lb >= low]
    d_ab = np.abs(in_a[:, None] - rb[None, :]).min(1).max() if rb.size else float("inf")
    d_ba = np.abs(in_b[:, None] - ra[None, :]).min(1).max() if ra.size else float("inf")
    return {"distance": float(max(d_ab, d_ba)), "compared_a": int(in_a.size) - 1, "compared_b": int(in_b.size) - 1}
