"""Any voxel denoiser averaged over the 24 rotations of the cube: exactly cube-equivariant by construction.

Equations: :class:`CubeAveraged`.
"""

from __future__ import annotations

import torch
from torch import nn

from equivrepro.rotations import octahedral_group, permute_grid

__all__ = ["CubeAveraged"]


class CubeAveraged(nn.Module):
    r"""Group average of a grid model over the octahedral group O (24 rotations): ``forward(y (B,C,L,L,L)) → x̂``.

    .. math::
        \bar f(y) = \frac{1}{24}\sum_{g\in O} g^{-1}\cdot f(g\cdot y)

    where ``g·y`` is :func:`~equivrepro.rotations.permute_grid` — an exact index permutation of the cubic
    grid (voxel ``c'`` takes the value of voxel ``gᵀc'``, centred coordinates), so no interpolation happens.
    For every h ∈ O, f̄(h·y) = h·f̄(y) exactly (g ↦ gh permutes the terms; only the summation order
    changes, so equality holds to round-off). Under rotations outside O the model is as equivariant as
    the grid allows (the task's resampling floor).

    Cost: 24 forward passes of ``base`` per call, in training and at inference (24× the FLOPs, the time and,
    with ``chunk_size = 24``, the activation memory of the base model; ``chunk_size`` rotations go through
    ``base`` per pass, batched with the samples). Parameters: those of ``base``.

    Args:
        base: the grid model (``nn.Module``: ``(B, C, L, L, L) → (B, C, L, L, L)``), e.g. a
            :class:`~tasks.voxels.models.unet.VoxUNet`.
        chunk_size: group elements per forward pass of ``base`` (1 … 24; default all 24 at once).
    """

    def __init__(self, base: nn.Module, chunk_size: int | None = None):
        super().__init__()
        if not isinstance(base, nn.Module):
            raise TypeError(f"CubeAveraged needs an nn.Module as base, got {type(base).__name__}")
        if chunk_size is not None and not 1 <= int(chunk_size) <= 24:
            raise ValueError(f"chunk_size must be between 1 and 24 (or None), got {chunk_size}")
        self.base = base
        self.chunk_size = 24 if chunk_size is None else int(chunk_size)
        with torch.device("cpu"):  # built on the CPU even under a meta-device context (parameter counting)
            group = octahedral_group(torch.float64)
        self.register_buffer("group", group, persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() != 5:
            raise ValueError(f"expected a grid (B, C, L, L, L), got {tuple(y.shape)}")
        b = y.shape[0]
        total = None
        for start in range(0, self.group.shape[0], self.chunk_size):
            g = self.group[start : start + self.chunk_size]
            c = g.shape[0]
            r = g.repeat(b, 1, 1)  # row i*c + k: element k of the chunk for sample i
            pred = self.base(permute_grid(y.repeat_interleave(c, dim=0), r))
            back = permute_grid(pred, r.transpose(-1, -2)).reshape((b, c) + tuple(pred.shape[1:])).sum(1)
            total = back if total is None else total + back
        return total / self.group.shape[0]

    def extra_repr(self) -> str:
        return f"group=O (24 rotations), chunk_size={self.chunk_size}"
