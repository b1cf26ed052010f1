"""Hydra entry point: ``python -m equivrepro.train task=<t> model=<m> data=<d> optim=<o> …``.

Multirun sweeps (``-m``) run each job in the same process (basic launcher) or through submitit
(``hydra/launcher=slurm`` / ``submitit_local``); each job's identity comes from its config, so a
relaunched sweep skips finished runs and resumes unfinished ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from equivrepro.train.loop import train

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def register_resolvers() -> None:
    """Config resolvers the configs use: ``${len:${data.elements}}`` (data-dependent sizes, e.g. voxel channels)."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))


register_resolvers()


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    logging.getLogger("equivrepro").setLevel(logging.INFO)
    return train(cfg)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The same config ``python -m equivrepro.train <overrides>`` would run, composed in-process.

    Hydra's runtime node is filled in, so ``${hydra:…}`` interpolations resolve (scripts and tests).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides or []), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


if __name__ == "__main__":
    main()
