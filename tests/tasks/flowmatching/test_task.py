"""The flow-matching Task: group action, the same-noise convention, decomposition at init and under
twirling, training loss, evaluation batches; plus the Hydra configs."""

from __future__ import annotations

import pytest
import torch

from equivrepro.metrics import TwirledPredictor, twirl_decomposition
from equivrepro.rotations import center_points, haar_rotations, octahedral_group, rotate_points
from tasks.flowmatching.flow import centered_gaussian_noise, interpolate, x1_from_velocity
from tasks.flowmatching.models.proteina import ProteinaTransformer
from tasks.flowmatching.task import PAPER_EVAL_TIMES, FlowMatchingTask

TINY = dict(dim=32, depth=2, heads=4, pair_dim=16, dim_cond=16, time_emb_dim=16, index_emb_dim=16, num_registers=3)


def _batch(gen, b=3, n=14, lengths=(14, 10, 7), dtype=torch.float64):
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    # a compact, protein-like cloud (≈ 1 nm) so distance bins vary
    x1 = center_points(0.6 * torch.randn(b, n, 3, generator=gen, dtype=dtype), mask)
    ri = torch.arange(1, n + 1).expand(b, n).clone()
    cb = torch.zeros(b, n, dtype=dtype)
    cb[0, 4] = 1
    return {"x1": x1, "residue_index": ri, "chain_break": cb, "mask": mask}


