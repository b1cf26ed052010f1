"""VoxMol's denoiser: a 3-D U-Net with voxel self-attention at the coarse levels (no time input).

Pinheiro et al., NeurIPS 2023 (``voxmol/models/unet3d.py``: the labml DDPM U-Net made 3-D and stripped of
its time embedding, since there is a single noise level σ). Equations and layout: :class:`VoxUNet`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VoxUNet", "ResidualBlock", "VoxelAttention", "group_count"]


def group_count(channels: int, n_groups: int) -> int:
    """GroupNorm groups for ``channels``: ``gcd(n_groups, channels)`` (16 upstream; 8 at width 8, 4 at width 4)."""
    return math.gcd(int(n_groups), int(channels))


class ResidualBlock(nn.Module):
    """``h = Conv(Drop(SiLU(GN(Conv(SiLU(GN(x))))))) + S(x)``, 3³ convolutions, ``S`` a 1³ conv when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, n_groups: int = 16, dropout: float = 0.1):
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(in_channels, n_groups), in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(group_count(out_channels, n_groups), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.shortcut = nn.Conv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.shortcut(x)


class VoxelAttention(nn.Module):
    """Single-head self-attention over all voxels of a level, with a residual connection.

    ``x (B, c, D, H, W)`` → tokens ``t (B, T, c)``, ``T = D·H·W``; ``[q, k, v] = t W_qkv``,
    ``out = softmax(q kᵀ / √c) v W_o + t``. Upstream also defines a GroupNorm here that it never
    applies; it is left out (it has parameters but no effect).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        t = x.flatten(2).transpose(1, 2)  # (B, T, c)
        q, k, v = self.qkv(t).unsqueeze(1).chunk(3, dim=-1)  # each (B, 1, T, c)
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return (self.out(h) + t).transpose(1, 2).reshape(x.shape)


class _Stage(nn.Module):
    """A residual block optionally followed by attention (labml's DownBlock / UpBlock)."""

    def __init__(self, in_channels: int, out_channels: int, attention: bool, n_groups: int, dropout: float):
        super().__init__()
        self.res = ResidualBlock(in_channels, out_channels, n_groups, dropout)
        self.attn = VoxelAttention(out_channels) if attention else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x))


