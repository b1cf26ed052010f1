"""The run checkpoint format (written atomically through :mod:`equivrepro.atomic`).

A checkpoint is ``<run_dir>/checkpoints/last.pt``: a dict with ``step`` (optimizer steps completed),
``model``, ``ema`` (or None), ``optimizer``, ``scheduler``, ``scaler``, ``config`` (the resolved config
as plain containers), ``run_id``. A crash never leaves a truncated checkpoint. The atomic writers are
re-exported here for the training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from equivrepro.atomic import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "save_checkpoint", "load_checkpoint", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "last.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a corrupt file must name itself
        raise RuntimeError(f"cannot read checkpoint {path}: {exc}") from exc
