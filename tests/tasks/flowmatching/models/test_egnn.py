"""EGNN velocity network: exact E(3)-equivariance through the flow-matching task (with and without
self-conditioning, fully connected and k-NN) where Proteina is not, translation invariance, padding,
backward, preset sizes."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from equivrepro.metrics import twirl_decomposition
from equivrepro.rotations import haar_rotations
from equivrepro.train.app import compose_config
from tasks.flowmatching.models.egnn import EGNN
from tasks.flowmatching.models.proteina import ProteinaTransformer
from tasks.flowmatching.task import FlowMatchingTask

SMALL = dict(hidden=16, num_layers=2, time_emb_dim=16, index_emb_dim=8, max_separation=8, edge_dim=8, num_rbf=8)


def _chains(gen: torch.Generator, b: int = 3, n: int = 12) -> dict[str, torch.Tensor]:
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 8:] = False
    x1 = torch.randn(b, n, 3, generator=gen, dtype=torch.float64) * 0.8 * mask[..., None]
    ri = torch.arange(1, n + 1).expand(b, n).clone()
    ri[2, 6:] += 40  # a sequence gap beyond the separation clip
    cb = torch.zeros(b, n, dtype=torch.float64)
    cb[2, 6] = 1.0
    return {"x1": x1, "residue_index": ri, "chain_break": cb, "mask": mask}


def _model(seed: int = 0, **kw) -> EGNN:
    torch.manual_seed(seed)
    return EGNN(**{**SMALL, **kw}).double().eval()


@pytest.mark.parametrize("name, expected", [("egnn_tiny", 148_677), ("egnn_60m", 59_689_551)])
def test_preset_parameter_counts(name, expected):
    cfg = OmegaConf.to_container(compose_config(["task=flowmatching", f"model={name}", "logger=none"]).model, resolve=True)
    with torch.device("meta"):
        model = instantiate(cfg)
    assert isinstance(model, EGNN) and sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("knn", [None, 5])
@pytest.mark.parametrize("self_conditioning", [False, True])
def test_pct_is_round_off_through_the_task_while_proteina_is_not(knn, self_conditioning, gen):
    task = FlowMatchingTask(eval_self_conditioning=self_conditioning, eval_times=(0.3, 0.9))
    rot = haar_rotations(5, generator=gen, dtype=torch.float64)
    for batch in task.evaluation_batches(_chains(gen), gen).values():
        dec = twirl_decomposition(_model(knn=knn), task, batch, rot)["velocity"]
        assert float(dec.total.mean()) > 1e-2
        assert abs(float(dec.pct)) < 1e-25
    torch.manual_seed(0)
    proteina = ProteinaTransformer(
        dim=16, depth=1, heads=2, pair_dim=8, dim_cond=16, time_emb_dim=16, index_emb_dim=8, num_registers=1
    ).double()
    assert float(twirl_decomposition(proteina.eval(), task, batch, rot)["velocity"].pct) > 1e-4


def test_velocity_is_translation_invariant_and_reflection_equivariant(gen):
    model, batch = _model(), _chains(gen)
    x, m = batch["x1"], batch["mask"]
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_sc = x + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    args = (batch["residue_index"], batch["chain_break"], m)
    v = model(x, t, x_sc, *args)
    shift = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(model(x + shift, t, x_sc + shift, *args), v, rtol=1e-9, atol=1e-11)
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(model(x @ flip, t, x_sc @ flip, *args), v @ flip, rtol=1e-9, atol=1e-11)
    assert v.abs().sum() > 0 and v[~m].abs().sum() == 0
    assert (model(x, t, None, *args) - v).abs().max() > 1e-6  # the self-conditioning input is used


def test_padding_does_not_change_real_residues(gen):
    model, batch = _model(), _chains(gen)
    t = torch.tensor([0.2, 0.6, 0.7], dtype=torch.float64)
    v = model(batch["x1"], t, None, batch["residue_index"], batch["chain_break"], batch["mask"])
    alone = model(
        batch["x1"][1:2, :8], t[1:2], None, batch["residue_index"][1:2, :8], batch["chain_break"][1:2, :8], batch["mask"][1:2, :8]
    )
    torch.testing.assert_close(alone, v[1:2, :8], rtol=1e-9, atol=1e-11)


def test_training_step_reaches_every_parameter(gen):
    torch.manual_seed(0)
    model = EGNN(**SMALL, knn=4).train()
    batch = {k: (v.float() if v.is_floating_point() else v) for k, v in _chains(gen).items()}
    t = torch.rand(3, generator=gen)
    v = model(batch["x1"], t, batch["x1"] * 0.9, batch["residue_index"], batch["chain_break"], batch["mask"])
    v.pow(2).sum().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    loss, logs = FlowMatchingTask(self_conditioning_prob=1.0).training_loss(model, batch, gen)
    assert torch.isfinite(loss) and logs["self_conditioning"] == 1.0


def test_bad_knn_is_rejected():
    with pytest.raises(ValueError, match="knn"):
        EGNN(**SMALL, knn=0)
