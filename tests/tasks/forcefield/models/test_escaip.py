"""EScAIP: parameter counts of the paper sizes, exact invariance of the energy, a non-equivariant force
head at initialisation that becomes exactly equivariant when twirled over the cube group or when its
output rows are made equal."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from equivrepro.metrics import TwirledPredictor, twirl_decomposition
from equivrepro.rotations import haar_rotations, octahedral_group, rotate_points
from equivrepro.train.app import compose_config
from tasks.forcefield.models.escaip import EScAIP, parameter_count
from tasks.forcefield.task import ForceFieldTask

TINY = dict(
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    atom_embedding_size=8,
    edge_distance_expansion_size=16,
    edge_distance_embedding_size=16,
    node_direction_embedding_size=8,
    max_neighbors=6,
)


def _model_kwargs(name: str) -> dict:
    cfg = OmegaConf.to_container(compose_config(["task=forcefield", f"model={name}", "logger=none"]).model, resolve=True)
    assert cfg.pop("_target_") == "tasks.forcefield.models.escaip.EScAIP"
    return cfg


@pytest.mark.parametrize("name, target", [("escaip_1m", 1e6), ("escaip_4m", 4e6), ("escaip_6m", 6e6)])
def test_paper_sizes_are_within_five_percent(name, target):
    n = parameter_count(**_model_kwargs(name))
    assert abs(n - target) / target < 0.05, (name, n)


def test_tiny_preset_parameter_count():
    assert parameter_count(**_model_kwargs("escaip_tiny")) == 159_109


def test_force_head_gain_scales_the_initial_forces_only(gen):
    batch = molecules(gen)
    plain, small = _model(force_head_gain=1.0), _model(force_head_gain=0.1)
    a, b = (m(batch["pos"], batch["z"], batch["mask"]) for m in (plain, small))
    torch.testing.assert_close(b["forces"], 0.1 * a["forces"], rtol=1e-6, atol=1e-12)  # F is linear in W (zero bias at init)
    torch.testing.assert_close(b["energy"], a["energy"])


def molecules(gen: torch.Generator, sizes=(6, 9, 4), dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Random padded molecules (positions Å, elements H C N O) with random force/energy labels."""
    n = max(sizes)
    mask = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
    pos = torch.randn(len(sizes), n, 3, generator=gen, dtype=dtype) * 1.6 * mask[..., None]
    z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (len(sizes), n), generator=gen)] * mask
    forces = torch.randn(len(sizes), n, 3, generator=gen, dtype=dtype) * mask[..., None]
    return {"pos": pos, "z": z, "mask": mask, "energy": torch.randn(len(sizes), generator=gen, dtype=dtype), "forces": forces}


def _model(seed: int = 0, **kw) -> EScAIP:
    torch.manual_seed(seed)
    return EScAIP(**{**TINY, **kw}).double().eval()


def test_energy_is_rotation_invariant_and_forces_are_not_equivariant(gen):
    model, batch = _model(), molecules(gen)
    rot = haar_rotations(3, generator=gen, dtype=torch.float64)
    out = model(batch["pos"], batch["z"], batch["mask"])
    out_rot = model(rotate_points(batch["pos"], rot), batch["z"], batch["mask"])
    torch.testing.assert_close(out_rot["energy"], out["energy"], rtol=1e-10, atol=1e-12)
    assert out["energy"].abs().min() > 0  # not trivially zero
    gap = (out_rot["forces"] - rotate_points(out["forces"], rot)).norm()
    assert gap > 1e-3 * out["forces"].norm()
    assert out["forces"][~batch["mask"]].abs().sum() == 0


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


def test_force_head_at_init_is_not_equivariant_but_its_cube_twirl_is(gen):
    task, model, batch = ForceFieldTask(), _model(), molecules(gen)
    haar = twirl_decomposition(model, task, batch, haar_rotations(8, generator=gen, dtype=torch.float64))
    assert float(haar["forces"].pct) > 1e-3 and float(haar["forces_l2mae"].pct) > 1e-3
    assert abs(float(haar["energy"].pct)) < 1e-10  # invariant energy: no equivariance error
    cube = octahedral_group(dtype=torch.float64)
    twirled = TwirledPredictor(model, task, cube)
    exact = twirl_decomposition(twirled, task, batch, cube, exact_group=True)
    for term in ("forces", "forces_l2mae", "energy"):
        assert abs(float(exact[term].pct)) < 1e-10, term
    assert float(exact["forces"].total.mean()) > 0


def test_equal_rows_in_the_linear_force_head_make_the_model_equivariant(gen):
    task, model, batch = ForceFieldTask(), _model(), molecules(gen)
    out = model.force_head.out
    assert isinstance(out, torch.nn.Linear) and out.weight.shape == (3, TINY["hidden_size"])
    with torch.no_grad():
        out.weight.copy_(out.weight.mean(0, keepdim=True).expand(3, -1))
        out.bias.fill_(0.3)
    dec = twirl_decomposition(model, task, batch, haar_rotations(6, generator=gen, dtype=torch.float64))
    assert abs(float(dec["forces"].pct)) < 1e-10 and float(dec["forces"].total.mean()) > 0


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # RMSNorm's unfused bf16 path on CPU
def test_backward_reaches_every_parameter_and_bf16_autocast_runs(gen):
    torch.manual_seed(0)
    model = EScAIP(**TINY)
    batch = molecules(gen, dtype=torch.float32)
    loss, logs = ForceFieldTask().training_loss(model, batch, gen)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch["pos"], batch["z"], batch["mask"])
    assert out["energy"].dtype == torch.float32 and torch.isfinite(out["forces"]).all()


def test_tied_force_head_is_exactly_equivariant_and_costs_two_rows_fewer(gen):
    """``force_head_tied``: one shared direction row, pct at round-off through the harness from initialisation
    (no rows to equalise), 2H + 2 parameters fewer; the presets count 159,043 (tiny) … 6,136,967 (6M)."""
    task, batch = ForceFieldTask(), molecules(gen)
    tied = _model(force_head_tied=True)
    assert tied.force_head.out.weight.shape == (1, TINY["hidden_size"])
    dec = twirl_decomposition(tied, task, batch, haar_rotations(6, generator=gen, dtype=torch.float64))
    assert abs(float(dec["forces"].pct)) < 1e-25 and float(dec["forces"].total.mean()) > 0
    assert float(twirl_decomposition(_model(), task, batch, haar_rotations(6, generator=gen, dtype=torch.float64))["forces"].pct) > 1e-3
    assert parameter_count(**TINY) - parameter_count(**TINY, force_head_tied=True) == 2 * TINY["hidden_size"] + 2
    presets = [("escaip_tied_tiny", 159_043), ("escaip_tied_1m", 997_762), ("escaip_tied_4m", 3_974_598), ("escaip_tied_6m", 6_136_967)]
    for name, n in presets:
        kwargs = _model_kwargs(name)
        assert kwargs["force_head_tied"] is True and parameter_count(**kwargs) == n, name
