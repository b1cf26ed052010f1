"""Dense k-nearest-neighbour lists for padded molecules, in plain torch (no torch-cluster / pyg-lib).

From padded positions ``pos (B, N, 3)`` [Å] and ``mask (B, N)`` the real atoms are packed into one
list of ``A = mask.sum()`` atoms, and every atom i gets up to ``M = min(max_neighbors, N − 1)``
neighbours j ≠ i from the same molecule with |x_i − x_j| ≤ cutoff, nearest first. Unused slots are
masked. An atom with no neighbour at all (a lone atom, or one farther than the cutoff from every
other) gets itself as a fake neighbour in slot 0 with a zero bond vector (EScAIP's singleton patch),
so attention over its neighbours never sees an empty row. Slot 0 is therefore always valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["NeighborGraph", "build_neighbor_graph"]


@dataclass
class NeighborGraph:
    """Packed atoms with a dense neighbour list (shapes use A real atoms, M neighbour slots).

    Attributes:
        atom_index: ``(A,)`` flat index ``b * N + n`` of each packed atom in the padded ``(B, N)`` layout.
        molecule: ``(A,)`` molecule (batch row) of each atom.
        neighbors: ``(A, M)`` packed index of neighbour j of atom i (i itself in unused slots).
        neighbor_mask: ``(A, M)`` True on real neighbours (and on the singleton patch).
        vec: ``(A, M, 3)`` bond vectors x_i − x_j [Å] (0 in unused slots and the patch).
        dist: ``(A, M)`` |x_i − x_j| [Å].
        direction: ``(A, M, 3)`` unit vectors r̂_ij = (x_i − x_j) / |x_i − x_j| (0 where dist is 0).
        num_molecules, num_slots: B and N of the padded layout.
    """

    atom_index: torch.Tensor
    molecule: torch.Tensor
    neighbors: torch.Tensor
    neighbor_mask: torch.Tensor
    vec: torch.Tensor
    dist: torch.Tensor
    direction: torch.Tensor
    num_molecules: int
    num_slots: int

    @property
    def num_atoms(self) -> int:
        return int(self.atom_index.numel())


def build_neighbor_graph(pos: torch.Tensor, mask: torch.Tensor, cutoff: float, max_neighbors: int) -> NeighborGraph:
    """The k-nearest-within-cutoff neighbour list of every real atom (see the module docstring)."""
    b, n, _ = pos.shape
    mask = mask.bool()
    device = pos.device
    with torch.no_grad():
        dist_full = (pos[:, :, None, :] - pos[:, None, :, :]).norm(dim=-1)  # (B, N, N)
        eye = torch.eye(n, dtype=torch.bool, device=device)
        allowed = mask[:, :, None] & mask[:, None, :] & ~eye & (dist_full <= cutoff)
        k = max(1, min(int(max_neighbors), n - 1))
        score = dist_full.masked_fill(~allowed, float("inf"))
        nearest, nbr = score.topk(k, dim=-1, largest=False)  # (B, N, k), ascending distance
        flat_mask = mask.reshape(-1)
        atom_index = flat_mask.nonzero().squeeze(1)  # (A,)
        packed = torch.cumsum(flat_mask.long(), 0) - 1  # flat index → packed index (valid on real atoms)
        offset = (torch.arange(b, device=device) * n)[:, None, None]
        nbr_flat = (nbr + offset).reshape(b * n, k)[atom_index]
        nmask = torch.isfinite(nearest).reshape(b * n, k)[atom_index]
        a = atom_index.numel()
        self_idx = torch.arange(a, device=device)[:, None].expand(a, k)
        neighbors = torch.where(nmask, packed[nbr_flat], self_idx)
        lonely = ~nmask.any(dim=1)
        nmask[:, 0] |= lonely
    x = pos.reshape(b * n, 3)[atom_index]  # (A, 3)
    vec = x[:, None, :] - x[neighbors]  # (A, k, 3), exactly 0 for self slots
    dist = vec.norm(dim=-1)
    direction = vec / dist.clamp_min(torch.finfo(dist.dtype).tiny)[..., None]
    return NeighborGraph(
        atom_index=atom_index,
        molecule=torch.div(atom_index, n, rounding_mode="floor"),
        neighbors=neighbors,
        neighbor_mask=nmask,
        vec=vec,
        dist=dist,
        direction=direction,
        num_molecules=b,
        num_slots=n,
    )
