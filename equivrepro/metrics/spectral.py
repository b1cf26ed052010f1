r"""Where the equivariance error lives: its spectrum over the angular degrees l of SO(3).

For one sample x, the untwisted prediction h(g) = z_g = g⁻¹·f(g·x) is a function on SO(3) with values in the
output space, whose inner product ⟨a, b⟩_W = Σ_j w_j a_j b_j is that of a quadratic loss term
(:func:`~equivrepro.metrics.quadratic.quadratic_weights`). Peter–Weyl splits it into degrees,

    h = Σ_l P_l h,   P_l h = (2l+1) χ_l ∗ h,   χ_l(ω) = sin((l+½)ω) / sin(ω/2) = 1 + 2 Σ_{m=1}^{l} cos(mω),

with ω the rotation angle, and E_g‖h(g) − h̄‖²_W = Σ_{l≥1} E_l, E_l = ‖P_l h‖² (Haar average), E_0 = ‖h̄‖²_W:
the equivariance loss L_equiv = E_x Σ_{l≥1} E_l(x) is a sum over degrees.

**The estimator.** E_l = ⟨h, P_l h⟩ = (2l+1) E[χ_l(ω(g_iᵀ g_j)) ⟨h(g_i), h(g_j)⟩] for independent Haar g_i, g_j,
and E_{g_j} χ_l(ω(g_iᵀ g_j)) = 0 for l ≥ 1. From K i.i.d. Haar rotations and z_k = h(g_k), per sample, with the
K×K weighted Gram matrix G_ij = ⟨z_i − z̄, z_j − z̄⟩_W of the centred copies:

* ``centring='mean'`` (default): Ê_l = (2l+1)/(K(K−1)) · K²/((K−1)² + 1) · Σ_{i≠j} χ_l(ω(g_iᵀ g_j)) G_ij.
  Expanding G_ij, every product ⟨z_a, z_b⟩ χ_ij with {a, b} ≠ {i, j} has mean 0 (one of g_i, g_j appears only in
  χ), and ⟨z_i, z_j⟩ enters with weight 1 − 2/K + 2/K² = ((K−1)² + 1)/K², which the factor undoes: exactly
  unbiased for every K ≥ 2.
* ``centring='leave-two-out'`` (the issue's form, K ≥ 3): Ê_l = (2l+1)/(K(K−1)) Σ_{i≠j} χ_l ⟨z_i − c_ij, z_j − c_ij⟩_W
  with c_ij the mean of the other K − 2 copies, unbiased because c_ij is independent of z_i and z_j. In the
  centred Gram matrix ⟨z_i − c_ij, z_j − c_ij⟩ = [((K−1)² + 1) G_ij + (K−1)(G_ii + G_jj)]/(K−2)²; its diagonal
  terms add variance: measured on synthetic orbits and an MLP, its standard deviation is ~2× that of
  ``'mean'`` at K = 3, 1.5–1.9× at K = 4, 1.1–1.2× at K = 10 and equal at K = 50. K = 2 has no copy left for
  the centre; ``'mean'`` covers it.

Both centrings remove the ‖h̄‖² that would otherwise dominate the variance (it can be thousands of times
L_equiv), and make Ê_l (l ≥ 1) invariant to adding a constant to every z_k. The per-sample noise of Ê_l is of
order (2l+1) L_equiv / K (it can be negative), so high degrees need large K or many samples. Ê_0 = (1/(K(K−1))) Σ_{i≠j} ⟨z_i, z_j⟩_W
(no centring) is the unbiased estimate of the twirl's squared norm ‖f̄‖²_W — a property of the prediction, not
a part of the loss. Everything comes from the one Gram matrix per sample, computed in float64 after
subtracting z̄, so nothing cancels catastrophically.

**Which relative rotation.** For the right-regular action (R_s h)(g) = h(g s), the kernel of P_l is
χ_l(g_i⁻¹ g_j) = χ_l(ω(R_iᵀ R_j)); for the left-regular action it is χ_l(g_j g_i⁻¹) = χ_l(ω(R_j R_iᵀ)). For a
class function the two cannot differ: tr(R_iᵀ R_j) = tr(R_j R_iᵀ) = tr(R_i R_jᵀ) = tr(R_jᵀ R_i) (cyclicity and
transposition), so all four have the same angle, and the isotypic projections of the left and right actions
coincide. The spectrum is also the same for h(g) and h(g⁻¹) (χ_l(s⁻¹) = χ_l(s) and the Haar measure is
inversion-invariant), so it does not depend on whether the task writes z_g = g⁻¹ f(g x) or g f(g⁻¹ x). What
*does* matter is that the angle is that of the relative rotation: ω(R_i R_j) (no transpose) or ω(R_i) gives
a biased result (``tests/metrics/test_spectral.py`` shows the bias).

**Finite groups.** With ``exact_group=True`` (rotations enumerating a finite subgroup G) the degrees are not
resolvable: on G the characters χ_l restrict to reducible characters of G and different l alias onto the same
irreducibles of G, so :func:`degree_spectrum` refuses. What a finite twirl does to the degrees is exact and
model-free: it removes every degree l with no G-invariant vector (:func:`invariant_degrees`,
:func:`removed_degrees`) and leaves the rest only partly reduced.

Consequences computed here: the remainder L_equiv − Σ_{1≤l≤l_max} Ê_l (an unbiased estimate of the power
above l_max), the orbit-averaged squared Lie derivative Σ_l l(l+1) E_l, the error against rotation angle
(:func:`angle_curve_predicted`, :func:`angle_curve_measured`) and the per-element map of L_equiv
(:func:`equiv_map`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from equivrepro.metrics.decomposition import Predictor, per_sample_rotations, untwisted_predictions
from equivrepro.metrics.keys import SPECTRUM, MetricKey, degree_key, key
from equivrepro.metrics.quadratic import NotQuadraticError, quadratic_weights
from equivrepro.rotations import axis_angle_to_matrix, haar_rotations
from equivrepro.task import Batch, LossTerm, Prediction, Task, batch_size

__all__ = [
    "DegreeSpectrum",
    "AngleCurve",
    "NotQuadraticError",
    "characters",
    "relative_cosines",
    "degree_quantity",
    "REMAINDER",
    "LIE",
    "CENTRINGS",
    "degree_spectrum",
    "degree_spectra",
    "degree_spectrum_of",
    "angle_curve_predicted",
    "angle_curve_measured",
    "invariant_degrees",
    "removed_degrees",
    "equiv_map",
]

#: Quantity names of the spectrum family beside the degrees (``spectrum/[S/]T/remainder``, ``…/lie``).
REMAINDER, LIE = "remainder", "lie"
_SE, _SHARE = "_se", "share_"


def degree_quantity(degree: int) -> str:
    """The quantity part of :func:`~equivrepro.metrics.keys.degree_key` for degree ``degree`` (``'l=2'`` for 2)."""
    return MetricKey.parse(degree_key("term", degree)).quantity


# --------------------------------------------------------------------------------------------------
# Characters
# --------------------------------------------------------------------------------------------------
def characters(cos_omega: torch.Tensor, l_max: int) -> torch.Tensor:
    """χ_l(ω) for l = 0..l_max from ``cos ω`` ``(...)`` → ``(..., l_max + 1)``.

    χ_l(ω) = sin((l+½)ω)/sin(ω/2) = 1 + 2 Σ_{m=1}^{l} T_m(cos ω) (Chebyshev polynomials, T_m(cos ω) = cos mω):
    no division, exact at ω = 0 (χ_l = 2l+1) and ω = π (χ_l = (−1)^l)."""
    if l_max < 0:
        raise ValueError(f"l_max must be ≥ 0, got {l_max}")
    c = cos_omega.clamp(-1.0, 1.0)
    out = [torch.ones_like(c)]
    t_prev, t_cur = torch.ones_like(c), c
    for _ in range(1, l_max + 1):
        out.append(out[-1] + 2 * t_cur)
        t_prev, t_cur = t_cur, 2 * c * t_cur - t_prev
    return torch.stack(out, dim=-1)


def relative_cosines(rotations: torch.Tensor) -> torch.Tensor:
    """cos ω(R_iᵀ R_j) = (tr(R_iᵀ R_j) − 1)/2 for ``rotations (B, K, 3, 3)`` → ``(B, K, K)`` (float64)."""
    r = rotations.double()
    return ((torch.einsum("bkxy,bjxy->bkj", r, r) - 1) / 2).clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# The spectrum of one quadratic term
# --------------------------------------------------------------------------------------------------
def _se(x: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean over dim 0."""
    n = x.shape[0]
    return x.std(dim=0, unbiased=True) / math.sqrt(n) if n > 1 else torch.full(x.shape[1:], float("nan"), dtype=x.dtype)


