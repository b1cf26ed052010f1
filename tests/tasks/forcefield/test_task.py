"""ForceFieldTask: group action, loss terms, EScAIP's training loss, and an end-to-end harness run."""

from __future__ import annotations

import math

import torch

from equivrepro.metrics import twirl_decomposition
from equivrepro.rotations import haar_rotations
from equivrepro.train.app import compose_config
from equivrepro.train.loggers import read_results
from equivrepro.train.loop import train
from tasks.forcefield.task import ForceFieldTask
from tests.tasks.forcefield.files import standard_groups, write_spice
from tests.tasks.forcefield.models.test_escaip import TINY, _model, molecules


def test_rotation_acts_on_positions_and_forces_and_unrotates_predictions(gen):
    task, batch = ForceFieldTask(), molecules(gen)
    rot = haar_rotations(3, generator=gen, dtype=torch.float64)
    rb = task.rotate_batch(batch, rot)
    torch.testing.assert_close(rb["pos"], batch["pos"] @ rot.transpose(1, 2))
    torch.testing.assert_close(rb["forces"], batch["forces"] @ rot.transpose(1, 2))
    assert torch.equal(rb["energy"], batch["energy"]) and torch.equal(rb["z"], batch["z"])
    back = task.unrotate_prediction(task.targets(rb), rot)
    torch.testing.assert_close(back["forces"], batch["forces"])
    assert torch.equal(back["energy"], batch["energy"])
    oracle = twirl_decomposition(task.targets, task, batch, haar_rotations(5, generator=gen, dtype=torch.float64))
    assert all(abs(float(d.total.sum())) < 1e-12 for d in oracle.values())  # round-off only


def test_terms_by_hand(gen):
    task, batch = ForceFieldTask(), molecules(gen, sizes=(2, 3))
    pred = {"energy": batch["energy"] + torch.tensor([1.0, -2.0], dtype=torch.float64), "forces": batch["forces"].clone()}
    pred["forces"][0, 0] += torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)  # |err| = 5 on atom 0 of molecule 0
    pred["forces"][1, 2] += torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    terms = {t.name: t for t in task.terms}
    assert terms["forces"].quadratic and terms["energy"].quadratic and not terms["forces_l2mae"].quadratic
    target = task.targets(batch)
    torch.testing.assert_close(terms["forces"].fn(pred, target, batch), torch.tensor([25 / 2, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(terms["forces_l2mae"].fn(pred, target, batch), torch.tensor([5 / 2, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(terms["energy"].fn(pred, target, batch), torch.tensor([1.0, 4.0], dtype=torch.float64))
    null = task.null_prediction(batch)
    assert null["forces"].abs().sum() == 0 and null["energy"].abs().sum() == 0


def test_training_loss_is_escaips_weighted_mae_in_normalised_units(gen):
    task = ForceFieldTask(energy_mean=0.5, energy_std=2.0, force_std=4.0, energy_coef=4.0, force_coef=100.0)
    model, batch = _model(), molecules(gen)
    loss, logs = task.training_loss(model, batch, gen)
    with torch.no_grad():
        raw = model(batch["pos"], batch["z"], batch["mask"])
    e_pred = raw["energy"] * 2.0 + 0.5
    f_err = (raw["forces"] * 4.0 - batch["forces"]).norm(dim=-1)[batch["mask"]]
    expected = 4.0 * (e_pred - batch["energy"]).abs().mean() / 2.0 + 100.0 * f_err.mean() / 4.0
    assert math.isclose(float(loss.detach()), float(expected), rel_tol=1e-6)
    assert math.isclose(logs["forces_l2mae"], float(f_err.mean()), rel_tol=1e-6)


def test_harness_trains_the_tiny_model_and_logs_the_decomposition(tmp_path):
    path = write_spice(tmp_path / "ff.h5", standard_groups(8, 3))
    model = [f"model.{k}={v}" for k, v in TINY.items()]
    cfg = compose_config(
        [
            "task=forcefield",
            "logger=none",
            f"paths.runs_dir={tmp_path / 'runs'}",
            f"data.path={path}",
            "data.heldout_size=2",
            "trainer.max_steps=6",
            "trainer.batch_size=4",
            "trainer.progress_bar=false",
            "trainer.checkpoint_every=3",
            "equivariance.every=3",
            "equivariance.num_samples=4",
            "equivariance.k=3",
            "equivariance.batch_size=4",
            "equivariance.cube_group=true",
            *model,
        ]
    )
    out = train(cfg)
    rows = read_results(out["run_dir"] + "/metrics.csv")
    names = {m for _, m, _ in rows}
    for key in (
        "train/loss",
        "train/forces_l2mae",
        "equiv/forces/pct",
        "equiv/forces_l2mae/pct",
        "equiv/energy/pct",
        "equiv/forces/total_rel_null",
        "equiv_cube/forces/pct",
    ):
        assert key in names, key
    pct = [v for s, m, v in rows if m == "equiv/forces/pct_plugin"]
    assert len(pct) == 3 and all(0.05 < v <= 1 for v in pct)  # far from equivariant this early
    energy_pct = [v for _, m, v in rows if m == "equiv/energy/pct"]
    assert max(abs(v) for v in energy_pct) < 1e-6
