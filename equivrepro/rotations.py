"""Rotations of SO(3): sampling, exact finite subgroups and their actions on 3-D data.

Conventions (used everywhere in equivrepro):

* A rotation is a ``(3, 3)`` orthogonal matrix ``R`` with ``det R = +1``; batches are ``(..., 3, 3)``.
* Points and vectors are **row vectors**: a point cloud ``x`` of shape ``(..., N, 3)`` rotates as
  ``x' = x @ R.T`` (each row ``p`` becomes ``R p``). Per-atom vectors (forces, velocities) transform the
  same way, so one function, :func:`rotate_points`, serves both.
* A voxel grid ``u`` of shape ``(..., C, L, L, L)`` is a field sampled at voxel centres
  ``p(i, j, k) = (i - c, j - c, k - c) * resolution`` with ``c = (L - 1) / 2`` (the box centre is the
  origin). Rotating the field gives ``(R·u)(p) = u(Rᵀ p)``, which is what :func:`rotate_grid` computes.
  Axis 0 of the spatial block is x, axis 1 is y, axis 2 is z.
* Three ways to rotate a grid by a non-cube rotation (``rotate_grid(..., mode=...)``): ``'fft'``, a real
  orthogonal operator built from Fourier (sinc-interpolation) shears of the periodic grid, whose inverse is
  exact (:func:`fft_rotate_grid`; use it whenever the grid carries noise or must be rotated back);
  ``'bilinear'`` (trilinear resampling, lossy: it smooths and is not invertible) and ``'nearest'``.
  The 24 cube rotations are exact index permutations in every mode.

Samplers take an explicit :class:`torch.Generator` so evaluation is reproducible from a seed.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "haar_rotations",
    "euler_uniform_rotations",
    "fixed_rotation_set",
    "quaternion_to_matrix",
    "axis_angle_to_matrix",
    "rotation_angle",
    "octahedral_group",
    "icosahedral_group",
    "is_signed_permutation",
    "rotate_points",
    "center_points",
    "rotate_grid",
    "permute_grid",
    "resample_grid",
    "fft_rotate_grid",
    "nearest_cube_rotation",
    "shear_factorization",
    "GRID_ROTATION_MODES",
]

#: The values of ``rotate_grid(..., mode=...)``.
GRID_ROTATION_MODES = ("fft", "bilinear", "nearest")


# --------------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------------
def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` in (w, x, y, z) order → rotation matrices ``(..., 3, 3)``."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    two = 2.0
    m = torch.stack(
        [
            1 - two * (y * y + z * z),
            two * (x * y - z * w),
            two * (x * z + y * w),
            two * (x * y + z * w),
            1 - two * (x * x + z * z),
            two * (y * z - x * w),
            two * (x * z - y * w),
            two * (y * z + x * w),
            1 - two * (x * x + y * y),
        ],
        dim=-1,
    )
    return m.reshape(q.shape[:-1] + (3, 3))


def axis_angle_to_matrix(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotation by ``angle`` (radians, shape ``(...)``) about unit ``axis`` ``(..., 3)`` (Rodrigues)."""
    axis = axis / axis.norm(dim=-1, keepdim=True)
    half = angle[..., None] / 2
    q = torch.cat([torch.cos(half), torch.sin(half) * axis], dim=-1)
    return quaternion_to_matrix(q)