@dataclass
class DegreeSpectrum:
    """The degree spectrum of one quadratic loss term on B samples (all tensors float64).

    ``estimates (B, l_max + 1)``: Ê_l per sample (column 0: Ê_0 = ‖f̄‖²_W, the twirl's squared norm; columns
    l ≥ 1: the loss's equivariance error at degree l, in the term's units, e.g. eV²/Å²). ``equiv (B,)``: the
    unbiased U-statistic L_equiv of :func:`~equivrepro.metrics.decomposition.decompose_term` (same numbers);
    ``total (B,)``: mean_k ℓ(z_k, y). ``centring``: ``'mean'`` or ``'leave-two-out'`` (module docstring).

    Standard errors are over samples; with rotations shared by all samples (``(K, 3, 3)``) the samples are
    correlated through them and the standard errors are optimistic — use per-sample rotations.
    """

    name: str
    k: int
    l_max: int
    estimates: torch.Tensor
    equiv: torch.Tensor
    total: torch.Tensor
    centring: str = "mean"
    extras: dict[str, float] = field(default_factory=dict)

    @classmethod
    def concat(cls, parts: Sequence[DegreeSpectrum]) -> DegreeSpectrum:
        """Pool per-sample estimates of the same term computed on several chunks of a held-out set (``k`` is −1
        when the chunks used different K; each is unbiased, so pooling them is fine)."""
        if not parts:
            raise ValueError("DegreeSpectrum.concat needs at least one part")
        first = parts[0]
        for p in parts[1:]:
            if (p.name, p.l_max) != (first.name, first.l_max):
                raise ValueError(f"cannot pool spectra of {first.name!r} (l_max {first.l_max}) and {p.name!r} (l_max {p.l_max})")
        ks = {p.k for p in parts}
        cat = lambda attr: torch.cat([getattr(p, attr) for p in parts])  # noqa: E731
        return cls(
            name=first.name,
            k=first.k if len(ks) == 1 else -1,
            l_max=first.l_max,
            estimates=cat("estimates"),
            equiv=cat("equiv"),
            total=cat("total"),
            centring=first.centring,
        )

    # --- per sample ----------------------------------------------------------------------------
    @property
    def degrees(self) -> torch.Tensor:
        return torch.arange(self.l_max + 1)

    @property
    def n_samples(self) -> int:
        return int(self.estimates.shape[0])

    @property
    def remainder(self) -> torch.Tensor:
        """``(B,)`` L_equiv − Σ_{1≤l≤l_max} Ê_l: unbiased for the power above l_max (noisy per sample, may be < 0)."""
        return self.equiv - self.estimates[:, 1:].sum(1)

    @property
    def lie(self) -> torch.Tensor:
        """``(B,)`` Σ_{1≤l≤l_max} l(l+1) Ê_l, the orbit average of Σ_a ‖L_a h‖²_W (L_a: Lie derivatives along three
        orthonormal generators, radian⁻² × the term's units) resolved up to l_max. Power above l_max would add
        at least (l_max+1)(l_max+2) × remainder, so with a non-negative remainder this is a lower bound. The weight
        l(l+1) amplifies the noise of the high degrees; :func:`angle_curve_measured` at a small ω gives a direct,
        quieter value ((ω²/3) × this sum)."""
        ell = self.degrees.to(self.estimates.dtype)
        return (self.estimates * (ell * (ell + 1))).sum(1)

    # --- over samples ------------------------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        """``(l_max + 1,)`` sample means of Ê_l."""
        return self.estimates.mean(0)

    @property
    def se(self) -> torch.Tensor:
        """``(l_max + 1,)`` standard errors of :attr:`mean`."""
        return _se(self.estimates)

    @staticmethod
    def _ratio_to(num: torch.Tensor, den: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ratio of means Σ num / Σ den and its delta-method standard error; ``num (B, ...)``, ``den (B,)``."""
        dbar = den.mean()
        if dbar <= 0:
            nan = torch.full(num.shape[1:], float("nan"), dtype=num.dtype)
            return nan, nan
        r = num.mean(0) / dbar
        d = den.reshape((-1,) + (1,) * (num.dim() - 1))
        return r, _se(num - r * d) / dbar

    def _ratio(self, num: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._ratio_to(num, self.total)

    @property
    def share(self) -> torch.Tensor:
        """``(l_max + 1,)`` mean E_l / mean L_total. Column 0 is ‖f̄‖²/L_total (not part of the loss); with
        :attr:`mean_share` and :attr:`remainder_share`, ``mean_share + share[1:].sum() + remainder_share == 1``."""
        return self._ratio(self.estimates)[0]

    @property
    def share_se(self) -> torch.Tensor:
        return self._ratio(self.estimates)[1]

    @property
    def equiv_share(self) -> torch.Tensor:
        """``(l_max + 1,)`` mean E_l / mean L_equiv: where the equivariance error lives (column 0 meaningless)."""
        return self._ratio_to(self.estimates, self.equiv)[0]

    @property
    def equiv_share_se(self) -> torch.Tensor:
        return self._ratio_to(self.estimates, self.equiv)[1]

    @property
    def mean_share(self) -> torch.Tensor:
        """L_mean / L_total (0-dim)."""
        return self._ratio((self.total - self.equiv)[:, None])[0][0]

    @property
    def remainder_share(self) -> torch.Tensor:
        """remainder / L_total (0-dim)."""
        return self._ratio(self.remainder[:, None])[0][0]

    def summary(self) -> dict[str, float]:
        """Floats keyed by quantity: ``l=<l>`` and ``l=<l>_se`` (l = 0..l_max), ``share_l=<l>`` (l ≥ 1),
        ``remainder``, ``remainder_se``, ``share_remainder``, ``lie``, ``lie_se``. Wrap them in metric names with
        :meth:`metrics`."""
        mean, se, share = self.mean, self.se, self.share
        out: dict[str, float] = {}
        for deg in range(self.l_max + 1):
            q = degree_quantity(deg)
            out[q] = float(mean[deg])
            out[q + _SE] = float(se[deg])
            if deg >= 1:
                out[_SHARE + q] = float(share[deg])
        for name, per_sample in ((REMAINDER, self.remainder), (LIE, self.lie)):
            out[name] = float(per_sample.mean())
            out[name + _SE] = float(_se(per_sample[:, None])[0])
        out[_SHARE + REMAINDER] = float(self.remainder_share)
        out.update(self.extras)
        return out

    def metrics(self, suffix: str = "") -> dict[str, float]:
        """:meth:`summary` under metric names ``spectrum/[suffix/]<term>/<quantity>`` (made by
        :mod:`equivrepro.metrics.keys`; ``spectrum/T/l=<l>`` is exactly :func:`~equivrepro.metrics.keys.degree_key`)."""
        return {key(SPECTRUM, self.name, q, suffix): v for q, v in self.summary().items()}


def _gram_parts(z: Mapping[str, torch.Tensor], w: Mapping[str, torch.Tensor], target: Prediction):
    """Per sample, in float64: the Gram matrix G of the centred copies z_k − z̄ ``(B, K, K)``, ‖z̄‖²_W and
    ‖z̄ − y‖²_W ``(B,)``."""
    gram = zbar_sq = mean_sq = None
    for name, wk in w.items():
        if name not in z:
            raise KeyError(f"the loss term weighs prediction key {name!r}, but the untwisted predictions have only {sorted(z)}")
        zk = z[name].double()
        b, k = zk.shape[:2]
        wk = wk.double().to(zk.device).reshape(b, 1, -1)
        flat = zk.reshape(b, k, -1)
        zbar = flat.mean(1, keepdim=True)
        zc = flat - zbar
        dy = zbar - target[name].double().to(zk.device).reshape(b, 1, -1)
        parts = ((zc * wk) @ zc.transpose(1, 2), (wk * zbar.pow(2)).sum((1, 2)), (wk * dy.pow(2)).sum((1, 2)))
        if gram is None:
            gram, zbar_sq, mean_sq = parts
        else:
            gram, zbar_sq, mean_sq = gram + parts[0], zbar_sq + parts[1], mean_sq + parts[2]
    if gram is None:
        raise ValueError("the loss term has no weights")
    return gram, zbar_sq, mean_sq


CENTRINGS = ("mean", "leave-two-out")


def _centred_inner(gram: torch.Tensor, centring: str) -> torch.Tensor:
    """The pair products ``(B, K, K)`` whose character sums are unbiased, from the centred Gram matrix G.

    ``'mean'``: K²/((K−1)² + 1) · G_ij. ``'leave-two-out'`` (K ≥ 3): with z'_k = z_k − z̄ (Σ z'_k = 0) the centre
    is c'_ij = −(z'_i + z'_j)/(K−2), so z'_i − c'_ij = ((K−1) z'_i + z'_j)/(K−2) and ⟨z_i − c_ij, z_j − c_ij⟩ =
    [((K−1)² + 1) G_ij + (K−1)(G_ii + G_jj)] / (K−2)²."""
    k = gram.shape[-1]
    if centring == "mean":
        return gram * (k**2 / ((k - 1) ** 2 + 1))
    if centring == "leave-two-out":
        if k < 3:
            raise ValueError(f"leave-two-out centring needs K ≥ 3 rotations per sample, got {k} (use centring='mean')")
        d = gram.diagonal(dim1=-2, dim2=-1)
        return (((k - 1) ** 2 + 1) * gram + (k - 1) * (d[:, :, None] + d[:, None, :])) / (k - 2) ** 2
    raise ValueError(f"centring must be one of {CENTRINGS}, got {centring!r}")


def _character_sums(inner: torch.Tensor, cos_rel: torch.Tensor, l_max: int) -> torch.Tensor:
    """(2l+1)/(K(K−1)) Σ_{i≠j} χ_l(ω_ij) inner_ij for l = 0..l_max: ``(B, l_max + 1)``."""
    b, k, _ = inner.shape
    off = ~torch.eye(k, dtype=torch.bool, device=inner.device)
    chi = characters(cos_rel[:, off], l_max)  # (B, K(K−1), L+1)
    sums = torch.einsum("bpl,bp->bl", chi, inner[:, off])
    ell = torch.arange(l_max + 1, dtype=inner.dtype, device=inner.device)
    return sums * (2 * ell + 1) / (k * (k - 1))


def degree_spectrum(
    z: Mapping[str, torch.Tensor],
    rotations: torch.Tensor,
    term: LossTerm,
    target: Prediction,
    batch: Batch,
    l_max: int = 8,
    exact_group: bool = False,
    centring: str = "mean",
) -> DegreeSpectrum:
    """The degree spectrum of quadratic ``term`` from untwisted predictions ``z[key] (B, K, ...)``.

    ``rotations``: the Haar rotations that made ``z``, ``(B, K, 3, 3)`` or shared ``(K, 3, 3)`` (z_k = g_k⁻¹ f(g_k x)).
    ``target``/``batch``: the sample's target and batch in the untwisted frame (they give the weights W and
    L_total). ``centring``: ``'mean'`` (default, any K ≥ 2) or ``'leave-two-out'`` (K ≥ 3). Raises
    :class:`NotQuadraticError` for a term that is not a weighted squared error (no degree decomposition exists;
    nothing is approximated) and ``ValueError`` for ``exact_group=True``.
    """
    if exact_group:
        raise ValueError(
            "degree_spectrum needs i.i.d. Haar rotations: on a finite group the SO(3) degrees alias "
            "(χ_l restricted to the group is reducible and shared between degrees); use invariant_degrees / "
            "removed_degrees for what a finite twirl removes"
        )
    if int(l_max) < 1:
        raise ValueError(f"l_max must be ≥ 1, got {l_max}")
    w = quadratic_weights(term, target, batch)
    first = next(iter(z.values()))
    b, k = first.shape[:2]
    if k < 2:
        raise ValueError(f"the degree spectrum needs at least K = 2 rotations per sample, got {k}")
    rot = per_sample_rotations(rotations, b)
    if rot.shape[1] != k:
        raise ValueError(f"{rot.shape[1]} rotations given for K = {k} untwisted copies per sample")
    with torch.no_grad():
        gram, zbar_sq, mean_sq = _gram_parts(z, w, target)
        inner = _centred_inner(gram, centring)
        est = _character_sums(inner, relative_cosines(rot.to(gram.device)), int(l_max))
        trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
        est[:, 0] = zbar_sq - trace / (k * (k - 1))
        return DegreeSpectrum(
            name=term.name, k=k, l_max=int(l_max), estimates=est, equiv=trace / (k - 1), total=mean_sq + trace / k, centring=centring
        )


def degree_spectra(
    z: Mapping[str, torch.Tensor],
    rotations: torch.Tensor,
    task: Task,
    batch: Batch,
    l_max: int = 8,
    terms: Sequence[LossTerm] | None = None,
    centring: str = "mean",
) -> dict[str, DegreeSpectrum]:
    """``{term: DegreeSpectrum}`` for every quadratic term of ``task`` (or of ``terms``) from one set of
    untwisted predictions — the same ``z`` the twirl decomposition uses, so no extra forward passes.
    Non-quadratic terms are left out: they have no degree decomposition."""
    target = task.targets(batch)
    return {t.name: degree_spectrum(z, rotations, t, target, batch, l_max, centring=centring) for t in (terms or task.terms) if t.quadratic}


def degree_spectrum_of(
    predictor: nn.Module | Predictor,
    task: Task,
    batch: Batch,
    rotations: torch.Tensor,
    l_max: int = 8,
    chunk_size: int | None = None,
    terms: Sequence[LossTerm] | None = None,
    centring: str = "mean",
) -> dict[str, DegreeSpectrum]:
    """Run the K rotated copies (``chunk_size`` rotations per forward pass) and return :func:`degree_spectra`."""
    with torch.no_grad():
        z = untwisted_predictions(predictor, task, batch, rotations, chunk_size=chunk_size)
        return degree_spectra(z, rotations, task, batch, l_max, terms, centring)


# --------------------------------------------------------------------------------------------------
# The error against rotation angle
# --------------------------------------------------------------------------------------------------
@dataclass
class AngleCurve:
    """E‖h(g) − h(g·r_ω)‖²_W against ω (radians): ``per_sample (B, n)``, ``mean``/``se`` ``(n,)`` over samples;
    ``upper (n,)`` for a prediction: mean + 4·max(mean remainder, 0), a bound for the degrees above l_max."""

    omegas: torch.Tensor
    per_sample: torch.Tensor
    upper: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        return self.per_sample.mean(0)

    @property
    def se(self) -> torch.Tensor:
        return _se(self.per_sample)

    def rows(self) -> list[dict[str, float]]:
        """One dict per angle (``omega``, ``mean``, ``se`` and, for a prediction, ``upper``), for CSV files."""
        out = []
        for i, om in enumerate(self.omegas.tolist()):
            row = {"omega": om, "mean": float(self.mean[i]), "se": float(self.se[i])}
            if self.upper is not None:
                row["upper"] = float(self.upper[i])
            out.append(row)
        return out


def angle_curve_predicted(spectrum: DegreeSpectrum, omegas: torch.Tensor | Sequence[float]) -> AngleCurve:
    """2 Σ_{1≤l≤l_max} Ê_l (1 − χ_l(ω)/(2l+1)) per sample and ω.

    Derivation: E_g‖h(g) − h(g r)‖² = 2‖h‖² − 2⟨h, R_r h⟩; averaging r over the rotations of angle ω (axis Haar),
    Schur's lemma turns R_r on the degree-l component into χ_l(ω)/(2l+1). Truncation at l_max drops the terms
    l > l_max, each in [0, 4 E_l] (|χ_l| ≤ 2l+1), so the truth lies in [mean, mean + 4·tail]; ``upper`` uses the
    remainder for the tail. Near ω = 0 the curve is (ω²/3) Σ l(l+1) E_l = (ω²/3) × :attr:`DegreeSpectrum.lie`."""
    om = torch.as_tensor(omegas, dtype=torch.float64).reshape(-1)
    chi = characters(torch.cos(om), spectrum.l_max)[:, 1:]  # (n, L)
    ell = torch.arange(1, spectrum.l_max + 1, dtype=torch.float64)
    factor = 2 * (1 - chi / (2 * ell + 1))  # (n, L)
    per_sample = spectrum.estimates[:, 1:].double() @ factor.T.to(spectrum.estimates.device)
    tail = float(spectrum.remainder.mean().clamp_min(0))
    return AngleCurve(omegas=om, per_sample=per_sample, upper=per_sample.mean(0) + 4 * tail)


def _float_like(batch: Batch) -> torch.Tensor:
    for v in batch.values():
        if torch.is_tensor(v) and v.is_floating_point():
            return v
    raise ValueError("the batch has no floating-point tensor to take a dtype and device from")


def angle_curve_measured(
    predictor: nn.Module | Predictor,
    task: Task,
    batch: Batch,
    omegas: torch.Tensor | Sequence[float],
    n_rotations: int,
    generator: torch.Generator,
    term: LossTerm | str | None = None,
    *,
    chunk_size: int | None = None,
    side: str = "right",
    axis: torch.Tensor | None = None,
) -> AngleCurve:
    """Direct measurement of E‖h(g) − h(g·r_ω)‖²_W: per sample, ``n_rotations`` Haar g_k (shared by the angles)
    and for each (ω, k) a rotation r by ω about a fresh Haar-random axis; ``n_rotations · (1 + n_ω)`` rows per
    sample through the model. ``term``: a quadratic term or its name (default: the task's first).

    ``side='right'`` compares h(g) with h(g r) (the rotated input is g r x), ``'left'`` with h(r g). For a Haar
    axis independent of g both match :func:`angle_curve_predicted`: g⁻¹ r g is a rotation by ω about the axis
    g⁻¹a, which is again Haar and independent of g, so (g, r g) = (g, g·(g⁻¹ r g)) has the law of (g, g r').
    A fixed ``axis`` (3,) (what a practitioner rotating about z measures) breaks that symmetry and does *not*
    match the prediction in general; it is offered for diagnostics only."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if isinstance(term, str):
        by_name = {t.name: t for t in task.terms}
        if term not in by_name:
            raise KeyError(f"task {task.name!r} has no loss term {term!r} (terms: {sorted(by_name)})")
        term = by_name[term]
    term = term or task.primary_term
    om = torch.as_tensor(omegas, dtype=torch.float64).reshape(-1)
    n, m = int(om.numel()), int(n_rotations)
    if m < 1 or n < 1:
        raise ValueError("angle_curve_measured needs at least one angle and one rotation")
    b = batch_size(batch)
    g = haar_rotations(b * m, generator, torch.float64).reshape(b, 1, m, 3, 3)
    if axis is None:
        ax = torch.randn(b, n, m, 3, generator=generator, dtype=torch.float64)
    else:
        ax = torch.as_tensor(axis, dtype=torch.float64).reshape(1, 1, 1, 3).expand(b, n, m, 3)
    r = axis_angle_to_matrix(ax, om.reshape(1, n, 1).expand(b, n, m))
    moved = g @ r if side == "right" else r @ g  # (B, n, m, 3, 3)
    ref = _float_like(batch)
    rot = torch.cat([g.reshape(b, m, 3, 3), moved.reshape(b, n * m, 3, 3)], dim=1).to(dtype=ref.dtype, device=ref.device)
    target = task.targets(batch)
    w = quadratic_weights(term, target, batch)
    with torch.no_grad():
        z = untwisted_predictions(predictor, task, batch, rot, chunk_size=chunk_size)
        per = None
        for name, wk in w.items():
            zk = z[name].double()
            base = zk[:, :m].reshape((b, 1, m, -1))
            other = zk[:, m:].reshape((b, n, m, -1))
            d = (wk.double().reshape(b, 1, 1, -1) * (other - base).pow(2)).sum(-1)
            per = d if per is None else per + d
    return AngleCurve(omegas=om, per_sample=per.mean(-1))


# --------------------------------------------------------------------------------------------------
# Finite subgroups
# --------------------------------------------------------------------------------------------------
def invariant_degrees(group: torch.Tensor, l_max: int) -> torch.Tensor:
    """For each l = 0..l_max, dim of the G-invariant subspace of degree l: (1/|G|) Σ_{s∈G} χ_l(ω(s)), ``(l_max + 1,)`` long.

    ``group (|G|, 3, 3)`` must enumerate a finite subgroup of SO(3) (non-integer multiplicities raise)."""
    g = group.double()
    if g.dim() != 3 or g.shape[-2:] != (3, 3):
        raise ValueError(f"group must be (|G|, 3, 3), got {tuple(group.shape)}")
    cos = ((g.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    dims = characters(cos, int(l_max)).mean(0)
    rounded = dims.round()
    if (dims - rounded).abs().max() > 1e-6:
        raise ValueError(f"the {g.shape[0]} rotations do not form a group: invariant dimensions {dims.tolist()} are not integers")
    return rounded.long()


def removed_degrees(group: torch.Tensor, l_max: int) -> tuple[int, ...]:
    """Degrees 1 ≤ l ≤ l_max that twirling over ``group`` removes exactly.

    The G-twirled model f_G = (1/|G|) Σ_s s⁻¹ f(s·) has untwisted function h_G(g) = (1/|G|) Σ_s h(s g): on the
    degree-l component this averages the left factor D^l(s), i.e. projects onto the G-invariant vectors of
    D^l. Degrees with none (:func:`invariant_degrees` = 0) vanish; the others keep an n_l/(2l+1) part in general.
    Cube (24): 1, 2, 3, 5, 7, 11; icosahedral (60): 1–5, 7, 8, 9, 11, …"""
    dims = invariant_degrees(group, l_max)
    return tuple(deg for deg in range(1, int(l_max) + 1) if int(dims[deg]) == 0)


# --------------------------------------------------------------------------------------------------
# Per-element attribution
# --------------------------------------------------------------------------------------------------
def equiv_map(
    z: Mapping[str, torch.Tensor],
    term: LossTerm,
    target: Prediction,
    batch: Batch,
    exact_group: bool = False,
) -> dict[str, torch.Tensor]:
    """Where L_equiv lives inside a sample: for each weighted prediction key a tensor shaped like one prediction
    ``(B, ...)`` holding K/(K−1) · mean_k w_j (z_kj − z̄_j)² (no K/(K−1) with ``exact_group``), float64.

    Summed over every element of every key it is the U-statistic L_equiv per sample
    (:attr:`TermDecomposition.equiv_unbiased`); sum over the last axis for a per-atom / per-residue map."""
    w = quadratic_weights(term, target, batch)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, wk in w.items():
            if name not in z:
                raise KeyError(f"the loss term weighs prediction key {name!r}, but the untwisted predictions have only {sorted(z)}")
            zk = z[name].double()
            k = zk.shape[1]
            if k < 2:
                raise ValueError(f"equiv_map needs at least K = 2 rotations per sample, got {k}")
            spread = (zk - zk.mean(1, keepdim=True)).pow(2).mean(1)
            out[name] = wk.double().to(zk.device) * spread * (1.0 if exact_group else k / (k - 1))
    return out
