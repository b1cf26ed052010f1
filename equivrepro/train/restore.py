"""Rebuild a run from its directory: config, task, model (EMA or raw weights) and data module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from equivrepro.data import DataModule
from equivrepro.runs import RunDir
from equivrepro.task import Task
from equivrepro.train.build import build_from_config
from equivrepro.train.checkpoint import load_checkpoint

__all__ = ["RestoredRun", "load_run"]


@dataclass
class RestoredRun:
    run_dir: Path
    config: DictConfig
    task: Task
    model: torch.nn.Module
    datamodule: DataModule
    step: int

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)


def load_run(
    run_dir: str | Path,
    weights: str = "ema",
    device: str | torch.device = "cpu",
    setup_data: bool = True,
    checkpoint: str | Path | int | None = None,
) -> RestoredRun:
    """``weights='ema'`` loads the EMA weights when the run kept them (else the raw ones), ``'model'`` the raw ones.

    ``checkpoint``: ``None`` (``last.pt``), a step (its snapshot, :meth:`RunDir.snapshot`) or a file of the run
    (a relative path is taken relative to ``run_dir``). With ``setup_data`` the data module is set up and the
    task bound to it (normalisers from the data, as in training); otherwise to the training split's statistics
    stored in the checkpoint.
    """
    run = RunDir(run_dir)
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if checkpoint is None or isinstance(checkpoint, int):
        ckpt_path = run.checkpoint(checkpoint)
    else:
        ckpt_path = run.path / Path(checkpoint)
        if not ckpt_path.exists():
            raise FileNotFoundError(f"no checkpoint at {ckpt_path}")
    state: dict[str, Any] = load_checkpoint(ckpt_path, map_location=device)
    cfg = OmegaConf.create(state["config"])
    task, model, datamodule = build_from_config(cfg)
    sd = state["ema"] if weights == "ema" and state.get("ema") is not None else state["model"]
    model.load_state_dict(sd)
    model.to(device).eval()
    if setup_data:
        datamodule.setup()
    task.bind_data(datamodule.statistics() if setup_data else state.get("statistics") or {})
    return RestoredRun(run_dir=run.path, config=cfg, task=task, model=model, datamodule=datamodule, step=int(state["step"]))