def _rotation_set(k, seed=1):
    return haar_rotations(k, torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_rotate_batch_acts_on_every_vector_and_commutes_with_targets(gen):
    task = FlowMatchingTask()
    batch = next(iter(task.evaluation_batches(_batch(gen), gen).values()))
    batch["x_sc"] = batch["x1"] + 0.1
    batch["x_t"] = interpolate(batch["x0"], batch["x1"], batch["t"])
    r = _rotation_set(3)
    rb = task.rotate_batch(batch, r)
    for key in ("x1", "x0", "x_sc", "x_t"):
        torch.testing.assert_close(rb[key], rotate_points(batch[key], r))
    for key in ("residue_index", "chain_break", "mask", "t"):
        assert torch.equal(rb[key], batch[key])
    torch.testing.assert_close(task.targets(rb)["v"], rotate_points(task.targets(batch)["v"], r))
    back = task.unrotate_prediction(task.targets(rb), r)
    torch.testing.assert_close(back["v"], task.targets(batch)["v"])


def test_evaluation_batches_share_one_noise_draw(gen):
    task = FlowMatchingTask()
    batch = _batch(gen)
    evals = task.evaluation_batches(batch, gen)
    assert list(evals) == ["t=0", "t=0.2", "t=0.4", "t=0.6", "t=0.8", "t=0.9", "t=0.95", "t=0.99"]
    x0s = [eb["x0"] for eb in evals.values()]
    assert all(torch.equal(x0s[0], x) for x in x0s)
    for eb, t in zip(evals.values(), PAPER_EVAL_TIMES):
        assert torch.all(eb["t"] == t) and eb["t"].shape == (3,)
    m = batch["mask"][..., None]
    assert ((x0s[0] * m).sum(1) / m.sum(1)).abs().max() < 1e-12 and torch.all(x0s[0][~batch["mask"]] == 0)


@pytest.mark.parametrize("eval_sc", [False, True])
def test_equivariant_stand_in_has_zero_equivariance_error_at_every_t(gen, equivariant_model, eval_sc):
    """Rotating the *same* noise draw with the sample: an exactly equivariant network has pct ≈ 0."""
    task = FlowMatchingTask(eval_self_conditioning=eval_sc)
    batch = _batch(gen)
    rotations = _rotation_set(4)
    for key, eb in task.evaluation_batches(batch, gen).items():
        dec = twirl_decomposition(equivariant_model, task, eb, rotations)
        for name, d in dec.items():
            s = d.summary()
            assert s["total"] > 1e-3, (key, name)
            assert abs(s["pct"]) <= 1e-10, (key, name, s["pct"])


class FreshNoiseTask(FlowMatchingTask):
    """Negative control: a rotated copy gets a new noise draw instead of the rotated one."""

    def __init__(self, seed: int = 99, **kw):
        super().__init__(**kw)
        self._gen = torch.Generator().manual_seed(seed)

    def rotate_batch(self, batch, rotations):
        out = super().rotate_batch(batch, rotations)
        if "x0" in out:
            out["x0"] = centered_gaussian_noise(out["mask"], self._gen, dtype=out["x1"].dtype)
        return out


def test_fresh_noise_per_rotation_would_not_give_zero(gen, equivariant_model):
    task = FreshNoiseTask()
    batch = task.evaluation_batches(_batch(gen), gen)["t=0.4"]
    pct = twirl_decomposition(equivariant_model, task, batch, _rotation_set(4))["velocity"].summary()["pct"]
    assert pct > 0.05


def test_pct_positive_at_init_and_zero_for_the_cube_twirl(gen):
    torch.manual_seed(0)
    model = ProteinaTransformer(**TINY).double().eval()
    task = FlowMatchingTask(eval_self_conditioning=True)
    evals = task.evaluation_batches(_batch(gen), gen)
    cube = octahedral_group(dtype=torch.float64)
    for key in ("t=0", "t=0.9"):
        eb = evals[key]
        raw = twirl_decomposition(model, task, eb, cube, exact_group=True)["velocity"].summary()
        assert raw["pct"] > 1e-3, (key, raw)
        haar = twirl_decomposition(model, task, eb, _rotation_set(6))["velocity"].summary()
        assert haar["pct"] > 1e-3
        twirled = TwirledPredictor(model, task, cube)
        tw = twirl_decomposition(twirled, task, eb, cube, exact_group=True)["velocity"].summary()
        assert abs(tw["pct"]) < 1e-20, (key, tw)  # exactly equivariant under the cube group (≈1e-35 measured)
        # twirling over the full group keeps exactly the mean-prediction part of the loss
        assert tw["total"] == pytest.approx(raw["mean"], rel=1e-9)


def test_predict_is_deterministic_and_self_conditions_from_its_own_inputs(gen):
    torch.manual_seed(0)
    model = ProteinaTransformer(**TINY).double().eval()
    task = FlowMatchingTask(eval_self_conditioning=True)
    eb = task.evaluation_batches(_batch(gen), gen)["t=0.6"]
    a, b = task.predict(model, eb)["v"], task.predict(model, eb)["v"]
    assert torch.equal(a, b)
    x_t = interpolate(eb["x0"], eb["x1"], eb["t"])
    x_sc = x1_from_velocity(x_t, model(x_t, eb["t"], None, eb["residue_index"], eb["chain_break"], eb["mask"]), eb["t"])
    ref = model(x_t, eb["t"], x_sc, eb["residue_index"], eb["chain_break"], eb["mask"]) * eb["mask"][..., None]
    torch.testing.assert_close(a, ref)
    no_sc = FlowMatchingTask(eval_self_conditioning=False).predict(model, eb)["v"]
    assert not torch.allclose(a, no_sc)
    with pytest.raises(KeyError, match="evaluation_batches"):
        task.predict(model, _batch(gen))


def test_terms_null_prediction_and_weighting(gen):
    task = FlowMatchingTask(loss_eps=1e-5)
    eb = task.evaluation_batches(_batch(gen), gen)["t=0.99"]
    assert [t.name for t in task.terms] == ["velocity", "velocity_mse"] and all(t.quadratic for t in task.terms)
    target = task.targets(eb)
    null = task.null_prediction(eb)
    w = task.terms[0].fn(null, target, eb) / task.terms[1].fn(null, target, eb)
    torch.testing.assert_close(w, torch.full((3,), 1e-4 / (1e-4 + 1e-5), dtype=torch.float64))
    assert torch.all(task.terms[1].fn(target, target, eb) == 0)


def test_training_loss_is_seeded_recentred_and_differentiable(gen):
    torch.manual_seed(0)
    model = ProteinaTransformer(**TINY).double()
    task = FlowMatchingTask(self_conditioning_prob=0.5)
    batch = _batch(gen)
    shifted = dict(batch, x1=batch["x1"] + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * batch["mask"][..., None])
    l1, logs1 = task.training_loss(model, batch, torch.Generator().manual_seed(5))
    l2, logs2 = task.training_loss(model, shifted, torch.Generator().manual_seed(5))
    torch.testing.assert_close(l1, l2)  # re-centring removes the translation
    assert logs1 == logs2 and set(logs1) == {"loss", "velocity_mse", "self_conditioning", "t_mean"}
    l1.backward()
    assert model.coords_out.weight.grad is not None and torch.isfinite(model.coords_out.weight.grad).all()
    used = {task.training_loss(model, batch, torch.Generator().manual_seed(s))[1]["self_conditioning"] for s in range(12)}
    assert used == {0.0, 1.0}
    never = FlowMatchingTask(self_conditioning_prob=0.0)
    assert all(never.training_loss(model, batch, torch.Generator().manual_seed(s))[1]["self_conditioning"] == 0 for s in range(4))


def test_hydra_configs_compose_and_build():
    from equivrepro.train.app import compose_config
    from equivrepro.train.build import build_from_config

    cfg = compose_config(["task=flowmatching", "logger=none"])
    task, model, dm = build_from_config(cfg)
    assert isinstance(task, FlowMatchingTask) and task.name == "flowmatching" and isinstance(model, ProteinaTransformer)
    assert cfg.data.root is None and cfg.data.min_length == 30
    assert compose_config(["experiment=flowmatching_smoke", "logger=none"]).optim._target_ == "torch.optim.Adam"  # Proteina's
    paper = compose_config(["experiment=flowmatching_paper", "logger=none"])
    assert paper.model.dim == 512 and paper.model.depth == 10 and paper.model.pair_update_every is None
    assert paper.data.min_length == 50 and paper.data.max_length == 256 and paper.data.max_resolution == 5.0
    assert paper.optim.lr == 1e-4 and paper.trainer.ema_decay == 0.999 and paper.trainer.grad_clip == 1.0
    assert paper.trainer.precision == "bf16" and paper.trainer.batch_size == 4 and paper.schedule.name == "constant"


def test_rotated_training_batch_trains_like_the_harness(gen, embedded_dm):
    """One harness-style step on real chains: Haar rotation via rotate_batch, then training_loss."""
    torch.manual_seed(0)
    model = ProteinaTransformer(**TINY)
    task = FlowMatchingTask()
    batch = embedded_dm.collate([embedded_dm.train_dataset[i] for i in range(2)])
    g = torch.Generator().manual_seed(0)
    rb = task.rotate_batch(batch, haar_rotations(2, generator=g))
    loss, logs = task.training_loss(model, rb, g)
    loss.backward()
    assert torch.isfinite(loss) and 0.1 < logs["velocity_mse"] < 20
