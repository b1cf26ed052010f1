"""Rebuild a run from its directory: config, task, model (EMA or raw weights) and data module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from equivrepro.data import DataModule
from equivrepro.task import Task
from equivrepro.train.build import build_from_config
from equivrepro.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

__all__ = ["RestoredRun", "load_run"]


@dataclass
class RestoredRun:
    run_dir: Path
    config: DictConfig
    task: Task
    model: torch.nn.Module
    datamodule: DataModule
    step: int


def load_run(run_dir: str | Path, weights: str = "ema", device: str | torch.device = "cpu", setup_data: bool = True,
             checkpoint: str | Path | None = None) -> RestoredRun:
    """``weights='ema'`` loads the EMA weights when the run kept them (else the raw ones), ``'model'`` the raw ones.

    ``checkpoint``: another checkpoint file of the run, e.g. a snapshot ``checkpoints/step_00000500.pt``
    (default ``checkpoints/last.pt``); a relative path is taken relative to ``run_dir``.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / CHECKPOINT_NAME if checkpoint is None else run_dir / Path(checkpoint)
    if not ckpt_path.exists():
        raise FileNotFoundError(f"no checkpoint at {ckpt_path}")
    state: dict[str, Any] = load_checkpoint(ckpt_path, map_location=device)
    cfg = OmegaConf.create(state["config"])
    task, model, datamodule = build_from_config(cfg)
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    sd = state["ema"] if weights == "ema" and state.get("ema") is not None else state["model"]
    model.load_state_dict(sd)
    model.to(device).eval()
    if setup_data:
        datamodule.setup()
    return RestoredRun(run_dir=run_dir, config=cfg, task=task, model=model, datamodule=datamodule, step=int(state["step"]))
