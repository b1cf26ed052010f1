"""Gaussian voxeliser: analytic mass, the occupancy formula, exact cube covariance, out-of-box reporting."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from equivrepro.rotations import axis_angle_to_matrix, octahedral_group, rotate_grid, rotate_points
from tasks.voxels.voxelizer import GAUSSIAN_WIDTH_FACTOR, Voxelizer, voxel_axis, voxelize


def _one_atom(pos, grid_size=32, resolution=0.25, radius=0.5, window=5, dtype=torch.float64):
    x = torch.tensor([[pos]], dtype=dtype)
    return voxelize(
        x, torch.zeros(1, 1, dtype=torch.long), None, n_channels=1, grid_size=grid_size, resolution=resolution, radius=radius, window=window
    )


@pytest.mark.parametrize("pos", [(0.0, 0.0, 0.0), (0.113, -0.271, 0.05), (0.125, 0.0, -0.375)])
@pytest.mark.parametrize("radius, window", [(0.5, 5), (0.3, 5), (0.6, 7)])
def test_isolated_atom_mass_matches_the_gaussian_integral(pos, radius, window):
    """Σ voxels · res³ = ∫ exp(−d²/s²) d³x = (π s²)^{3/2}, s = 0.93 r, to 1e-3 relative.

    At VoxMol's r = 0.5 Å the ±5-voxel (1.25 Å = 2.7 s) window drops ≈ 3·erfc(2.7) ≈ 4e-4 of the mass;
    the Riemann sum itself is exact to ~exp(−π² s²/h²) (s/h ≥ 1.1 here).
    """
    res = 0.25
    grid, outside = _one_atom(pos, resolution=res, radius=radius, window=window)
    s = GAUSSIAN_WIDTH_FACTOR * radius
    analytic = (math.pi * s * s) ** 1.5 / res**3
    rel = float(grid.sum()) / analytic - 1
    assert abs(rel) < 1e-3, rel
    assert int(outside) == 0


def test_the_window_truncation_is_what_drops_mass():
    """A window of ±5 voxels loses ~1e-4..1e-3 of the mass at r = 0.5 Å; ±8 voxels loses < 1e-8."""
    s = GAUSSIAN_WIDTH_FACTOR * 0.5
    analytic = (math.pi * s * s) ** 1.5 / 0.25**3
    narrow = float(_one_atom((0.113, -0.271, 0.05))[0].sum()) / analytic - 1
    wide = float(_one_atom((0.113, -0.271, 0.05), window=8)[0].sum()) / analytic - 1
    assert -1e-3 < narrow < -1e-4
    assert abs(wide) < 1e-8


def test_occupancy_formula_matches_a_dense_reference(gen):
    """1 − Π(1 − g) per channel against a dense loop over atoms, with the same per-axis window."""
    b, n, c, size, res, r = 2, 7, 3, 16, 0.25, 0.5
    coords = torch.randn(b, n, 3, generator=gen, dtype=torch.float64) * 0.8
    coords[0, 1] = coords[0, 0] + 0.1  # two overlapping atoms of one channel
    elements = torch.randint(0, c, (b, n), generator=gen)
    elements[0, 1] = elements[0, 0]
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, -2:] = False
    grid, _ = voxelize(coords, elements, mask, n_channels=c, grid_size=size, resolution=res, radius=r)

    axis = voxel_axis(size, res, dtype=torch.float64)
    centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # (L, L, L, 3)
    free = torch.ones(b, c, size, size, size, dtype=torch.float64)
    for bi in range(b):
        for ai in range(n):
            if not mask[bi, ai]:
                continue
            off = centres - coords[bi, ai]
            inside = (off.abs() <= 5 * res).all(-1)
            g = torch.exp(-(off**2).sum(-1) / (GAUSSIAN_WIDTH_FACTOR * r) ** 2) * inside
            free[bi, elements[bi, ai]] *= 1 - g
    torch.testing.assert_close(grid, 1 - free, rtol=0, atol=1e-12)
    assert grid.min() >= 0 and grid.max() <= 1


def test_padding_atoms_are_ignored(gen):
    coords = torch.randn(1, 4, 3, generator=gen)
    el = torch.tensor([[0, 1, 2, 3]])
    full, _ = voxelize(coords[:, :2], el[:, :2], None, n_channels=4, grid_size=16)
    padded, _ = voxelize(coords, el, torch.tensor([[True, True, False, False]]), n_channels=4, grid_size=16)
    assert torch.equal(full, padded)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quarter_turn_of_the_molecule_is_exactly_the_permuted_grid(axis, dtype, gen):
    """voxelize(x Rᵀ) == rotate_grid(voxelize(x), R) bit for bit for 90° turns (CPU)."""
    coords = (torch.randn(3, 12, 3, generator=gen) * 1.3).to(dtype)
    coords[0, 0] = torch.tensor([0.125, 0.0, -0.25], dtype=dtype)  # on voxel planes / window edges
    el = torch.randint(0, 8, (3, 12), generator=gen)
    mask = torch.rand(3, 12, generator=gen) > 0.2
    e = torch.zeros(3, dtype=torch.float64)
    e[axis] = 1
    r = axis_angle_to_matrix(e, torch.tensor(math.pi / 2, dtype=torch.float64)).round().to(dtype).expand(3, 3, 3)
    grid, _ = voxelize(coords, el, mask, n_channels=8, grid_size=32)
    turned, _ = voxelize(rotate_points(coords, r), el, mask, n_channels=8, grid_size=32)
    assert torch.equal(rotate_grid(grid, r), turned)


def test_every_cube_rotation_is_exact(gen):
    coords = torch.randn(2, 10, 3, generator=gen) * 1.3
    el = torch.randint(0, 8, (2, 10), generator=gen)
    grid, _ = voxelize(coords, el, None, n_channels=8, grid_size=16, resolution=0.5)
    for r in octahedral_group(dtype=torch.float32):
        rr = r.expand(2, 3, 3)
        turned, _ = voxelize(rotate_points(coords, rr), el, None, n_channels=8, grid_size=16, resolution=0.5)
        assert torch.equal(rotate_grid(grid, rr), turned)


def test_out_of_box_atoms_are_counted_and_reported(caplog):
    vox = Voxelizer(n_channels=2, grid_size=16, resolution=0.25)  # box ±2 Å
    coords = torch.tensor([[[0.0, 0.0, 0.0], [2.3, 0.0, 0.0], [0.0, 0.0, -5.0]], [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    el = torch.tensor([[0, 1, 1], [0, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    with caplog.at_level(logging.WARNING, logger="tasks.voxels.voxelizer"):
        grid, outside = vox(coords, el, mask)
    assert outside.tolist() == [2, 0]
    assert vox.atoms_outside == 2 and vox.molecules_with_outside == 1
    assert "outside" in caplog.text
    # the atom just outside still leaves its in-box tail; the far one leaves nothing
    assert grid[0, 1].sum() > 0
    _, outside2 = vox(coords, el, mask)
    assert vox.atoms_outside == 4 and outside2.tolist() == [2, 0]


def test_bad_element_channel_is_an_error():
    with pytest.raises(ValueError, match="element channel 8"):
        voxelize(torch.zeros(1, 1, 3), torch.tensor([[8]]), None, n_channels=8, grid_size=8)
