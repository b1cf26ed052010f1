"""Small stand-ins shared by the analysis tests (float64 throughout)."""

from __future__ import annotations

import torch
from torch import nn

from equivrepro.rotations import haar_rotations
from equivrepro.testing.pointcloud import PointCloudTask, make_pointcloud_batch


class DirectForceToy(nn.Module):
    r"""EScAIP-like direct-force head on a point cloud: F_i = Σ_{j≠i} (W φ_ij + b) ⊙ r̂_ij.

    φ_ij = tanh(E · RBF(d_ij)) ∈ R^d are rotation-invariant edge features (d_ij = |x_i − x_j|,
    RBF_k(d) = exp(−(d − μ_k)²) with μ_k evenly spaced on [0, 4]), r̂_ij = (x_i − x_j)/d_ij, and
    ``out = Linear(d → 3)`` holds W (3 × d) and b (3,). Equivariant iff W's rows are equal and
    b₁ = b₂ = b₃; the prediction is linear in (W, b).
    """

    def __init__(self, d: int = 6, n_rbf: int = 8):
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, 4.0, n_rbf))
        self.embed = nn.Linear(n_rbf, d)
        self.out = nn.Linear(d, 3)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        n = pos.shape[1]
        diff = pos[:, :, None] - pos[:, None, :]  # (B, N, N, 3)
        off = ~torch.eye(n, dtype=torch.bool, device=pos.device)
        dist = diff.norm(dim=-1).masked_fill(~off, 1.0)  # (B, N, N)
        rhat = diff / dist[..., None]
        rbf = torch.exp(-((dist[..., None] - self.centres.to(pos.dtype)) ** 2))
        phi = torch.tanh(self.embed(rbf))  # (B, N, N, d)
        w = self.out(phi)  # (B, N, N, 3)
        return (w * rhat * off[None, :, :, None].to(pos.dtype)).sum(2)


def setup(b: int = 8, n: int = 5, k: int = 4, seed: int = 0):
    """Task, a float64 batch of ``b`` clouds of ``n`` points, and ``(b, k, 3, 3)`` Haar rotations."""
    g = torch.Generator().manual_seed(seed)
    batch = make_pointcloud_batch(b, n, g)
    rot = haar_rotations(b * k, g, dtype=torch.float64).reshape(b, k, 3, 3)
    return PointCloudTask(), batch, rot
