"""Build the objects of a run from its (Hydra) config, and derive the run's identity from it.

The identity — run directory and wandb id — is a hash of the resolved config minus the keys that do
not change results (paths, logging, launcher, progress bars, worker counts). Relaunching the same
config therefore lands in the same directory: a finished run is skipped and an unfinished one resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from equivrepro.data import DataModule
from equivrepro.task import Task

__all__ = ["build_from_config", "run_identity", "NON_IDENTITY_KEYS", "plain_config"]

#: Config entries that do not affect what a run computes.
NON_IDENTITY_KEYS = (
    "paths",
    "logger",
    "hydra",
    "trainer.progress_bar",
    "trainer.num_workers",
    "trainer.pin_memory",
    "trainer.device",
    "trainer.log_every",
    "trainer.snapshot_steps",
    "trainer.checkpoint_every",
    "trainer.interrupt_after_step",
    "trainer.profile_compute",
)


def plain_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved config as plain containers (no ``hydra`` node)."""
    if isinstance(cfg, DictConfig):
        container = {}
        for key in cfg:
            if key == "hydra":
                continue
            node = cfg[key]
            container[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    else:
        container = json.loads(json.dumps(cfg, default=str))
    container.pop("hydra", None)
    return container


def _relative_to_paths(node: Any, roots: list[tuple[str, str]]) -> Any:
    """``node`` with every string that starts with a resolved ``paths.*`` directory rewritten relative to it."""
    if isinstance(node, dict):
        return {k: _relative_to_paths(v, roots) for k, v in node.items()}
    if isinstance(node, list):
        return [_relative_to_paths(v, roots) for v in node]
    if isinstance(node, str):
        for name, root in roots:
            if node == root or node.startswith(root.rstrip("/") + "/"):
                return "${paths." + name + "}" + node[len(root.rstrip("/")) :]
    return node


def run_identity(cfg: DictConfig | dict) -> str:
    """A 10-hex-digit hash of the result-relevant part of the config.

    File names under a ``paths.*`` directory (data files, caches) count relative to it, so the same run
    keeps its identity when the checkout, the data root or the runs root moves (another machine, a
    cluster's scratch): ``data.path=/a/data/x.h5`` with ``paths.data_dir=/a/data`` hashes as
    ``${paths.data_dir}/x.h5``.
    """
    d = plain_config(cfg)
    paths = d.get("paths") if isinstance(d.get("paths"), dict) else {}
    roots = sorted(((k, str(v)) for k, v in paths.items() if isinstance(v, str) and v.startswith("/")), key=lambda kv: -len(kv[1]))
    d = _relative_to_paths(d, roots)
    for dotted in NON_IDENTITY_KEYS:
        node, *rest = dotted.split(".")
        if not rest:
            d.pop(node, None)
        elif isinstance(d.get(node), dict):
            d[node].pop(rest[0], None)
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def build_from_config(cfg: DictConfig | dict) -> tuple[Task, Any, DataModule]:
    """``(task, model, datamodule)`` from a config with ``task``, ``model`` and ``data`` nodes.

    The data module is not set up here (that may read large files); call ``datamodule.setup()``.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    for node in ("task", "model", "data"):
        if cfg.get(node) is None:
            raise ValueError(f"config has no '{node}' node: choose one with {node}=<option> (see configs/{node}/)")
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    name = task_cfg.pop("name", None)  # `task.name` names runs and metric prefixes; not a constructor argument
    task = instantiate(task_cfg, _convert_="all")
    if name:
        task.name = name
    model = instantiate(cfg.model, _convert_="all")
    datamodule = instantiate(cfg.data, _convert_="all")
    return task, model, datamodule


def run_dir_for(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / f"{cfg.name}-{run_identity(cfg)}"
