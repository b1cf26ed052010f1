"""Tests of :mod:`equivrepro.rotations`: Haar sampling, the exact finite subgroups and the actions.

Closed forms used below (derived in the docstrings so a reader can check them by hand):

* Every column of a Haar rotation is uniform on S², and a coordinate of a uniform point on S² is uniform
  on [-1, 1] (Archimedes). Hence ``E[R_ij] = 0``, ``Var R_ij = E[R_ij²] = 1/3`` and
  ``Var R_ij² = E[R_ij⁴] − 1/9 = 1/5 − 1/9 = 4/45``.
* The rotation angle ω of a Haar rotation has density ``(1 − cos ω)/π`` on [0, π], CDF ``(ω − sin ω)/π``.
* ``E[(tr R)^t]`` under Haar is the number of SO(3)-invariants in (R³)^{⊗t} (Riordan numbers
  1, 0, 1, 1, 3, 6, 15 for t = 0..6); a finite group G reproduces it iff G is a t-design for the
  representations in (R³)^{⊗t}. The cube group is a 3-design (its first invariant harmonic has l = 4) and
  the icosahedral group a 5-design (first invariant at l = 6).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

from equivrepro.rotations import (
    axis_angle_to_matrix,
    center_points,
    euler_uniform_rotations,
    fft_rotate_grid,
    fixed_rotation_set,
    haar_rotations,
    icosahedral_group,
    is_signed_permutation,
    nearest_cube_rotation,
    octahedral_group,
    permute_grid,
    quaternion_to_matrix,
    resample_grid,
    rotate_grid,
    rotate_points,
    rotation_angle,
    shear_factorization,
)

N_DRAWS = 20_000


def _angle_cdf(w: np.ndarray) -> np.ndarray:
    """CDF of the Haar rotation angle: ∫₀^ω (1 − cos t)/π dt = (ω − sin ω)/π."""
    return (w - np.sin(w)) / math.pi


def _haar_moment_of_trace(t: int) -> float:
    """E_Haar[(tr R)^t] = ∫₀^π (1 + 2 cos ω)^t (1 − cos ω)/π dω (class function integrated with Weyl's density)."""
    val, _ = scipy.integrate.quad(lambda w: (1 + 2 * math.cos(w)) ** t * (1 - math.cos(w)) / math.pi, 0.0, math.pi, epsabs=1e-13)
    return val


# --------------------------------------------------------------------------------------------------
# Haar sampler
# --------------------------------------------------------------------------------------------------
def test_haar_first_and_second_moments_within_5_sigma():
    """E[R_ij] = 0 (SE √(1/3n)) and E[R_ij²] = 1/3 (SE √(4/45n)), every entry within 5 SE at n = 20000.

    The Euler-uniform sampler fails the second-moment check by far (e.g. its R_31 = −sin b has
    E[sin² b] = 1/2), which shows the check has power.
    """
    r = haar_rotations(N_DRAWS, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    se1 = math.sqrt(1 / 3 / N_DRAWS)
    se2 = math.sqrt(4 / 45 / N_DRAWS)
    assert r.mean(0).abs().max() < 5 * se1
    assert (r.pow(2).mean(0) - 1 / 3).abs().max() < 5 * se2
    # entries are uniform on [-1, 1]
    assert scipy.stats.kstest(r[:, 2, 0].numpy(), "uniform", args=(-1, 2)).pvalue > 1e-3

    e = euler_uniform_rotations(N_DRAWS, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert (e.pow(2).mean(0) - 1 / 3).abs().max() > 20 * se2


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float64, 1e-14)])
def test_haar_rotations_are_proper_orthogonal(dtype, tol):
    r = haar_rotations(2000, generator=torch.Generator().manual_seed(1), dtype=dtype)
    assert r.dtype == dtype and r.shape == (2000, 3, 3)
    eye = torch.eye(3, dtype=dtype)
    assert (r.transpose(-1, -2) @ r - eye).abs().max() < tol
    assert (torch.linalg.det(r) - 1).abs().max() < tol


