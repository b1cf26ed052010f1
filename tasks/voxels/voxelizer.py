"""Gaussian voxelisation of molecules into per-element occupancy grids (VoxMol / PyUUL "gaussian").

For a molecule with atoms at ``p_a`` (Å) of element channel ``e_a``, channel ``c`` of the grid is

    u_c(v) = 1 − Π_{a : e_a = c, v ∈ W(p_a)} (1 − exp(−‖v − p_a‖² / (0.93·r)²))

with ``r`` the atom radius (0.5 Å for every element in VoxMol). Voxel ``(i, j, k)`` of an ``L³`` grid
sits at ``v = ((i, j, k) − (L−1)/2) · resolution`` — the convention of
:func:`equivrepro.rotations.rotate_grid` (box centre at the origin; axis 0 = x, 1 = y, 2 = z). Values lie
in [0, 1].

**Window.** Each atom touches only the voxels within ``window`` voxels of it along every axis,
``W(p) = {v : |v_x − p_x|, |v_y − p_y|, |v_z − p_z| ≤ window · resolution}`` (±5 voxels = ±1.25 Å by
default, where the Gaussian has fallen to exp(−(1.25/0.465)²) ≈ 7·10⁻⁴ on the axis; the mass
outside is ≈ 4·10⁻⁴ of the total). The test is written on the centred offsets ``v − p`` themselves, so
it is exactly symmetric under axis permutations and sign flips.

**Exact cube covariance.** For a signed-permutation rotation ``R`` and ``L³`` grids,
``permute_grid(voxelize(x), R) == voxelize(x Rᵀ)`` bit for bit on the CPU: the offsets ``v − p`` of the
rotated problem are the permuted / negated offsets of the original (IEEE negation is exact), the three
squared components are summed in sorted order (so the sum does not depend on their order), and each
voxel accumulates its atoms in atom order. (CUDA's ``index_add_`` accumulates with atomics, so on a GPU
the equality holds to float round-off only.)

**Implementation.** Vectorised, no Python loop over atoms: every real atom gathers a
``(2·window+2)³`` block of voxels (enough to contain its window whatever the rounding), computes
``log(1 − g)`` on the voxels inside its window and inside the grid, and scatter-adds it into the flat
``(B·C·L³)`` grid; the occupancy is ``1 − exp(Σ log(1 − g))``.

**Atoms outside the box.** An atom whose centre lies outside ``[−L·res/2, L·res/2]³`` is *not* dropped
silently: its in-box tail is still added, and it is counted per molecule (returned by :func:`voxelize`;
:class:`Voxelizer` also keeps a running total and logs a warning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

log = logging.getLogger("tasks.voxels.voxelizer")

__all__ = ["voxelize", "Voxelizer", "voxel_axis", "GAUSSIAN_WIDTH_FACTOR"]

#: PyUUL's Gaussian: exp(−d² / (0.93 · r)²).
GAUSSIAN_WIDTH_FACTOR = 0.93


def voxel_axis(grid_size: int, resolution: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Voxel-centre coordinates along one axis, ``(L,)`` Å: ``(i − (L−1)/2) · resolution``."""
    return (torch.arange(grid_size, dtype=dtype, device=device) - (grid_size - 1) / 2) * resolution


