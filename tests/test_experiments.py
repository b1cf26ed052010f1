"""Every experiment composes alone into one task, builds the model it documents, and every paper experiment runs.

* ``python -m equivrepro.train experiment=<name>`` needs nothing else: the experiment selects its task, model and
  data (lightning-hydra-template's ``experiment/`` convention), and all three come from one task package;
* the model is built on the meta device and has the parameter count its config documents (the ``… N parameters``
  comment of ``configs/model/<name>.yaml``), exactly;
* each ``*_paper`` experiment takes one training step (its precision, optimizer, schedule, EMA) and one
  equivariance evaluation (its floor, cube group, gradient norms, spectrum) on tiny data in that experiment's real
  input format (``tests/contracts/<task>.py``), shrinking only batch, length, grid and held-out sizes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from equivrepro.train.app import CONFIG_DIR, compose_config
from equivrepro.train.build import build_from_config
from tests.contracts import load_contract

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
PAPER = [e for e in EXPERIMENTS if e.endswith("_paper")]
_COUNT = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+) (?:trainable )?parameters")


def documented_parameters(model_choice: str) -> int:
    """The count a model config states in its comments (``…: 6,137,225 parameters`` or ``Parameters: 262,208``)."""
    text = (Path(CONFIG_DIR) / "model" / f"{model_choice}.yaml").read_text()
    comments = " ".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    m = _COUNT.search(comments) or re.search(r"Parameters: (\d{1,3}(?:,\d{3})+)", comments)
    assert m, f"configs/model/{model_choice}.yaml documents no parameter count ('… N parameters' in a comment)"
    return int(m.group(1).replace(",", ""))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_alone_into_one_task_with_its_documented_model(experiment):
    cfg = compose_config([f"experiment={experiment}", "logger=none"])
    packages = {node: ".".join(str(cfg[node]._target_).split(".")[:2]) for node in ("task", "model", "data")}
    assert len(set(packages.values())) == 1, packages
    assert packages["task"] == f"tasks.{cfg.task.name}"
    with torch.device("meta"):
        model = instantiate(cfg.model, _convert_="all")
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == documented_parameters(cfg.hydra.runtime.choices.model), (experiment, n)


@pytest.mark.parametrize("experiment", PAPER)
def test_paper_experiment_trains_one_step_and_evaluates_on_its_real_input_format(experiment, tmp_path):
    from equivrepro.train.ema import EMA
    from equivrepro.train.equivariance import EquivarianceCallback
    from equivrepro.train.loop import _autocast
    from equivrepro.train.optim import build_optimizer
    from equivrepro.train.schedules import build_scheduler

    task_name = compose_config([f"experiment={experiment}", "logger=none"]).task.name
    contract = load_contract(task_name)
    assert contract is not None and contract.write_paper_data is not None, f"tests/contracts/{task_name}.py has no paper data"
    cfg = compose_config(
        [
            f"experiment={experiment}",
            "logger=none",
            f"paths.runs_dir={tmp_path / 'runs'}",
            *contract.write_paper_data(tmp_path),
            *contract.paper_shrink,
        ]
    )
    torch.manual_seed(0)
    task, model, dm = build_from_config(cfg)
    dm.setup()
    task.bind_data(dm.statistics())
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, int(cfg.trainer.max_steps))
    ema = EMA(model, float(cfg.trainer.ema_decay)) if cfg.trainer.ema_decay else None
    from equivrepro.rotations import haar_rotations

    batch = dm.collate([dm.train_dataset[i] for i in range(min(int(cfg.trainer.batch_size), len(dm.train_dataset)))])
    gen = torch.Generator().manual_seed(0)
    b = batch["mask"].shape[0] if "mask" in batch else next(iter(batch.values())).shape[0]
    batch = task.rotate_batch(batch, haar_rotations(b, generator=gen)) if cfg.trainer.augment else batch
    with _autocast(torch.device("cpu"), str(cfg.trainer.precision)):
        loss, _ = task.training_loss(model, batch, gen)
    loss.backward()
    assert torch.isfinite(loss)
    if cfg.trainer.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.trainer.grad_clip))
    optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update(model)
    e = cfg.equivariance
    callback = EquivarianceCallback(
        task,
        dm.heldout_dataset,
        dm.collate,
        torch.device("cpu"),
        num_samples=e.num_samples,
        k=e.k,
        batch_size=e.batch_size,
        chunk_size=e.chunk_size,
        seed=e.seed,
        grad_norms=e.grad_norms,
        cube_group=e.cube_group,
        floor=e.floor,
        linear_head=e.get("linear_head"),
        spectrum_l_max=e.get("spectrum_l_max"),
        bootstrap=50,
        train_dataset=dm.train_dataset,
        baseline_samples=e.baseline_samples,
    )
    metrics = callback(ema.model if ema is not None else model)
    headline = [v for k, v in metrics.items() if k.endswith(f"/{task.primary_term.name}/pct") and k.startswith("equiv/")]
    assert headline and all(math.isfinite(v) and -0.5 < v <= 1.5 for v in headline)
    assert any(k.endswith("/total_rel_baseline") for k in metrics)