def haar_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` rotations drawn i.i.d. from the Haar (uniform) measure on SO(3), shape ``(n, 3, 3)``.

    A normalised standard-normal 4-vector is uniform on S³, and S³ → SO(3) is a 2:1 cover that pushes
    the uniform measure to Haar. Sampling happens in float64 on the CPU generator, so the draw for a
    given seed does not depend on ``dtype`` or ``device``.
    """
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return quaternion_to_matrix(q).to(dtype=dtype, device=device)


def euler_uniform_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``Rz(a) Ry(b) Rx(c)`` with ``a, b, c ~ U[0, 2π)`` i.i.d. — **not** Haar-uniform.

    This is VoxMol's training-augmentation sampler. It is kept only so tests can show that it fails
    the Haar checks and so that experiments can replicate it deliberately.
    """
    ang = torch.rand(n, 3, generator=generator, dtype=torch.float64) * (2 * math.pi)
    ex, ey, ez = torch.eye(3, dtype=torch.float64).unbind(0)
    rx = axis_angle_to_matrix(ex.expand(n, 3), ang[:, 2])
    ry = axis_angle_to_matrix(ey.expand(n, 3), ang[:, 1])
    rz = axis_angle_to_matrix(ez.expand(n, 3), ang[:, 0])
    return (rz @ ry @ rx).to(dtype=dtype, device=device)


def fixed_rotation_set(k: int, seed: int = 0, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """A deterministic set of ``k`` Haar rotations ``(k, 3, 3)``: the same for a given seed on any machine."""
    g = torch.Generator().manual_seed(int(seed))
    return haar_rotations(k, generator=g, dtype=dtype, device=device)


def rotation_angle(r: torch.Tensor) -> torch.Tensor:
    """Rotation angle ω ∈ [0, π] of ``(..., 3, 3)`` matrices, from ``tr R = 1 + 2 cos ω``."""
    tr = r.diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.arccos(((tr - 1) / 2).clamp(-1.0, 1.0))


# --------------------------------------------------------------------------------------------------
# Exact finite subgroups
# --------------------------------------------------------------------------------------------------
def octahedral_group(dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The 24 rotations of the cube (signed permutation matrices with det +1), ``(24, 3, 3)``."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = torch.zeros(3, 3, dtype=torch.float64)
            for row, (col, s) in enumerate(zip(perm, signs)):
                m[row, col] = s
            if torch.det(m) > 0:
                mats.append(m)
    out = torch.stack(mats)
    assert out.shape[0] == 24
    return out.to(dtype=dtype, device=device)


def _close_group(generators: list[torch.Tensor], max_size: int) -> torch.Tensor:
    """Closure of a set of rotations under multiplication (float64, dedup to 1e-8)."""
    elems = [torch.eye(3, dtype=torch.float64)]
    frontier = list(elems)
    while frontier:
        new = []
        for a in frontier:
            for g in generators:
                c = g @ a
                if all((c - e).abs().max() > 1e-8 for e in elems):
                    elems.append(c)
                    new.append(c)
        frontier = new
        if len(elems) > max_size:
            raise RuntimeError("group closure exceeded the expected order")
    return torch.stack(elems)


def icosahedral_group(dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The 60 rotations of the icosahedron, ``(60, 3, 3)``, generated by a 5-fold and a 3-fold axis."""
    phi = (1 + math.sqrt(5)) / 2
    five = axis_angle_to_matrix(torch.tensor([0.0, 1.0, phi], dtype=torch.float64), torch.tensor(2 * math.pi / 5, dtype=torch.float64))
    three = axis_angle_to_matrix(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), torch.tensor(2 * math.pi / 3, dtype=torch.float64))
    out = _close_group([five, three], max_size=60)
    assert out.shape[0] == 60, out.shape
    return out.to(dtype=dtype, device=device)


def is_signed_permutation(r: torch.Tensor, atol: float = 1e-6) -> bool:
    """True if every matrix in ``(..., 3, 3)`` is a signed permutation (a cube rotation or reflection)."""
    rounded = r.round()
    if (r - rounded).abs().max() > atol:
        return False
    return bool(((rounded.abs().sum(-1) == 1) & (rounded.abs().sum(-2) == 1)).all())


# --------------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------------
def rotate_points(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Rotate row-vector points or vectors ``x (..., N, 3)`` by ``r (..., 3, 3)``: ``x @ rᵀ``.

    ``r`` broadcasts over the leading dimensions of ``x`` (one rotation per sample: ``r (B, 3, 3)``
    with ``x (B, N, 3)``). Units are whatever ``x`` carries (Å, nm, eV/Å, …).
    """
    return x @ r.transpose(-1, -2).to(x.dtype)


def center_points(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Subtract the (masked) centroid: ``x (B, N, 3)``, ``mask (B, N)`` bool → centred ``x``.

    Padded rows are returned as zeros.
    """
    if mask is None:
        return x - x.mean(dim=-2, keepdim=True)
    m = mask.to(x.dtype)[..., None]
    c = (x * m).sum(-2, keepdim=True) / m.sum(-2, keepdim=True).clamp_min(1.0)
    return (x - c) * m


def _centered_index_grid(size: int, dtype, device) -> torch.Tensor:
    """Centred integer-or-half-integer voxel coordinates ``(L, L, L, 3)`` with centre (L−1)/2 at 0."""
    ax = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    return torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1)


def permute_grid(grid: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Exact rotation of cubic grids by signed-permutation rotations: a pure index permutation.

    ``grid (B, C, L, L, L)``, ``r (B, 3, 3)`` each a cube rotation. Output voxel ``c'`` takes the value
    of input voxel ``rᵀ c'`` (centred coordinates), so no interpolation happens and values are copied
    bit for bit.
    """
    b, c, l1, l2, l3 = grid.shape
    if not (l1 == l2 == l3):
        raise ValueError(f"permute_grid needs a cubic grid, got spatial shape {(l1, l2, l3)}")
    if not is_signed_permutation(r):
        raise ValueError("permute_grid needs signed-permutation rotations (the 24 cube rotations)")
    size = l1
    coords = _centered_index_grid(size, torch.float64, grid.device).reshape(-1, 3)  # (L³, 3)
    src = coords @ r.round().to(device=grid.device, dtype=torch.float64)  # row c'·R = (Rᵀ c')ᵀ ; (B, L³, 3)
    idx = (src + (size - 1) / 2).round().long()
    flat = (idx[..., 0] * size + idx[..., 1]) * size + idx[..., 2]  # (B, L³)
    out = torch.gather(grid.reshape(b, c, -1), 2, flat[:, None, :].expand(b, c, -1))
    return out.reshape(grid.shape)


def resample_grid(grid: torch.Tensor, r: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Rotate cubic grids about their centre by trilinear resampling: ``out(p) = grid(rᵀ p)``.

    ``grid (B, C, L, L, L)``, ``r (B, 3, 3)``. Values sampled outside the box are 0. The map is lossy
    (interpolation smooths); :mod:`equivrepro.metrics` measures the resulting floor.
    """
    b, c, l1, l2, l3 = grid.shape
    size = l1
    coords = _centered_index_grid(size, grid.dtype, grid.device).reshape(-1, 3)  # output centres
    src = coords @ r.to(grid.dtype)  # (B, L³, 3): rᵀ p as rows
    # grid_sample normalised coordinates (align_corners=True): -1 ↔ index 0, +1 ↔ index L-1.
    norm = src / ((size - 1) / 2)
    # grid_sample's last axis is (x→W, y→H, z→D); our spatial axes are (0, 1, 2) = (D, H, W).
    gs = norm.flip(-1).reshape(b, size, size, size, 3)
    return F.grid_sample(grid, gs, mode=mode, padding_mode="zeros", align_corners=True)


# --------------------------------------------------------------------------------------------------
# Unitary (Fourier-shear) rotation of periodic grids
# --------------------------------------------------------------------------------------------------
def nearest_cube_rotation(r: torch.Tensor) -> torch.Tensor:
    """The cube rotation ``C`` closest to each ``r (B, 3, 3)`` (largest ``tr(Cᵀ r)``), ``(B, 3, 3)`` in ``r``'s dtype.

    The residual ``Cᵀ r`` then turns by at most ≈ 62.8° (the covering radius of the cube group; 62.5° over
    2·10⁵ Haar draws). Ties go to the first group element, so the choice is a deterministic function of ``r``.
    """
    cube = octahedral_group(dtype=torch.float64, device=r.device)
    best = torch.einsum("bij,cij->bc", r.to(torch.float64), cube).argmax(dim=1)
    return cube[best].to(r.dtype)


def shear_factorization(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``r = C · Rx(a) Ry(b) Rz(c)``: the nearest cube rotation ``C (B, 3, 3)`` and the residual's Tait–Bryan
    angles ``(a, b, c)`` as ``(B, 3)`` radians (float64), each below ≈ 55° for any ``r`` (the residual is within
    62.8° of the identity, so ``|b| < 90°`` and the decomposition is regular)."""
    cube = nearest_cube_rotation(r.to(torch.float64))
    res = cube.transpose(-1, -2) @ r.to(torch.float64)
    a = torch.atan2(-res[:, 1, 2], res[:, 2, 2])
    b = torch.asin(res[:, 0, 2].clamp(-1.0, 1.0))
    c = torch.atan2(-res[:, 0, 1], res[:, 0, 0])
    return cube, torch.stack([a, b, c], dim=-1)


def _fourier_shift(grid: torch.Tensor, axis: int, tau: torch.Tensor) -> torch.Tensor:
    """Periodic sinc-interpolation shift ``out[n] = u[n − τ]`` along spatial ``axis`` of ``grid (B, C, L, L, L)``.

    ``tau`` broadcasts against the spatial block as ``(B, 1, L, L, L)``-compatible (voxels). In Fourier space the
    shift multiplies frequency ``k`` by ``exp(−2πi k τ / L)``; for even ``L`` the Nyquist bin (the real mode
    ``(−1)ⁿ``, whose exact shift ``cos(π(n − τ)) = (−1)ⁿ cos πτ`` is not unitary) is multiplied by the nearest
    unit real number, ``sign(cos πτ) = (−1)^round(τ)``. Every multiplier is Hermitian and of modulus 1, so the
    operator is real and orthogonal, and the shift by ``−τ`` is its exact inverse (``round`` is odd).
    """
    dim = 2 + axis
    size = grid.shape[dim]
    spec = torch.fft.rfft(grid, dim=dim)
    k = torch.arange(size // 2 + 1, dtype=torch.float64, device=grid.device)
    shape = [1] * grid.dim()
    shape[dim] = k.numel()
    k = k.reshape(shape)
    tau = tau.to(torch.float64)
    phase = torch.polar(torch.ones_like(tau * k), -2 * math.pi * k * tau / size)
    if size % 2 == 0:
        nyq = torch.where(torch.round(tau) % 2 == 0, 1.0, -1.0).to(phase.dtype)
        phase = torch.cat([phase.narrow(dim, 0, size // 2), nyq.expand_as(phase.narrow(dim, size // 2, 1))], dim=dim)
    return torch.fft.irfft(spec * phase.to(spec.dtype), n=size, dim=dim)


def _axis_coordinate(size: int, axis: int, device) -> torch.Tensor:
    """Centred voxel coordinate along spatial ``axis`` shaped to broadcast as ``(1, 1, L, L, L)`` (float64)."""
    shape = [1, 1, 1, 1, 1]
    shape[2 + axis] = size
    return (torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2).reshape(shape)


def _planar_rotation(grid: torch.Tensor, i: int, j: int, theta: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Rotate ``grid (B, C, L, L, L)`` by ``theta (B,)`` in the plane of spatial axes ``(i, j)`` (e_i → cos θ e_i + sin θ e_j).

    ``R(θ) = X Y X`` with the shear matrices ``X = [[1, −t], [0, 1]]``, ``Y = [[1, 0], [s, 1]]``, ``t = tan(θ/2)``,
    ``s = sin θ``; the field map of a matrix ``M`` is ``u ↦ u(M⁻¹ ·)``, so ``X`` shifts along ``i`` by ``τ = −t p_j`` and
    ``Y`` along ``j`` by ``τ = s p_i``. ``inverse`` applies the three shears in reverse order with negated amounts (the
    sequence is a palindrome, so the order is the same). Samples with ``θ = 0`` are passed through untouched.
    """
    moving = theta != 0
    if not bool(moving.any()):
        return grid
    idx = moving.nonzero().squeeze(1)
    u = grid[idx]
    th = theta[idx].reshape(-1, 1, 1, 1, 1)
    size = grid.shape[2]
    pi, pj = _axis_coordinate(size, i, grid.device), _axis_coordinate(size, j, grid.device)
    t, s = torch.tan(th / 2), torch.sin(th)
    sign = -1.0 if inverse else 1.0
    # field of X(t) = [[1, −t], [0, 1]]: u(p_i + t p_j, p_j) = shift along i by τ = −t p_j;
    # field of Y(s) = [[1, 0], [s, 1]]: u(p_i, p_j − s p_i) = shift along j by τ = s p_i.
    u = _fourier_shift(u, i, sign * (-t * pj))
    u = _fourier_shift(u, j, sign * (s * pi))
    u = _fourier_shift(u, i, sign * (-t * pj))
    out = grid.clone()
    out[idx] = u.to(grid.dtype)
    return out


def fft_rotate_grid(grid: torch.Tensor, r: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate periodic voxel fields ``grid (B, C, L, L, L)`` by ``r (B, 3, 3)`` with a real orthogonal operator ``O(r)``.

    **Construction.** ``r = C · Rx(a) Ry(b) Rz(c)`` (:func:`shear_factorization`): ``C`` is the nearest cube rotation,
    applied as an exact index permutation (:func:`permute_grid`), and each of the three residual planar rotations
    (angles below ≈ 55°) is factored into three 1-D shears (Paeth / Unser, ``R(θ) = X Y X`` with amounts
    ``tan(θ/2)``, ``sin θ`` ≤ 0.52, 0.82), each applied along its axis by periodic sinc interpolation — a phase ramp
    in the 1-D FFT (:func:`_fourier_shift`). Field map: ``O(r) = P_C ∘ O_x(a) ∘ O_y(b) ∘ O_z(c)``; nine FFT passes.

    **What is exact.** Every shear is a real orthogonal operator (modulus-1 Hermitian multipliers; the even-``L``
    Nyquist bin gets the nearest real unit, ``(−1)^round(τ)``), so ``O(r)`` is orthogonal: it maps white noise to
    white noise (identity covariance, every voxel keeps its variance σ²), preserves norms and inner products, and
    ``inverse=True`` — the nine shears in reverse order with negated amounts, then ``P_Cᵀ`` — is its exact inverse
    (``O(r)⁻¹ O(r) = 1`` to float round-off). The cube rotations are exact permutations (no shear). A 1-D shear
    is exact for a signal that is a trigonometric polynomial along the shear axis (band-limited, periodic).

    **What is not.** ``O(r)`` is a unitary approximation of the continuous rotation of a band-limited periodic
    field, not the rotation itself: a sheared periodic field is not periodic along the coordinate that drives the
    shear, so content near the box faces wraps around (a field supported in the ball of radius
    ``(L/2)/√(1 + tan²27.5°) ≈ 0.88·L/2`` and band-limited well below Nyquist is rotated to high accuracy; corners
    and near-Nyquist content are not). It is not a group homomorphism (``O(r₁)O(r₂) ≠ O(r₁r₂)`` except for cube
    rotations), and ``O(rᵀ)`` is only approximately ``O(r)⁻¹`` (the factorisation of ``rᵀ`` differs): rotate
    predictions back with ``inverse=True`` and the same ``r``. Float32 grids are shifted in complex64 (round-off
    ≈ 1e-6 relative); float64 in complex128.
    """
    b, _, l1, l2, l3 = grid.shape
    if not (l1 == l2 == l3):
        raise ValueError(f"fft_rotate_grid needs a cubic grid, got spatial shape {(l1, l2, l3)}")
    if r.dim() == 2:
        r = r.expand(b, 3, 3)
    cube, ang = shear_factorization(r)
    a, bb, c = ang.unbind(-1)
    # (axes of the plane, angle) in the order the field map applies them: Rz first, then Ry, then Rx
    planes = [((0, 1), c), ((2, 0), bb), ((1, 2), a)]
    if not inverse:
        for (i, j), th in planes:
            grid = _planar_rotation(grid, i, j, th, inverse=False)
        return permute_grid(grid, cube.to(grid.dtype))
    grid = permute_grid(grid, cube.transpose(-1, -2).to(grid.dtype))
    for (i, j), th in reversed(planes):
        grid = _planar_rotation(grid, i, j, th, inverse=True)
    return grid


def rotate_grid(grid: torch.Tensor, r: torch.Tensor, mode: str = "bilinear", inverse: bool = False) -> torch.Tensor:
    """Rotate voxel fields ``grid (B, C, L, L, L)`` by ``r (B, 3, 3)`` (or one ``(3, 3)``) about the centre.

    Cube rotations (signed permutations) take the exact index-permutation path in every mode. Any other
    rotation: ``mode='fft'`` applies the orthogonal Fourier-shear operator (:func:`fft_rotate_grid`), and
    ``inverse=True`` its exact inverse; ``'bilinear'`` / ``'nearest'`` resample (:func:`resample_grid`), and
    ``inverse=True`` resamples by ``rᵀ`` (only approximately the inverse: resampling is lossy).
    """
    if mode not in GRID_ROTATION_MODES:
        raise ValueError(f"grid rotation mode must be one of {GRID_ROTATION_MODES}, got {mode!r}")
    if r.dim() == 2:
        r = r.expand(grid.shape[0], 3, 3)
    if is_signed_permutation(r):
        return permute_grid(grid, r.transpose(-1, -2) if inverse else r)
    if mode == "fft":
        return fft_rotate_grid(grid, r, inverse=inverse)
    return resample_grid(grid, r.transpose(-1, -2) if inverse else r, mode=mode)