def voxelize(
    coords: torch.Tensor,
    elements: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    n_channels: int,
    grid_size: int = 64,
    resolution: float = 0.25,
    radius: float = 0.5,
    window: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element Gaussian occupancy grids of a batch of molecules.

    Args:
        coords: ``(B, N, 3)`` atom positions in Å (the box is centred at the origin).
        elements: ``(B, N)`` integer channel index of each atom, in ``[0, n_channels)`` for real atoms.
        mask: ``(B, N)`` bool, True on real atoms (``None``: all atoms are real).
        n_channels: number of element channels ``C``.
        grid_size: ``L`` (voxels per side); resolution: voxel edge in Å; radius: atom radius ``r`` in Å.
        window: half-width, in voxels, of the block each atom is evaluated on.

    Returns:
        ``grid (B, C, L, L, L)`` in ``coords.dtype`` with values in [0, 1], and ``outside (B,)`` long:
        the number of real atoms of each molecule whose centre lies outside the box.
    """
    if coords.dim() != 3 or coords.shape[-1] != 3:
        raise ValueError(f"coords must be (B, N, 3), got {tuple(coords.shape)}")
    b, n, _ = coords.shape
    if elements.shape != (b, n):
        raise ValueError(f"elements must be (B, N) = {(b, n)}, got {tuple(elements.shape)}")
    device, dtype = coords.device, coords.dtype
    if not dtype.is_floating_point:
        raise TypeError(f"coords must be floating point, got {dtype}")
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=device)
    mask = mask.to(device=device, dtype=torch.bool)
    size, res, c = int(grid_size), float(resolution), int(n_channels)
    half = (size - 1) / 2
    s2 = (GAUSSIAN_WIDTH_FACTOR * float(radius)) ** 2
    reach = window * res

    bi, ai = mask.nonzero(as_tuple=True)  # real atoms, (M,)
    pos = coords[bi, ai]  # (M, 3)
    el = elements[bi, ai].long()
    if el.numel() and (int(el.min()) < 0 or int(el.max()) >= c):
        bad = el[(el < 0) | (el >= c)][0]
        raise ValueError(f"element channel {int(bad)} is outside [0, {c}) (n_channels={c})")
    # atoms whose centre is outside the box: counted per molecule, never silently lost
    edge = size * res / 2
    out_atom = (pos.abs() > edge).any(-1)
    outside = torch.zeros(b, dtype=torch.long, device=device)
    outside.index_add_(0, bi, out_atom.long())

    grid = torch.zeros(b * c * size**3, dtype=dtype, device=device)
    if pos.shape[0]:
        width = 2 * window + 2
        start = torch.floor(pos / res + half - window).long()  # (M, 3) first voxel of the block
        k = start[:, :, None] + torch.arange(width, device=device)  # (M, 3, W) voxel indices per axis
        d = (k.to(dtype) - half) * res - pos[:, :, None]  # (M, 3, W) offsets v − p, Å
        ok = (d.abs() <= reach) & (k >= 0) & (k < size)  # (M, 3, W)
        d2 = d * d
        # (M, W, W, W, 3) squared components; summed in sorted order so the sum is permutation-symmetric
        comp = torch.stack(torch.broadcast_tensors(d2[:, 0, :, None, None], d2[:, 1, None, :, None], d2[:, 2, None, None, :]), dim=-1)
        dist2 = comp.sort(dim=-1).values.sum(-1)
        inside = ok[:, 0, :, None, None] & ok[:, 1, None, :, None] & ok[:, 2, None, None, :]  # (M, W, W, W)
        log_free = torch.log1p(-torch.exp(-dist2 / s2))  # log(1 − g), ≤ 0 (−inf at the atom centre)
        kc = k.clamp(0, size - 1)
        flat = (((bi * c + el)[:, None, None, None] * size + kc[:, 0, :, None, None]) * size + kc[:, 1, None, :, None]) * size + kc[
            :, 2, None, None, :
        ]
        grid.index_add_(0, flat[inside], log_free[inside])
    grid = -torch.expm1(grid)  # 1 − Π(1 − g)
    return grid.view(b, c, size, size, size), outside


@dataclass
class Voxelizer:
    """:func:`voxelize` with fixed parameters, a running count of out-of-box atoms and a warning.

    ``atoms_outside`` / ``molecules_with_outside`` accumulate over every call; a warning is logged the
    first time atoms fall outside the box and then at every doubling of the count.
    """

    n_channels: int = 8
    grid_size: int = 64
    resolution: float = 0.25
    radius: float = 0.5
    window: int = 5
    atoms_outside: int = field(default=0, init=False)
    molecules_with_outside: int = field(default=0, init=False)
    _next_warning: int = field(default=1, init=False, repr=False)

    @property
    def box_edge(self) -> float:
        """Half the box side in Å: atom centres must satisfy |x|, |y|, |z| ≤ this."""
        return self.grid_size * self.resolution / 2

    def __call__(self, coords: torch.Tensor, elements: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(grid (B, C, L, L, L), outside (B,))``; see :func:`voxelize`."""
        grid, outside = voxelize(
            coords,
            elements,
            mask,
            n_channels=self.n_channels,
            grid_size=self.grid_size,
            resolution=self.resolution,
            radius=self.radius,
            window=self.window,
        )
        n_out = int(outside.sum())
        if n_out:
            self.atoms_outside += n_out
            self.molecules_with_outside += int((outside > 0).sum())
            if self.atoms_outside >= self._next_warning:
                log.warning(
                    "%d atoms (in %d molecules so far) lie outside the %d³ × %.3g Å box (±%.3g Å); their density is "
                    "truncated at the box. Use a larger grid_size, or filter molecules with data.max_radius.",
                    self.atoms_outside,
                    self.molecules_with_outside,
                    self.grid_size,
                    self.resolution,
                    self.box_edge,
                )
                self._next_warning = 2 * self.atoms_outside
        return grid, outside
