"""Stochastic Lanczos quadrature, effective ranks, κ over resolved eigenvalues and the spectrum comparison, on matrices
whose eigenvalues are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from equivrepro.analysis.spectral import (
    SpectralDensity,
    effective_ranks,
    resolved_condition,
    spectrum_distance,
    stochastic_lanczos_quadrature,
)


def _known_matrix(eigs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q diag(eigs) Qᵀ with a random orthogonal Q."""
    q, _ = torch.linalg.qr(torch.randn(eigs.numel(), eigs.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(eigs) @ q.T


def _eigs(n: int = 60) -> torch.Tensor:
    # two clusters over four decades, a few negative values
    g = torch.Generator().manual_seed(1)
    pos = 10 ** torch.empty(n - 8, dtype=torch.float64).uniform_(-4, 0, generator=g)
    neg = -(10 ** torch.empty(8, dtype=torch.float64).uniform_(-3, -1, generator=g))
    return torch.cat([pos, neg])


def test_slq_integrates_to_the_dimension_and_recovers_the_moments():
    eigs = _eigs()
    a = _known_matrix(eigs)
    dens, runs = stochastic_lanczos_quadrature(lambda v: a @ v, a.shape[0], steps=30, probes=12, generator=torch.Generator().manual_seed(2))
    assert dens.integral() == pytest.approx(a.shape[0], rel=1e-12)
    assert len(runs) == 12 and all(r.steps == 30 for r in runs)
    # tr(A) and tr(A²) are quadratic forms, estimated exactly per probe (degree < 2m) and unbiased over Rademacher probes,
    # whose variance is ≤ 2‖f(A)‖_F² per probe: within 4 standard deviations
    for f, f_eigs in ((lambda x: x, eigs), (lambda x: x**2, eigs**2)):
        sd = math.sqrt(2 * float((f_eigs**2).sum()) / 12)
        assert abs(dens.trace(f) - float(f_eigs.sum())) < 4 * sd
    # the extreme Ritz values of every probe are the extreme eigenvalues
    assert float(runs[0].values.max()) == pytest.approx(float(eigs.max()), rel=1e-8)


def test_broadened_density_matches_the_exact_eigenvalues_of_a_known_matrix():
    """SLQ with m = n steps per probe is exact on each probe (Ritz values = eigenvalues); the broadened curve on a
    log10|λ| axis then agrees with the broadened exact spectrum up to the probe noise of the weights."""
    eigs = _eigs()
    a = _known_matrix(eigs)
    n = a.shape[0]
    dens, _ = stochastic_lanczos_quadrature(lambda v: a @ v, n, steps=n, probes=40, generator=torch.Generator().manual_seed(3))
    exact = SpectralDensity.from_eigenvalues(eigs)
    grid = np.linspace(-6, 1, 701)
    got, want = dens.broadened(grid, 0.25, log=True), exact.broadened(grid, 0.25, log=True)
    step = grid[1] - grid[0]
    # integrals: eigenvalues counted on each side of zero
    assert want["positive"].sum() * step == pytest.approx(n - 8, abs=0.05)
    assert want["negative"].sum() * step == pytest.approx(8, abs=0.05)
    assert (got["positive"].sum() + got["negative"].sum()) * step + got["zero"] == pytest.approx(n, abs=0.05)
    # the curves: L1 distance a small fraction of the mass (the probe noise of τ²)
    l1 = (np.abs(got["positive"] - want["positive"]).sum() + np.abs(got["negative"] - want["negative"]).sum()) * step
    assert l1 < 0.15 * n
    # … and the comparison can fail: another spectrum of the same size is far away
    shifted = SpectralDensity.from_eigenvalues(eigs * 10).broadened(grid, 0.25, log=True)
    assert (np.abs(shifted["positive"] - want["positive"]).sum() + np.abs(shifted["negative"] - want["negative"]).sum()) * step > 0.5 * n
    # linear axis: the broadened density integrates to n
    lin = np.linspace(-1, 2, 3001)
    assert dens.broadened(lin, 0.01)["density"].sum() * (lin[1] - lin[0]) == pytest.approx(n, rel=1e-3)


def test_effective_ranks_of_known_spectra():
    r = effective_ranks([3.0] * 5 + [0.0] * 20)
    assert r["trace_rank"] == pytest.approx(5.0) and r["entropy_rank"] == pytest.approx(5.0) and r["negative_mass"] == 0.0
    # geometric spectrum λ_i = q^i: trace rank (Σq^i)²/Σq^{2i}, entropy rank from p_i = q^i (1−q)
    q, n = 0.5, 40
    lam = q ** np.arange(n)
    r = effective_ranks(lam)
    p = lam / lam.sum()
    assert r["trace_rank"] == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-12)
    assert r["trace_rank"] == pytest.approx((1 + q) / (1 - q), rel=1e-6)  # = 3
    assert r["entropy_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    # sign does not change the ranks, and the negative share is reported
    r2 = effective_ranks(np.concatenate([lam, -lam]))
    assert r2["trace_rank"] == pytest.approx(2 * r["trace_rank"]) and r2["negative_mass"] == pytest.approx(0.5)
    # SLQ estimates of the ranks of a known matrix are close to the exact ones
    eigs = torch.tensor(np.concatenate([lam[:20], np.zeros(10)]))
    a = _known_matrix(eigs, seed=4)
    dens, _ = stochastic_lanczos_quadrature(lambda v: a @ v, 30, steps=30, probes=30, generator=torch.Generator().manual_seed(5))
    exact = effective_ranks(eigs)
    assert dens.ranks()["trace_rank"] == pytest.approx(exact["trace_rank"], rel=0.2)


def test_kappa_uses_resolved_eigenvalues_only():
    vals = torch.tensor([-0.5, 1e-3, 0.1, 1.0, 10.0], dtype=torch.float64)
    res = torch.tensor([1e-6, 1e-3, 1e-6, 0.5, 1e-6], dtype=torch.float64)  # 1e-3 and 1.0 are not known to 0.1 %
    c = resolved_condition(vals, res, rtol=1e-3)
    assert c["n_resolved"] == 3 and c["n_resolved_positive"] == 2 and c["n_resolved_negative"] == 1
    assert c["kappa"] == pytest.approx(10.0 / 0.1) and c["lambda_min_pos"] == pytest.approx(0.1)
    # exact eigenvalues: everything above the round-off bound counts, a numerically zero one does not
    e = resolved_condition(torch.tensor([1e-17, 1e-6, 1.0], dtype=torch.float64), None, n=3)
    assert e["n_resolved_positive"] == 2 and e["kappa"] == pytest.approx(1e6)


def test_spectrum_distance_ignores_scale_and_multiplicity_but_not_shape():
    a = np.array([4.0, 2.0, 1.0, 0.1])
    tied = np.repeat(3.0 * a, 2)  # the linear-head case: same values, doubled multiplicity, another scale
    d = spectrum_distance(a, tied)
    assert d["distance"] < 1e-12 and d["compared_a"] == 3
    other = np.array([4.0, 3.0, 1.0, 0.1])
    assert spectrum_distance(a, other)["distance"] == pytest.approx(math.log10(3.0 / 2.0), rel=1e-9)
    # a truncated list of repeated values is compared only over the range it reaches
    assert spectrum_distance(a, np.repeat(a, 2)[:5])["distance"] < 1e-12
