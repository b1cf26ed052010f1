"""Optimizer construction with the usual no-weight-decay groups (biases, norms, embeddings)."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from torch import nn

__all__ = ["parameter_groups", "build_optimizer"]

_NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def parameter_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights that decay, and biases / 1-D parameters / norm and embedding weights that do not."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, _NO_DECAY_MODULES) or type(module).__name__ in {"RMSNorm"}:
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """``cfg`` is a Hydra node with ``_target_`` (torch.optim.AdamW/Adam/SGD) and its keyword arguments."""
    return instantiate(cfg, params=parameter_groups(model), _convert_="all")
