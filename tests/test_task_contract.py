"""The contract every task meets, tested once for all of them (e3nn's ``assert_equivariant`` is the model).

Parametrised over every task config (``configs/task/*.yaml``) that has fixtures in ``tests/contracts/``:

* the task config composes alone, and the task, its default model and data all come from the task's package;
* the rotate/unrotate round trip: ``unrotate(targets(rotate(batch, R)), R) = targets(batch)`` (exact for every
  rotation of a point-cloud task; for resampled grids exact on the cube group and within a stated error otherwise);
* the task's fitted equivariant baseline is equivariant through the task's real rotate/unrotate path at round-off
  (float64, Haar rotations; for grids within the stated bound);
* the oracle (``task.targets`` as a predictor) through the path has zero loss and zero equivariance error;
* one training step of the task's smoke experiment (or the task alone) on the contract's tiny data: finite loss,
  finite gradients for every parameter that gets one.

Each task's own tests keep only what is specific to it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from equivrepro.analysis.subset import cast_batch
from equivrepro.metrics import twirl_decomposition
from equivrepro.rotations import haar_rotations, octahedral_group
from equivrepro.train.app import CONFIG_DIR, compose_config
from equivrepro.train.build import build_from_config
from tests.contracts import load_contract

TASKS = sorted(p.stem for p in (Path(CONFIG_DIR) / "task").glob("*.yaml"))
CONTRACTS = {t: load_contract(t) for t in TASKS}


def test_every_task_config_has_contract_fixtures():
    assert not [t for t, c in CONTRACTS.items() if c is None], "add tests/contracts/<task>.py for every configs/task/<task>.yaml"


def _built(task_name: str, tmp_path: Path, *extra: str):
    c = CONTRACTS[task_name]
    cfg = compose_config(
        [f"task={task_name}", "logger=none", f"paths.runs_dir={tmp_path / 'runs'}", *c.write_data(tmp_path), *c.shrink, *extra]
    )
    task, model, dm = build_from_config(cfg)
    dm.setup()
    task.bind_data(dm.statistics())
    return cfg, task, model, dm


@pytest.fixture(scope="module", params=[t for t in TASKS if CONTRACTS[t] is not None])
def built(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"contract_{request.param}")
    cfg, task, model, dm = _built(request.param, tmp)
    items = [dm.heldout_dataset[i] for i in range(min(3, len(dm.heldout_dataset)))]
    batch = cast_batch(dm.collate(items), torch.float64)
    train = cast_batch(dm.collate([dm.train_dataset[i] for i in range(min(4, len(dm.train_dataset)))]), torch.float64)
    gen = torch.Generator().manual_seed(0)
    held = next(iter(task.evaluation_batches(batch, gen).values()))
    fit = next(iter(task.evaluation_batches(train, torch.Generator().manual_seed(1)).values()))
    return {
        "name": request.param,
        "contract": CONTRACTS[request.param],
        "cfg": cfg,
        "task": task,
        "model": model,
        "dm": dm,
        "batch": held,
        "train": fit,
        "tmp": tmp,
    }


def test_task_config_composes_and_its_parts_belong_together(built):
    c, cfg = built["contract"], built["cfg"]
    for node in ("task", "model", "data"):
        assert str(cfg[node]._target_).startswith(c.package + "."), (node, cfg[node]._target_)
    assert cfg.task.name == c.task


def _rotations(contract, b: int, k: int, seed: int) -> tuple[torch.Tensor, bool]:
    if contract.exact_group == "cube":
        return octahedral_group(dtype=torch.float64), True
    return haar_rotations(b * k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).reshape(b, k, 3, 3), False


def test_rotate_then_unrotate_returns_the_targets(built):
    task, batch, c = built["task"], built["batch"], built["contract"]
    b = batch["mask"].shape[0] if "mask" in batch else next(iter(batch.values())).shape[0]
    rot = haar_rotations(b, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    if c.exact_group == "cube":
        rot = octahedral_group(dtype=torch.float64)[torch.arange(b) % 24 + 1]  # non-identity cube rotations: exact
    back = task.unrotate_prediction(task.targets(task.rotate_batch(batch, rot)), rot)
    ref = task.targets(batch)
    for key, v in ref.items():
        err = (back[key] - v).abs().max() / v.abs().max().clamp_min(1e-12)
        assert err < 1e-10, (key, float(err))
    if c.exact_group == "cube":  # and within the stated error for a generic rotation
        rot = haar_rotations(b, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        back = task.unrotate_prediction(task.targets(task.rotate_batch(batch, rot)), rot)
        for key, v in ref.items():
            assert float((back[key] - v).norm() / v.norm()) < c.roundtrip_tol, key


def test_the_fitted_equivariant_baseline_is_equivariant_through_the_path(built):
    task, c = built["task"], built["contract"]
    baseline = task.make_baseline()
    assert baseline is not None, f"{type(task).__name__}.make_baseline() returns None: every task needs a cheap equivariant baseline"
    baseline.fit(task, [built["train"]], task.primary_term)
    batch = built["batch"]
    b = next(iter(task.targets(batch).values())).shape[0]
    rot, exact = _rotations(c, b, 6, seed=5)
    dec = twirl_decomposition(baseline, task, batch, rot, exact_group=exact)[task.primary_term.name]
    pct = float(dec.equiv_unbiased.sum() / dec.total.sum())
    assert abs(pct) < c.equivariant_pct, pct
    if exact:  # and under Haar rotations within the stated bound (the instrument's floor)
        hrot = haar_rotations(b * 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64).reshape(b, 6, 3, 3)
        h = twirl_decomposition(baseline, task, batch, hrot)[task.primary_term.name]
        assert float(h.equiv_unbiased.sum() / h.total.sum()) < c.haar_pct


def test_the_oracle_through_the_path_has_no_loss_and_no_equivariance_error(built):
    task, batch, c = built["task"], built["batch"], built["contract"]
    b = next(iter(task.targets(batch).values())).shape[0]
    rot, exact = _rotations(c, b, 4, seed=7)
    for name, dec in twirl_decomposition(task.targets, task, batch, rot, exact_group=exact).items():
        scale = 1e-20 + float(sum(v.pow(2).sum() for v in task.targets(batch).values()))
        assert float(dec.total.abs().max()) < 1e-10 * scale + 1e-12, name
        assert float(dec.equiv_unbiased.abs().max()) < 1e-10 * scale + 1e-12, name


def test_one_training_step_of_the_smoke_experiment(built, tmp_path):
    from equivrepro import catalog

    name, c = built["name"], built["contract"]
    card = catalog.cards().get(name)
    base = [f"experiment={card.experiments['smoke']}"] if card else [f"task={name}"]
    cfg = compose_config([*base, "logger=none", f"paths.runs_dir={tmp_path / 'runs'}", *c.write_data(tmp_path), *c.shrink])
    task, model, dm = build_from_config(cfg)
    dm.setup()
    task.bind_data(dm.statistics())
    batch = dm.collate([dm.train_dataset[i] for i in range(min(int(cfg.trainer.batch_size), len(dm.train_dataset)))])
    gen = torch.Generator().manual_seed(0)
    b = batch["mask"].shape[0] if "mask" in batch else next(iter(batch.values())).shape[0]
    batch = task.rotate_batch(batch, haar_rotations(b, generator=gen))
    loss, logs = task.training_loss(model, batch, gen)
    loss.backward()
    assert torch.isfinite(loss) and all(isinstance(v, float) for v in logs.values())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
