"""SchNet (torch-geometric) with the plain-torch interaction graph: the graph equals graph.py's, forces are
−s∂E/∂x, pct is round-off through the harness, double backward reaches every parameter, preset sizes."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from equivrepro.metrics import twirl_decomposition
from equivrepro.rotations import haar_rotations
from equivrepro.train.app import compose_config
from tasks.forcefield.graph import build_neighbor_graph
from tasks.forcefield.models.schnet import PaddedInteractionGraph, SchNetForceField
from tasks.forcefield.task import ForceFieldTask
from tests.tasks.forcefield.models.test_escaip import molecules

SMALL = dict(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=10, cutoff=4.0)


def _model(seed: int = 0, **kw) -> SchNetForceField:
    torch.manual_seed(seed)
    return SchNetForceField(**{**SMALL, **kw}).double().eval()


@pytest.mark.parametrize("name, expected", [("schnet_tiny", 63_234), ("schnet_1m", 984_770), ("schnet_6m", 5_848_802)])
def test_preset_parameter_counts(name, expected):
    cfg = compose_config(["task=forcefield", f"model={name}", "logger=none"]).model
    model = instantiate(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(model, SchNetForceField)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_interaction_graph_is_the_neighbor_list_of_graph_py(gen):
    batch = molecules(gen)
    pos, mask = batch["pos"], batch["mask"]
    molecule = torch.arange(3)[:, None].expand_as(mask)[mask]
    edge_index, weight = PaddedInteractionGraph(3.0, 4)(pos[mask], molecule)
    graph = build_neighbor_graph(pos, mask, 3.0, 4)
    expected = {
        (int(graph.neighbors[i, k]), i)
        for i in range(graph.num_atoms)
        for k in range(graph.neighbors.shape[1])
        if graph.neighbor_mask[i, k] and int(graph.neighbors[i, k]) != i
    }
    assert {tuple(e) for e in edge_index.t().tolist()} == expected and len(expected) > 10
    x = pos[mask]
    torch.testing.assert_close(weight, (x[edge_index[1]] - x[edge_index[0]]).norm(dim=-1))
    assert bool((weight <= 3.0).all())


def test_pct_is_round_off_through_the_task(gen):
    task, batch = ForceFieldTask(energy_std=1.3, force_std=2.5), molecules(gen)
    dec = twirl_decomposition(_model(), task, batch, haar_rotations(6, generator=gen, dtype=torch.float64))
    assert float(dec["forces"].total.mean()) > 1e-3 and float(dec["energy"].total.mean()) > 1e-3
    assert abs(float(dec["forces"].pct)) < 1e-25 and abs(float(dec["energy"].pct)) < 1e-25


def test_forces_are_minus_s_times_the_energy_gradient(gen):
    model, batch = _model(gradient_scale=2.0), molecules(gen, sizes=(5, 3))
    out = model(batch["pos"], batch["z"], batch["mask"])
    h = 1e-5
    for b, i, k in [(0, 0, 2), (0, 3, 1), (1, 1, 0)]:
        plus, minus = batch["pos"].clone(), batch["pos"].clone()
        plus[b, i, k] += h
        minus[b, i, k] -= h
        with torch.no_grad():
            de = (model(plus, batch["z"], batch["mask"])["energy"][b] - model(minus, batch["z"], batch["mask"])["energy"][b]) / (2 * h)
        torch.testing.assert_close(out["forces"][b, i, k], -2.0 * de, rtol=1e-6, atol=1e-9)
    assert out["forces"][~batch["mask"]].abs().sum() == 0


def test_padding_leaves_predictions_unchanged(gen):
    model, batch = _model(), molecules(gen)
    out = model(batch["pos"], batch["z"], batch["mask"])
    alone = model(batch["pos"][2:3, :4], batch["z"][2:3, :4], batch["mask"][2:3, :4])
    torch.testing.assert_close(alone["energy"], out["energy"][2:3])
    torch.testing.assert_close(alone["forces"], out["forces"][2:3, :4])


def test_force_loss_reaches_every_parameter_through_the_second_derivative(gen):
    torch.manual_seed(0)
    model = SchNetForceField(**SMALL, gradient_scale=None).train()
    loss, _ = ForceFieldTask(energy_coef=0.0).training_loss(model, molecules(gen, dtype=torch.float32), gen)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert missing == ["schnet.lin2.bias"], missing  # the per-atom energy offset: a constant, no force


def test_bad_readout_is_rejected():
    with pytest.raises(ValueError, match="readout"):
        SchNetForceField(**SMALL, readout="max")
