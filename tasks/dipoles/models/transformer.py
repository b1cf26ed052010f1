"""A non-equivariant transformer over atoms that reads raw Cartesian coordinates and predicts a dipole."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from equivrepro.rotations import center_points

__all__ = ["DipoleTransformer"]


class _Block(nn.Module):
    """Pre-norm transformer block: h ← h + MHA(LN h) with padded keys masked; h ← h + FFN(LN h)."""

    def __init__(self, dim: int, heads: int, ffn_multiplier: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_multiplier * dim), nn.GELU(), nn.Linear(ffn_multiplier * dim, dim))

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p_drop = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=p_drop)  # (B, H, N, d/H)
        h = h + self.out(att.transpose(1, 2).reshape(b, n, d))
        return h + F.dropout(self.ffn(self.norm2(h)), self.dropout, self.training)


class DipoleTransformer(nn.Module):
    r"""Transformer over the atoms of a molecule → its dipole, in the frame of the input (not equivariant).

    Input: ``pos (B, N, 3)`` Å, ``z (B, N)`` atomic numbers, ``mask (B, N)`` (True on real atoms).
    Output: ``(B, 3)``, the dipole in units of the task's ``dipole_scale``.

    With :math:`\bar r = \frac{1}{n}\sum_{i\ \mathrm{real}} r_i` (the molecule's centroid; translation
    invariance is built in, rotation equivariance is not)::

        h⁰_i = E[z_i] + W₂ GELU(W₁ (r_i − r̄)/s + b₁) + b₂            (element embedding + MLP of raw coordinates)
        for ℓ = 1..L:
            h ← h + W_o MHA(LN(h))      attention over the real atoms only (padded keys masked)
            h ← h + FFN(LN(h))          FFN(x) = W₄ GELU(W₃ x + b₃) + b₄, width ffn_multiplier · dim
        g = LN( (1/n) Σ_{i real} h_i )                                 (mean pool)
        μ̂ = W_μ g + b_μ ∈ ℝ³                                          (linear head)

    ``s = coord_scale`` (Å) brings coordinates to O(1). The head starts at ``head_gain`` × the default
    initialisation so the first predictions are small (near the zero-dipole predictor, not far above it).
    The first layer W₁ sees x, y and z separately, so f(R·x) ≠ R·f(x) in general: rotation equivariance
    can only be learned (from rotation augmentation).

    Args:
        dim: token width; heads: attention heads; num_layers: blocks L; ffn_multiplier: FFN width / dim;
        max_atomic_number: size of the element table − 1; dropout: attention / FFN dropout.
    """

    def __init__(
        self,
        dim: int = 64,
        num_layers: int = 2,
        heads: int = 4,
        ffn_multiplier: int = 4,
        max_atomic_number: int = 54,
        coord_scale: float = 3.0,
        dropout: float = 0.0,
        head_gain: float = 0.1,
    ):
        super().__init__()
        self.coord_scale, self.max_atomic_number = float(coord_scale), int(max_atomic_number)
        self.embed = nn.Embedding(self.max_atomic_number + 1, dim)
        self.pos_mlp = nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, ffn_multiplier, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)
        with torch.no_grad():
            self.head.weight.mul_(head_gain)
            self.head.bias.zero_()

    def forward(self, pos: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if int(z.max()) > self.max_atomic_number:
            raise ValueError(f"atomic number {int(z.max())} is outside the element table (max_atomic_number={self.max_atomic_number})")
        x = center_points(pos, mask) / self.coord_scale
        h = self.embed(z.long()) + self.pos_mlp(x)
        for block in self.blocks:
            h = block(h, mask)
        m = mask[..., None].to(h.dtype)
        g = self.norm((h * m).sum(1) / m.sum(1).clamp_min(1.0))
        return self.head(g)
