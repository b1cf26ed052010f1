"""The plain-torch neighbour list against a brute-force reference."""

from __future__ import annotations

import torch

from tasks.forcefield.graph import build_neighbor_graph


def _padded(sizes, gen, spread=2.0):
    n = max(sizes)
    pos = torch.randn(len(sizes), n, 3, generator=gen, dtype=torch.float64) * spread
    mask = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
    return pos * mask[..., None], mask


def test_neighbours_are_the_k_nearest_within_cutoff_of_the_same_molecule(gen):
    sizes, cutoff, k = [7, 3, 12], 3.0, 4
    pos, mask = _padded(sizes, gen)
    g = build_neighbor_graph(pos, mask, cutoff, k)
    assert g.num_atoms == sum(sizes) and g.neighbors.shape == (sum(sizes), k)
    flat = pos.reshape(-1, 3)[g.atom_index]
    for a in range(g.num_atoms):
        b, i = divmod(int(g.atom_index[a]), pos.shape[1])
        d = (pos[b, : sizes[b]] - pos[b, i]).norm(dim=-1)
        d[i] = float("inf")
        expected = sorted(d[d <= cutoff].tolist())[:k]
        got = sorted(g.dist[a][g.neighbor_mask[a]].tolist())
        if not expected:  # singleton patch: itself, at distance 0
            assert got == [0.0] and int(g.neighbors[a, 0]) == a
            continue
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected))
        nb = g.neighbors[a][g.neighbor_mask[a]]
        assert (g.molecule[nb] == b).all() and (nb != a).all()
        torch.testing.assert_close(g.vec[a][g.neighbor_mask[a]], flat[a] - flat[nb])
        torch.testing.assert_close(g.direction[a][g.neighbor_mask[a]].norm(dim=-1), torch.ones(len(nb), dtype=torch.float64))
    assert g.neighbor_mask[:, 0].all()  # slot 0 always valid


def test_lone_atoms_get_the_singleton_patch():
    pos = torch.tensor([[[0.0, 0, 0], [0, 0, 0]], [[0.0, 0, 0], [50.0, 0, 0]]])
    mask = torch.tensor([[True, False], [True, True]])
    g = build_neighbor_graph(pos, mask, cutoff=12.0, max_neighbors=20)
    assert g.num_atoms == 3 and g.neighbors.shape == (3, 1)
    assert g.neighbor_mask.all() and g.neighbors[:, 0].tolist() == [0, 1, 2]
    assert g.direction.abs().sum() == 0 and g.dist.abs().sum() == 0
