"""DipoleTask: group action, loss terms, the point-charge baseline, data binding, and one harness training step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from equivrepro.metrics import twirl_decomposition
from equivrepro.metrics.baselines import LinearBaseline
from equivrepro.rotations import haar_rotations
from equivrepro.train.app import compose_config
from equivrepro.train.loggers import read_results
from equivrepro.train.loop import train
from tasks.dipoles.baseline import PointChargeFeatures
from tasks.dipoles.data import DipoleDataModule
from tasks.dipoles.models.transformer import DipoleTransformer
from tasks.dipoles.task import DipoleTask
from tests.tasks.dipoles.files import CHARGES, METHANOL, point_charge_dipole, standard_groups, write_dipoles

ELEMENTS = (1, 6, 8)


def _batch(tmp_path, n_molecules: int = 6, m: int = 2) -> dict[str, torch.Tensor]:
    """Every conformer of a small synthetic file as one float64 batch, its dipoles recomputed in float64 from the point
    charges CHARGES (the file stores float32)."""
    dm = DipoleDataModule(str(write_dipoles(tmp_path / "d.h5", standard_groups(n_molecules, m))), heldout_size=1)
    dm.setup()
    items = [dm.base[i] for i in range(len(dm.base))]
    batch = {k: v.double() if v.is_floating_point() else v for k, v in dm.collate(items).items()}
    exact = [point_charge_dipole(it["z"].numpy(), it["pos"].double().numpy()) for it in items]
    torch.testing.assert_close(torch.tensor(np.stack(exact)), batch["dipole"], rtol=1e-5, atol=1e-5)
    batch["dipole"] = torch.tensor(np.stack(exact))
    return batch


def test_rotation_acts_on_positions_and_dipole_and_unrotates_predictions(tmp_path, gen):
    task, batch = DipoleTask(dipole_scale=1.0), _batch(tmp_path)
    rot = haar_rotations(batch["pos"].shape[0], generator=gen, dtype=torch.float64)
    rb = task.rotate_batch(batch, rot)
    torch.testing.assert_close(rb["pos"], torch.einsum("bij,bnj->bni", rot, batch["pos"]))
    torch.testing.assert_close(rb["dipole"], torch.einsum("bij,bj->bi", rot, batch["dipole"]))
    assert torch.equal(rb["z"], batch["z"]) and torch.equal(rb["mask"], batch["mask"])
    torch.testing.assert_close(task.unrotate_prediction(task.targets(rb), rot)["dipole"], batch["dipole"])
    oracle = twirl_decomposition(task.targets, task, batch, haar_rotations(5, generator=gen, dtype=torch.float64))
    assert all(abs(float(d.total.sum())) < 1e-12 for d in oracle.values())


def test_terms_by_hand_and_the_null_prediction(tmp_path):
    task, batch = DipoleTask(dipole_scale=1.0), _batch(tmp_path, n_molecules=2, m=1)
    target = task.targets(batch)
    pred = {"dipole": target["dipole"] + torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, -2.0]], dtype=torch.float64)}
    terms = {t.name: t for t in task.terms}
    assert task.primary_term.name == "dipole" and terms["dipole"].quadratic and not terms["dipole_l2"].quadratic
    torch.testing.assert_close(terms["dipole"].fn(pred, target, batch), torch.tensor([25.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(terms["dipole_l2"].fn(pred, target, batch), torch.tensor([5.0, 2.0], dtype=torch.float64))
    assert task.null_prediction(batch)["dipole"].abs().sum() == 0


def test_training_loss_is_the_mse_in_units_of_dipole_scale(tmp_path, gen):
    task, batch = DipoleTask(dipole_scale=2.0), _batch(tmp_path)
    model = DipoleTransformer(dim=16, num_layers=1, heads=2, head_gain=1.0).double()
    loss, logs = task.training_loss(model, batch, gen)
    with torch.no_grad():
        raw = model(batch["pos"], batch["z"], batch["mask"])
    se = (2.0 * raw - batch["dipole"]).pow(2).sum(-1)
    assert math.isclose(float(loss.detach()), float(se.mean()) / 4.0, rel_tol=1e-5)
    assert math.isclose(logs["dipole_mse"], float(se.mean()), rel_tol=1e-5)
    torch.testing.assert_close(task.predict(model, batch)["dipole"], 2.0 * raw)


def test_bind_data_takes_an_unset_scale_from_the_data_and_reports_an_explicit_one_far_from_it():
    auto = DipoleTask()
    with pytest.raises(RuntimeError, match="not bound"):
        auto._scale()
    record = auto.bind_data({"dipole_rms": 2.5})
    assert auto.dipole_scale == 2.5 and record["from_data"] == ["dipole_scale"] and not record["mismatch"]
    with pytest.raises(ValueError, match="dipole_rms"):
        DipoleTask().bind_data({})
    explicit = DipoleTask(dipole_scale=2.665)
    assert explicit.bind_data({"dipole_rms": 2.0})["mismatch"] == {}
    assert explicit.bind_data({"dipole_rms": 1.0})["mismatch"] == {"dipole_scale": {"config": 2.665, "data": 1.0}}
    assert explicit.dipole_scale == 2.665
    with pytest.raises(ValueError, match="dipole_scale"):
        DipoleTask(dipole_scale=-1.0)


# ------------------------------------------------------------------------------------------ baseline
def test_point_charge_features_by_hand_and_bonds_of_methanol(f64):
    z, pos = METHANOL
    batch = {"pos": torch.tensor(pos)[None], "z": torch.tensor(z)[None], "mask": torch.ones(1, len(z), dtype=torch.bool)}
    feats = PointChargeFeatures(ELEMENTS, bond_dipoles=True)
    assert feats.names == ["q_H", "q_C", "q_O", "p_H-C", "p_H-O", "p_C-O"]
    phi = feats(batch)["dipole"][0]  # (3, P)
    c = pos - pos.mean(0)
    for col, el in enumerate(ELEMENTS):
        np.testing.assert_allclose(phi[:, col].numpy(), c[z == el].sum(0), atol=1e-12)
    unit = lambda a, b: (pos[b] - pos[a]) / np.linalg.norm(pos[b] - pos[a])  # noqa: E731
    np.testing.assert_allclose(phi[:, 3].numpy(), unit(3, 0) + unit(4, 0) + unit(5, 0), atol=1e-12)  # three H→C bonds
    np.testing.assert_allclose(phi[:, 4].numpy(), unit(2, 1), atol=1e-12)  # the hydroxyl H→O
    np.testing.assert_allclose(phi[:, 5].numpy(), unit(0, 1), atol=1e-12)  # C→O
    with pytest.raises(ValueError, match=r"element\(s\) \[8\].*task.elements"):
        PointChargeFeatures((1, 6))(batch)


@pytest.mark.parametrize("bond_dipoles", [False, True])
def test_least_squares_recovers_a_point_charge_model_and_linearbaseline_matches(tmp_path, bond_dipoles):
    batch = _batch(tmp_path)
    task = DipoleTask(elements=ELEMENTS, baseline_bond_dipoles=bond_dipoles)
    phi = task.baseline_features()(batch)["dipole"]  # (B, 3, P)
    theta, *_ = np.linalg.lstsq(phi.reshape(-1, phi.shape[-1]).numpy(), batch["dipole"].reshape(-1).numpy(), rcond=None)
    pred = phi.numpy() @ theta
    np.testing.assert_allclose(pred, batch["dipole"].numpy(), atol=1e-8)  # the data is a point-charge model: exact fit
    q = dict(zip(ELEMENTS, theta[:3]))
    np.testing.assert_allclose(q[8] - q[1], CHARGES[8] - CHARGES[1], atol=1e-6)  # charges up to one common shift
    fitted = task.make_baseline().fit(task, [batch])
    assert isinstance(fitted, LinearBaseline)
    np.testing.assert_allclose(fitted(batch)["dipole"].numpy(), pred, atol=1e-6)


def test_point_charge_model_is_equivariant_at_round_off_and_the_transformer_is_not(tmp_path, gen, f64):
    batch = _batch(tmp_path)
    task = DipoleTask(dipole_scale=1.0, elements=ELEMENTS)
    features = task.baseline_features()
    theta = torch.tensor([0.3, -0.1, -0.5])  # any θ: each column of Φ rotates with the molecule
    baseline = lambda b: {"dipole": features(b)["dipole"] @ theta}  # noqa: E731
    rots = haar_rotations(8, generator=gen, dtype=torch.float64)
    exact = twirl_decomposition(baseline, task, batch, rots)
    assert exact["dipole"].total.sum() > 0.1 and abs(exact["dipole"].pct) < 1e-12
    model = DipoleTransformer(dim=16, num_layers=1, heads=2, head_gain=1.0).double()
    learned = twirl_decomposition(model, task, batch, rots)
    assert learned["dipole"].pct > 1e-3 and learned["dipole_l2"].pct > 1e-3


# ------------------------------------------------------------------------------------------ harness
def test_one_training_run_of_the_smoke_experiment_logs_the_decomposition(tmp_path):
    path = write_dipoles(tmp_path / "tiny.h5", standard_groups(8, 2))
    cfg = compose_config(
        [
            "experiment=dipoles_smoke",
            "logger=none",
            f"paths.runs_dir={tmp_path / 'runs'}",
            f"data.path={path}",
            "data.heldout_size=2",
            "task.elements=[1,6,8]",
            "trainer.max_steps=4",
            "trainer.batch_size=4",
            "trainer.progress_bar=false",
            "trainer.checkpoint_every=2",
            "equivariance.every=2",
            "equivariance.log_points=0",
            "equivariance.num_samples=4",
            "equivariance.k=3",
            "equivariance.batch_size=4",
            "model.dim=16",
            "model.num_layers=1",
            "model.heads=2",
        ]
    )
    out = train(cfg)
    rows = read_results(out["run_dir"] + "/metrics.csv")
    names = {m for _, m, _ in rows}
    for key in (
        "train/loss",
        "train/dipole_mse",
        "equiv/dipole/pct",
        "equiv/dipole_l2/pct",
        "equiv/dipole/total_rel_null",
        "equiv/dipole/total_rel_baseline",
    ):
        assert key in names, key
    assert json.loads((Path(out["run_dir"]) / "status.json").read_text())["bound"]["from_data"] == ["dipole_scale"]
    pct = [v for _, m, v in rows if m == "equiv/dipole/pct_plugin"]
    assert len(pct) == 3 and all(0 < v <= 1 for v in pct)
