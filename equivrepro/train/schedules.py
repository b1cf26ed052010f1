"""Learning-rate schedules of the three upstream recipes, as multiplicative factors of the base LR.

* ``constant`` — Proteina (Adam 1e-4) and VoxMol (AdamW 2e-5): factor 1.
* ``cosine_warmup`` — EScAIP: linear warm-up from ``warmup_start_factor`` to 1 over ``warmup_steps``,
  then a cosine from 1 down to ``min_factor`` at ``total_steps`` (upstream: 0.1 epoch, 0.2, 0.5).
"""

from __future__ import annotations

import math

import torch

__all__ = ["lr_factor", "build_scheduler"]


def lr_factor(
    step: int, name: str, total_steps: int, warmup_steps: int = 0, warmup_start_factor: float = 1.0, min_factor: float = 0.0
) -> float:
    """The LR multiplier at optimizer step ``step`` (0-based)."""
    if name == "constant":
        return 1.0
    if name == "cosine_warmup":
        if warmup_steps > 0 and step < warmup_steps:
            return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule '{name}' (expected 'constant' or 'cosine_warmup')")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    kw = {k: v for k, v in dict(cfg).items() if k != "name"}
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg["name"], total_steps, **kw))
