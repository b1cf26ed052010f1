"""Exponential moving average of model weights: θ_ema ← d·θ_ema + (1 − d)·θ after every step."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Keeps an eval-mode copy of ``model`` whose floating parameters and buffers track an EMA.

    Integer buffers (counters) are copied. ``decay`` is the per-step factor d (0.999 in all three
    upstream recipes).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = model.state_dict()
        for key, ema_v in self.model.state_dict().items():
            v = src[key].detach()
            if ema_v.dtype.is_floating_point:
                ema_v.mul_(self.decay).add_(v.to(ema_v.dtype), alpha=1.0 - self.decay)
            else:
                ema_v.copy_(v)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