class VoxUNet(nn.Module):
    r"""3-D U-Net denoiser of voxelised molecules: noisy grid ``y (B, n_elements, L, L, L)`` → ``x̂`` (same shape).

    With width ``w``, cumulative multipliers ``ch_mults = (1, 2, 2, 4)`` give level widths
    ``w, 2w, 4w, 16w`` at resolutions ``L, L/2, L/4, L/8`` (64³ → 8³ for GEOM-drugs).

    * stem: ``h₀ = Conv3d_{3³}(y)`` (n_elements → w);
    * down path, level ``i``: ``n_blocks`` × [ResidualBlock → Attention if ``is_attn[i]``], each output kept
      as a skip, then (except at the last level) a stride-2 ``Conv3d_{3³}`` downsample, also kept;
    * middle: ResidualBlock → Attention → ResidualBlock at ``16w``;
    * up path, level ``i`` from coarse to fine: ``n_blocks + 1`` × [concatenate the next skip →
      ResidualBlock → Attention if ``is_attn[i]``] (the last one narrows to the next level's width), then
      ``ConvTranspose3d(k=4, s=2, p=1)`` upsampling (except at the finest level);
    * head: ``x̂ = Conv3d_{3³}(SiLU(GN(h)))`` (w → n_elements).

    ResidualBlock: ``Conv(Drop(SiLU(GN(Conv(SiLU(GN(x))))))) + S(x)`` (:class:`ResidualBlock`);
    Attention: single-head full self-attention over the level's voxels (:class:`VoxelAttention`).
    GroupNorm uses ``gcd(n_groups, channels)`` groups, so every width works.

    Parameters (8 element channels): w = 32 → 111.5M, 16 → 27.9M, 8 → 7.0M (the paper's 111M / 28M / 7M;
    upstream ``n_channels`` 32 / 16 / 8). The output is the denoised grid x̂ (VoxMol's score is
    ``(x̂ − y)/σ²``).

    Args:
        n_elements: input and output channels (8 for GEOM-drugs: C, H, O, N, F, S, Cl, Br).
        width: ``w``; ch_mults: cumulative width multipliers per level; is_attn: attention per level;
        n_blocks: residual blocks per level on the down path; n_groups: GroupNorm groups (upper bound);
        dropout: inside every residual block.
        head_gain: factor on the head convolution's default initialisation (1: PyTorch's default, as
            upstream; < 1 starts x̂ near the empty grid instead of O(1) in every voxel, which short CPU
            runs need — otherwise they spend their first hundreds of steps only shrinking the output).
    """

    def __init__(
        self,
        n_elements: int = 8,
        width: int = 32,
        ch_mults: Sequence[int] = (1, 2, 2, 4),
        is_attn: Sequence[bool] = (False, False, True, True),
        n_blocks: int = 2,
        n_groups: int = 16,
        dropout: float = 0.1,
        head_gain: float = 1.0,
    ):
        super().__init__()
        if len(ch_mults) != len(is_attn):
            raise ValueError(f"ch_mults {tuple(ch_mults)} and is_attn {tuple(is_attn)} must have one entry per level")
        self.n_elements, self.n_levels = int(n_elements), len(ch_mults)
        self.stem = nn.Conv3d(n_elements, width, kernel_size=3, padding=1)

        down: list[nn.Module] = []
        skips = [width]
        ch = width
        for i, mult in enumerate(ch_mults):
            out = ch * mult
            for _ in range(n_blocks):
                down.append(_Stage(ch, out, is_attn[i], n_groups, dropout))
                ch = out
                skips.append(ch)
            if i < self.n_levels - 1:
                down.append(nn.Conv3d(ch, ch, kernel_size=3, stride=2, padding=1))
                skips.append(ch)
        self.down = nn.ModuleList(down)

        self.middle = nn.Sequential(ResidualBlock(ch, ch, n_groups, dropout), VoxelAttention(ch), ResidualBlock(ch, ch, n_groups, dropout))

        up: list[nn.Module] = []
        for i in reversed(range(self.n_levels)):
            for _ in range(n_blocks + 1):
                skip = skips.pop()
                out = skip  # the last block of a level narrows to the width of the skip below it
                up.append(_Stage(ch + skip, out, is_attn[i], n_groups, dropout))
                ch = out
            if i > 0:
                up.append(nn.ConvTranspose3d(ch, ch, kernel_size=4, stride=2, padding=1))
        assert not skips
        self.up = nn.ModuleList(up)

        self.head_norm = nn.GroupNorm(group_count(ch, n_groups), ch)
        self.head = nn.Conv3d(ch, n_elements, kernel_size=3, padding=1)
        with torch.no_grad():
            self.head.weight.mul_(float(head_gain))
            self.head.bias.mul_(float(head_gain))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y (B, n_elements, L, L, L)`` → denoised ``x̂`` of the same shape; ``L`` divisible by 2^(levels−1)."""
        if y.dim() != 5 or y.shape[1] != self.n_elements:
            raise ValueError(f"expected a grid (B, {self.n_elements}, L, L, L), got {tuple(y.shape)}")
        factor = 2 ** (self.n_levels - 1)
        if any(s % factor for s in y.shape[2:]):
            raise ValueError(f"grid side {tuple(y.shape[2:])} must be divisible by {factor} ({self.n_levels} levels)")
        h = self.stem(y)
        skips = [h]
        for m in self.down:
            h = m(h)
            skips.append(h)
        h = self.middle(h)
        for m in self.up:
            if isinstance(m, nn.ConvTranspose3d):
                h = m(h)
            else:
                h = m(torch.cat([h, skips.pop()], dim=1))
        return self.head(F.silu(self.head_norm(h)))
