"""NequIP-style e3nn network: exact equivariance through the harness (both force heads), conservative
forces equal −s∂E/∂x, a smooth cutoff, padding / atom order, double backward, preset sizes."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from equivrepro.metrics import twirl_decomposition
from equivrepro.rotations import haar_rotations
from equivrepro.train.app import compose_config
from tasks.forcefield.models.escaip import EScAIP
from tasks.forcefield.models.nequip import NequIP, polynomial_cutoff
from tasks.forcefield.task import ForceFieldTask
from tests.tasks.forcefield.models.test_escaip import TINY as ESCAIP_TINY
from tests.tasks.forcefield.models.test_escaip import molecules

SMALL = dict(channels=8, lmax=2, num_layers=2, num_basis=6, radial_hidden=16, cutoff=4.0)


def _model(seed: int = 0, **kw) -> NequIP:
    torch.manual_seed(seed)
    return NequIP(**{**SMALL, **kw}).double().eval()


@pytest.mark.parametrize(
    "name, expected", [("nequip_tiny", 129_520), ("nequip_conservative_tiny", 129_489), ("nequip_1m", 973_400), ("nequip_6m", 5_944_006)]
)
def test_preset_parameter_counts(name, expected):
    cfg = compose_config(["task=forcefield", f"model={name}", "logger=none"]).model
    model = instantiate(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(model, NequIP)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("forces", ["direct", "gradient"])
def test_pct_is_round_off_through_the_task_while_escaip_is_not(forces, f64, gen):
    """Built in float64 (e3nn tabulates its Clebsch–Gordan coefficients in the default dtype)."""
    task, batch = ForceFieldTask(energy_std=1.3, force_std=2.5), molecules(gen)
    rot = haar_rotations(6, generator=gen, dtype=torch.float64)
    dec = twirl_decomposition(_model(forces=forces), task, batch, rot)
    assert float(dec["forces"].total.mean()) > 1e-3 and float(dec["energy"].total.mean()) > 1e-3
    assert abs(float(dec["forces"].pct)) < 1e-25 and abs(float(dec["energy"].pct)) < 1e-25
    assert abs(float(dec["forces_l2mae"].pct)) < 1e-12  # jackknife of a non-quadratic loss: round-off of a sqrt
    torch.manual_seed(0)
    escaip = EScAIP(**ESCAIP_TINY).double().eval()
    assert float(twirl_decomposition(escaip, task, batch, rot)["forces"].pct) > 1e-3  # the harness does see breaking


def test_gradient_forces_are_minus_s_times_the_energy_gradient(gen):
    model, batch = _model(forces="gradient", gradient_scale=0.5), molecules(gen, sizes=(5, 3))
    out = model(batch["pos"], batch["z"], batch["mask"])
    h = 1e-5
    for b, i, k in [(0, 1, 0), (0, 4, 2), (1, 2, 1)]:
        plus, minus = batch["pos"].clone(), batch["pos"].clone()
        plus[b, i, k] += h
        minus[b, i, k] -= h
        with torch.no_grad():
            de = (model(plus, batch["z"], batch["mask"])["energy"][b] - model(minus, batch["z"], batch["mask"])["energy"][b]) / (2 * h)
        torch.testing.assert_close(out["forces"][b, i, k], -0.5 * de, rtol=1e-6, atol=1e-9)
    assert out["forces"][~batch["mask"]].abs().sum() == 0


def test_energy_is_smooth_across_the_cutoff():
    """Two atoms just inside and just outside r_c give the same energies: the envelope u(r) → 0 at r_c."""
    model = _model()
    z, mask = torch.tensor([[6, 8]]), torch.ones(1, 2, dtype=torch.bool)
    e = []
    for r in (SMALL["cutoff"] - 1e-4, SMALL["cutoff"] + 1e-4, 2.0):
        pos = torch.tensor([[[0.0, 0.0, 0.0], [r, 0.0, 0.0]]], dtype=torch.float64)
        e.append(model(pos, z, mask)["energy"])
    assert (e[0] - e[1]).abs() < 1e-10
    assert (e[2] - e[1]).abs() > 1e-6  # atoms within the cutoff do interact
    r = torch.tensor([0.5, 3.99, 4.0, 5.0], dtype=torch.float64)
    u = polynomial_cutoff(r, 4.0)
    assert u[0] > 0.9 and 0 < u[1] < 1e-6 and u[2] == 0 and u[3] == 0


def test_padding_and_atom_order_do_not_change_predictions(gen):
    model, batch = _model(), molecules(gen)
    out = model(batch["pos"], batch["z"], batch["mask"])
    alone = model(batch["pos"][2:3, :4], batch["z"][2:3, :4], batch["mask"][2:3, :4])
    torch.testing.assert_close(alone["energy"], out["energy"][2:3])
    torch.testing.assert_close(alone["forces"], out["forces"][2:3, :4])
    perm = torch.randperm(9, generator=gen)
    p = model(batch["pos"][1:2, perm], batch["z"][1:2, perm], batch["mask"][1:2, perm])
    torch.testing.assert_close(p["energy"], out["energy"][1:2])
    torch.testing.assert_close(p["forces"], out["forces"][1:2, perm])


def test_conservative_training_step_back_propagates_through_the_force_gradient(gen):
    """With only the force term in the loss every parameter still gets a gradient: the loss on F = −s∂E/∂x
    is differentiated through the second derivative (create_graph in training)."""
    torch.manual_seed(0)
    model = NequIP(**SMALL, forces="gradient", gradient_scale=None).train()
    batch = molecules(gen, dtype=torch.float32)
    loss, _ = ForceFieldTask(energy_coef=0.0).training_loss(model, batch, gen)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, missing
    with torch.no_grad():
        out = model.eval()(batch["pos"], batch["z"], batch["mask"])
    assert not out["forces"].requires_grad and not out["energy"].requires_grad


def test_direct_training_step_reaches_every_parameter(gen):
    torch.manual_seed(0)
    model = NequIP(**SMALL).train()
    loss, _ = ForceFieldTask().training_loss(model, molecules(gen, dtype=torch.float32), gen)
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]


@pytest.mark.parametrize(
    "kwargs, match", [({"forces": "both"}, "forces must be"), ({"energy_reduce": "max"}, "energy_reduce"), ({"lmax": 0}, "lmax >= 1")]
)
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NequIP(**{**SMALL, **kwargs})