def test_angle_distribution_ks_haar_passes_euler_fails():
    """KS test of ω against F(ω) = (ω − sin ω)/π: Haar passes (p > 1e-3), Euler-uniform fails (p < 1e-6)."""
    haar = haar_rotations(N_DRAWS, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    euler = euler_uniform_rotations(N_DRAWS, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    p_haar = scipy.stats.kstest(rotation_angle(haar).numpy(), _angle_cdf).pvalue
    p_euler = scipy.stats.kstest(rotation_angle(euler).numpy(), _angle_cdf).pvalue
    assert p_haar > 1e-3, p_haar
    assert p_euler < 1e-6, p_euler


def test_sampling_is_reproducible_and_dtype_independent():
    a = haar_rotations(64, generator=torch.Generator().manual_seed(3))
    b = haar_rotations(64, generator=torch.Generator().manual_seed(3))
    c = haar_rotations(64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the draw happens in float64, so the float32 draw is the float64 draw rounded
    d64 = haar_rotations(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(a, d64.float())
    assert torch.equal(fixed_rotation_set(8, seed=2), fixed_rotation_set(8, seed=2))
    assert torch.equal(
        fixed_rotation_set(8, seed=2, dtype=torch.float64), haar_rotations(8, torch.Generator().manual_seed(2), torch.float64)
    )


def test_axis_angle_convention_and_double_cover():
    """Right-hand rule: +θ about z is [[c, −s, 0], [s, c, 0], [0, 0, 1]]; q and −q give the same matrix."""
    th = torch.tensor(0.7, dtype=torch.float64)
    rz = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64), th)
    c, s = math.cos(0.7), math.sin(0.7)
    expected = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(rz, expected, atol=1e-15)
    q = torch.randn(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(quaternion_to_matrix(q), quaternion_to_matrix(-q), atol=1e-15)
    angles = torch.linspace(0.01, math.pi - 0.01, 7, dtype=torch.float64)
    axes = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(rotation_angle(axis_angle_to_matrix(axes, angles)), angles, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# Exact finite subgroups
# --------------------------------------------------------------------------------------------------
def _assert_is_group(g: torch.Tensor, order: int):
    assert g.shape == (order, 3, 3)
    eye = torch.eye(3, dtype=torch.float64)
    assert (g.transpose(-1, -2) @ g - eye).abs().max() < 1e-12
    assert (torch.linalg.det(g) - 1).abs().max() < 1e-12
    flat = g.reshape(order, 9)
    dist = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    assert (dist + torch.eye(order, dtype=torch.float64) * 10).min() > 1e-3, "elements are not distinct"
    assert (flat - eye.reshape(9)).norm(dim=1).min() < 1e-12, "identity missing"
    prods = (g[:, None] @ g[None, :]).reshape(-1, 9)  # all order² products
    nearest = torch.cdist(prods, flat, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert nearest.max() < 1e-10, "not closed under multiplication"


def test_octahedral_group_is_the_24_cube_rotations():
    g = octahedral_group()
    _assert_is_group(g, 24)
    assert is_signed_permutation(g)
    assert g.mean(0).abs().max() < 1e-15


def test_icosahedral_group_is_a_group_of_60_with_the_right_classes():
    """Class census of I ≅ A5 by rotation angle: 1 identity, 12 at 72°, 12 at 144°, 20 at 120°, 15 at 180°."""
    g = icosahedral_group()
    _assert_is_group(g, 60)
    deg = torch.round(rotation_angle(g) * 180 / math.pi).long().tolist()
    census = {a: deg.count(a) for a in sorted(set(deg))}
    assert census == {0: 1, 72: 12, 120: 20, 144: 12, 180: 15}
    assert g.mean(0).abs().max() < 1e-14


@pytest.mark.parametrize("group_fn", [octahedral_group, icosahedral_group])
def test_group_second_moment_equals_haar(group_fn):
    """E[R ⊗ R]_{(i,k),(j,l)} = E[R_ij R_kl] = δ_ik δ_jl / 3 = (1/3)·vec(I) vec(I)ᵀ, the projection onto the
    conjugation-invariant matrices (multiples of I, by Schur's lemma since both groups act irreducibly)."""
    g = group_fn()
    second = torch.einsum("gij,gkl->ikjl", g, g).reshape(9, 9) / g.shape[0]
    vec_i = torch.eye(3, dtype=torch.float64).reshape(9)
    assert torch.allclose(second, torch.outer(vec_i, vec_i) / 3, atol=1e-14)


def test_designs_match_haar_trace_moments_up_to_their_strength():
    """Group averages of (tr R)^t equal the Haar values (Riordan numbers) up to t = 3 (cube), 5 (icosahedron),
    and differ one degree beyond; E[R_11⁴] is 1/5 under Haar and the icosahedral group, 1/3 under the cube group."""
    haar = [_haar_moment_of_trace(t) for t in range(7)]
    assert np.allclose(haar, [1, 0, 1, 1, 3, 6, 15], atol=1e-9)
    cube_tr = octahedral_group().diagonal(dim1=-2, dim2=-1).sum(-1)
    ico_tr = icosahedral_group().diagonal(dim1=-2, dim2=-1).sum(-1)
    for t in range(7):
        cube_m, ico_m = float(cube_tr.pow(t).mean()), float(ico_tr.pow(t).mean())
        assert (abs(cube_m - haar[t]) < 1e-10) == (t <= 3), (t, cube_m, haar[t])
        assert (abs(ico_m - haar[t]) < 1e-10) == (t <= 5), (t, ico_m, haar[t])
    assert float(icosahedral_group()[:, 0, 0].pow(4).mean()) == pytest.approx(1 / 5, abs=1e-12)
    assert float(octahedral_group()[:, 0, 0].pow(4).mean()) == pytest.approx(1 / 3, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------------
def test_rotate_points_row_convention_composition_and_isometry():
    gen = torch.Generator().manual_seed(0)
    rz90 = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), torch.tensor(math.pi / 2, dtype=torch.float64))
    ex = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)
    assert torch.allclose(rotate_points(ex, rz90[None]), torch.tensor([[[0.0, 1.0, 0.0]]], dtype=torch.float64), atol=1e-15)

    x = torch.randn(5, 7, 3, generator=gen, dtype=torch.float64)
    r1 = haar_rotations(5, gen, torch.float64)
    r2 = haar_rotations(5, gen, torch.float64)
    # per-sample: row p of sample b becomes r[b] p
    for b in range(5):
        assert torch.allclose(rotate_points(x, r1)[b], (r1[b] @ x[b].T).T, atol=1e-14)
    # first R1 then R2 is R2 R1
    assert torch.allclose(rotate_points(rotate_points(x, r1), r2), rotate_points(x, r2 @ r1), atol=1e-14)
    assert not torch.allclose(rotate_points(x, r2 @ r1), rotate_points(x, r1 @ r2), atol=1e-3)
    # distances are preserved, and Rᵀ undoes R
    y = rotate_points(x, r1)
    assert torch.allclose((y[:, :, None] - y[:, None]).norm(dim=-1), (x[:, :, None] - x[:, None]).norm(dim=-1), atol=1e-13)
    assert torch.allclose(rotate_points(rotate_points(x, r1), r1.transpose(-1, -2)), x, atol=1e-14)
    # one rotation broadcasts over the batch; float32 points with float64 rotations stay float32
    assert rotate_points(x.float(), r1[0]).dtype == torch.float32
    assert torch.allclose(rotate_points(x, r1[0]), rotate_points(x, r1[0].expand(5, 3, 3)))


def test_center_points_with_and_without_mask():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 3, generator=gen, dtype=torch.float64) + 5.0
    assert center_points(x).mean(1).abs().max() < 1e-14
    lengths = torch.tensor([6, 4, 1])
    mask = torch.arange(6)[None] < lengths[:, None]
    xp = x * mask[..., None]  # padded rows hold zeros, like pad_collate's output
    xp[1, 4:] = 99.0  # garbage in padding must not leak into the centroid
    c = center_points(xp, mask)
    for b, n in enumerate(lengths.tolist()):
        assert torch.allclose(c[b, :n], x[b, :n] - x[b, :n].mean(0), atol=1e-13)
        assert torch.equal(c[b, n:], torch.zeros_like(c[b, n:]))


# --------------------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------------------
_AXES = torch.eye(3, dtype=torch.float64)


def _quarter_turn(axis: int) -> torch.Tensor:
    return axis_angle_to_matrix(_AXES[axis], torch.tensor(math.pi / 2, dtype=torch.float64))


@pytest.mark.parametrize("size", [6, 7])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_quarter_turn_is_rot90_bit_for_bit(axis, size):
    """+90° about axis c, with (a, b, c) cyclic, maps e_a → e_b. Then (Rᵀp)_a = p_b, (Rᵀp)_b = −p_a, so
    out[.., i_a, i_b, ..] = u[.., i_b, L−1−i_a, ..] (index of −p is L−1−index), which is exactly
    ``torch.rot90(u, 1, dims=(a, b))`` (numpy/torch rot90: out[i, j] = m[j, N−1−i])."""
    a, b = (axis + 1) % 3, (axis + 2) % 3
    grid = torch.randn(2, 3, size, size, size, generator=torch.Generator().manual_seed(axis))
    r = _quarter_turn(axis)
    assert is_signed_permutation(r)
    out = rotate_grid(grid, r.expand(2, 3, 3))
    assert torch.equal(out, torch.rot90(grid, 1, dims=(2 + a, 2 + b)))
    # a single (3, 3) rotation is accepted, and the permutation is a group action (composition)
    assert torch.equal(rotate_grid(grid, r), out)
    r2 = _quarter_turn((axis + 1) % 3)
    assert torch.equal(rotate_grid(rotate_grid(grid, r), r2), rotate_grid(grid, r2 @ r))


def test_resample_agrees_with_permutation_for_all_cube_rotations():
    """For cube rotations the resampling points fall on voxel centres, so trilinear interpolation is exact
    up to coordinate round-off (float32: ~1e-5 of the values' scale; float64: ~1e-12)."""
    grid = torch.randn(24, 2, 8, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cube = octahedral_group()
    assert (resample_grid(grid, cube) - permute_grid(grid, cube)).abs().max() < 1e-10
    g32 = grid.float()
    assert (resample_grid(g32, cube.float()) - permute_grid(g32, cube.float())).abs().max() < 1e-5
    with pytest.raises(ValueError, match="signed-permutation"):
        permute_grid(grid[:1], haar_rotations(1, torch.Generator().manual_seed(0), torch.float64))


def _gaussian_blobs(size: int, sigma: float, centres: torch.Tensor, amps: list[float]) -> torch.Tensor:
    """Σ_i A_i exp(−|p − c_i|²/2σ²) on the centred voxel grid (voxel units), shape (1, 1, L, L, L), float64."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    p = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1)
    u = sum(a * torch.exp(-((p - c) ** 2).sum(-1) / (2 * sigma**2)) for c, a in zip(centres, amps))
    return u[None, None]


_CENTRES = torch.tensor([[4.0, -3.0, 2.0], [-5.0, 2.0, -1.0], [0.0, 5.0, -4.0]], dtype=torch.float64)
_AMPS = [1.0, 0.7, 0.5]


def _round_trip_errors(size: int, sigma: float, r: torch.Tensor) -> tuple[float, float, float]:
    u = _gaussian_blobs(size, sigma, _CENTRES, _AMPS)
    back = resample_grid(resample_grid(u, r), r.transpose(-1, -2))
    err = back - u
    return float(err.abs().max()), float(err.norm() / u.norm()), float(u.max())


def test_resample_round_trip_of_smooth_density_is_within_interpolation_error():
    """Trilinear interpolation (voxel size h = 1) of f errs by at most (h²/8)(‖f_xx‖∞ + ‖f_yy‖∞ + ‖f_zz‖∞) per
    pass, and a Gaussian of amplitude A has ‖f_xx‖∞ = A/σ²: two passes give max error ≤ (3/4) Σ A_i / σ².
    On average a pass smooths by (h²/12)∇²f; for one Gaussian ‖∇²f‖₂/‖f‖₂ = √(15/4)/σ², so the round trip's
    relative L2 error is ≈ 2·(1/12)·√(15/4)/σ² = √15/(12σ²) (we allow 25 % above it), i.e. it shrinks as 1/σ².
    At σ = 6 voxels in a 48³ box this is ≤ 2 % of the peak (max) and ≤ 1 % (relative L2)."""
    r = haar_rotations(1, torch.Generator().manual_seed(7), torch.float64)
    rel = {}
    for sigma in (2.0, 4.0):
        max_err, rel_l2, _ = _round_trip_errors(32, sigma, r)
        assert max_err <= 0.75 * sum(_AMPS) / sigma**2
        assert rel_l2 <= 1.25 * math.sqrt(15) / (12 * sigma**2), (sigma, rel_l2)
        rel[sigma] = rel_l2
    assert 3.0 < rel[2.0] / rel[4.0] < 5.5  # second-order convergence (a half-voxel offset would give ~2)
    max_err, rel_l2, peak = _round_trip_errors(48, 6.0, r)
    assert max_err <= 0.02 * peak and rel_l2 <= 0.01


def test_rotated_blob_lands_where_rotate_points_puts_its_centre():
    """The density rotated by R (out(p) = u(Rᵀp)) has its centre of mass at R c, not Rᵀ c."""
    c = torch.tensor([[5.0, -3.0, 2.0]], dtype=torch.float64)
    u = _gaussian_blobs(32, 2.5, c, [1.0])
    r = haar_rotations(1, torch.Generator().manual_seed(2), torch.float64)
    expected = rotate_points(c[None], r)[0, 0]
    wrong = rotate_points(c[None], r.transpose(-1, -2))[0, 0]
    assert (expected - wrong).norm() > 2.0  # the check below can tell the two conventions apart
    out = rotate_grid(u, r)[0, 0]
    ax = torch.arange(32, dtype=torch.float64) - 15.5
    p = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1)
    com = (out[..., None] * p).sum((0, 1, 2)) / out.sum()
    assert (com - expected).norm() < 0.1, (com, expected)


# --------------------------------------------------------------------------------------------------
# The orthogonal Fourier-shear rotation (mode="fft")
# --------------------------------------------------------------------------------------------------
def _operator_matrix(size: int, r: torch.Tensor, mode: str = "fft", inverse: bool = False) -> torch.Tensor:
    """The ``(L³, L³)`` matrix of a grid rotation, column m = image of the m-th unit grid (float64)."""
    n = size**3
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, size, size, size)
    out = rotate_grid(basis, r.expand(n, 3, 3), mode=mode, inverse=inverse)
    return out.reshape(n, n).T


@pytest.mark.parametrize("size", [7, 8])
def test_fft_rotation_is_an_orthogonal_operator_with_an_exact_inverse(size):
    """O(R) as a matrix on a 7³ / 8³ grid (odd and even L: the even one has a Nyquist bin): OᵀO = 1 to round-off
    (1e-12), so rotated white noise has identity covariance and every voxel keeps its variance (row norms 1);
    inverse=True gives O⁻¹ exactly. The operator of Rᵀ is *not* the inverse (differs by > 0.1 in some entry),
    and trilinear resampling is far from orthogonal (its row norms — per-voxel variances of rotated unit noise —
    fall to ≈ 0.3 in the interior)."""
    r = haar_rotations(1, torch.Generator().manual_seed(size), torch.float64)
    assert not is_signed_permutation(r)
    eye = torch.eye(size**3, dtype=torch.float64)
    o = _operator_matrix(size, r)
    assert (o.T @ o - eye).abs().max() < 1e-12
    assert (o @ o.T - eye).abs().max() < 1e-12  # covariance of O ε for ε ~ N(0, 1)
    o_inv = _operator_matrix(size, r, inverse=True)
    assert (o_inv @ o - eye).abs().max() < 1e-12
    assert (_operator_matrix(size, r.transpose(-1, -2)) - o_inv).abs().max() > 0.1
    bilinear = _operator_matrix(size, r, mode="bilinear")
    assert (bilinear.pow(2).sum(1) - 1).abs().max() > 0.5


def test_fft_rotated_white_noise_keeps_per_voxel_variance():
    """Monte Carlo at 16³ with n = 400 draws of unit white noise under one Haar rotation: the mean per-voxel variance
    is 1 within 0.01 (SE √(2/(n L³)) ≈ 1e-3), every voxel's variance within the χ² band 1 ± 6·√(2/n) = 1 ± 0.42, and
    the lag-1 correlation along each axis is within ±0.01 of 0 (SE ≈ 8e-4). Trilinear resampling fails all three:
    mean variance ≈ 0.3 and strong neighbour correlation (it blends 8 voxels)."""
    n, size = 400, 16
    r = haar_rotations(1, torch.Generator().manual_seed(3), torch.float64).expand(n, 3, 3)
    eps = torch.randn(n, 1, size, size, size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    stats = {}
    for mode in ("fft", "bilinear"):
        out = rotate_grid(eps, r, mode=mode)[:, 0]
        var = out.var(dim=0)
        lag = [float((out * out.roll(1, dims=1 + a)).mean() / out.pow(2).mean()) for a in range(3)]
        stats[mode] = (float(var.mean()), float(var.min()), float(var.max()), max(abs(c) for c in lag))
    mean, lo, hi, corr = stats["fft"]
    band = 6 * math.sqrt(2 / n)
    assert abs(mean - 1) < 0.01 and 1 - band < lo and hi < 1 + band and corr < 0.01, stats["fft"]
    mean_b, _, _, corr_b = stats["bilinear"]
    assert mean_b < 0.6 and corr_b > 0.1, stats["bilinear"]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fft_rotate_then_unrotate_is_the_identity_to_round_off(dtype, tol):
    """``rotate_grid(rotate_grid(u, R, 'fft'), R, 'fft', inverse=True) == u`` up to round-off (relative to max |u|) for
    a batch of Haar rotations at 32³ — exact in exact arithmetic — while the bilinear round trip (by Rᵀ) loses ≥ 30 %
    of white noise's norm."""
    g = torch.Generator().manual_seed(5)
    u = torch.randn(3, 2, 32, 32, 32, generator=g, dtype=torch.float64).to(dtype)
    r = haar_rotations(3, g, dtype)
    back = rotate_grid(rotate_grid(u, r, mode="fft"), r, mode="fft", inverse=True)
    assert back.dtype == dtype
    assert (back - u).abs().max() / u.abs().max() < tol
    lossy = rotate_grid(rotate_grid(u, r, mode="bilinear"), r, mode="bilinear", inverse=True)
    assert float(lossy.norm() / u.norm()) < 0.7


def test_fft_mode_keeps_cube_rotations_bit_exact_permutations():
    """All 24 cube rotations are index permutations in fft mode too (bit for bit, forward and inverse), also when
    a batch mixes cube and generic rotations (the cube samples are left untouched by the shears)."""
    grid = torch.randn(24, 2, 8, 8, 8, generator=torch.Generator().manual_seed(6))
    cube = octahedral_group(dtype=torch.float32)
    assert torch.equal(rotate_grid(grid, cube, mode="fft"), permute_grid(grid, cube))
    assert torch.equal(rotate_grid(grid, cube, mode="fft", inverse=True), permute_grid(grid, cube.transpose(-1, -2)))
    mixed = cube.clone()
    mixed[::2] = haar_rotations(12, torch.Generator().manual_seed(7))
    out = rotate_grid(grid, mixed, mode="fft")
    assert torch.equal(out[1::2], permute_grid(grid[1::2], cube[1::2]))
    assert not torch.allclose(out[::2], grid[::2], atol=1e-2)


def test_shear_factorization_reconstructs_the_rotation():
    """r = C · Rx(a) Ry(b) Rz(c) with C a cube rotation and every angle below 56° (so every shear amount tan(θ/2),
    sin θ stays below 0.53, 0.83), over 5000 Haar draws."""
    r = haar_rotations(5000, torch.Generator().manual_seed(8), torch.float64)
    cube, ang = shear_factorization(r)
    assert is_signed_permutation(cube) and torch.allclose(torch.linalg.det(cube), torch.ones(5000, dtype=torch.float64))
    assert float(ang.abs().max()) < math.radians(56)
    ex, ey, ez = _AXES
    a, b, c = ang.unbind(-1)
    turn = lambda axis, angle: axis_angle_to_matrix(axis.expand(5000, 3), angle)  # noqa: E731
    rebuilt = cube @ turn(ex, a) @ turn(ey, b) @ turn(ez, c)
    assert (rebuilt - r).abs().max() < 1e-12
    assert torch.equal(nearest_cube_rotation(cube), cube)


def test_fft_rotation_of_a_smooth_density_matches_the_rotated_density():
    """Gaussian blobs (inside the box's inscribed ball) rotated by O(R) against the analytically rotated blobs at 32³:
    relative L2 error ≤ 1e-3 at σ = 1.5 voxels and ≤ 1e-6 at σ = 2 (the blobs are then band-limited to round-off;
    measured 4e-5 and 7e-8), against ≥ 3 % for trilinear resampling. The blob lands at R c (not Rᵀ c)."""
    g = torch.Generator().manual_seed(9)
    for sigma, tol in ((1.5, 1e-3), (2.0, 1e-6)):
        r = haar_rotations(1, g, torch.float64)
        u = _gaussian_blobs(32, sigma, _CENTRES, _AMPS)
        exact = _gaussian_blobs(32, sigma, rotate_points(_CENTRES[None], r)[0], _AMPS)
        fft_err = float((rotate_grid(u, r, mode="fft") - exact).norm() / exact.norm())
        bil_err = float((rotate_grid(u, r, mode="bilinear") - exact).norm() / exact.norm())
        assert fft_err <= tol and bil_err >= 0.03, (sigma, fft_err, bil_err)
    wrong = _gaussian_blobs(32, 2.0, rotate_points(_CENTRES[None], r.transpose(-1, -2))[0], _AMPS)
    assert float((rotate_grid(u, r, mode="fft") - wrong).norm() / wrong.norm()) > 0.5


def test_grid_rotation_mode_is_validated():
    with pytest.raises(ValueError, match="mode"):
        rotate_grid(torch.zeros(1, 1, 4, 4, 4), haar_rotations(1, torch.Generator().manual_seed(0)), mode="cubic")
    with pytest.raises(ValueError, match="cubic grid"):
        fft_rotate_grid(torch.zeros(1, 1, 4, 4, 5), haar_rotations(1, torch.Generator().manual_seed(0)))
