"""The flow-matching baseline ``v̂ = c(t)·x_t``: the predict path's x_t, the closed-form c, exact equivariance, and that it
beats the zero velocity field."""

from __future__ import annotations

import pytest
import torch

from equivrepro.metrics import twirl_decomposition
from equivrepro.rotations import center_points, haar_rotations
from tasks.flowmatching.baseline import noisy_sample_feature
from tasks.flowmatching.flow import interpolate
from tasks.flowmatching.task import FlowMatchingTask


def _chains(gen, b=6, n=20, dtype=torch.float64):
    """Random-walk 'Cα chains' (0.38 nm steps), padded to ``n``, centred."""
    lengths = torch.randint(8, n + 1, (b,), generator=gen)
    mask = torch.arange(n)[None, :] < lengths[:, None]
    steps = torch.randn(b, n, 3, generator=gen, dtype=dtype)
    x1 = center_points(torch.cumsum(0.38 * steps / steps.norm(dim=-1, keepdim=True), dim=1), mask)
    return {
        "x1": x1,
        "residue_index": torch.arange(1, n + 1).expand(b, n).clone(),
        "chain_break": torch.zeros(b, n, dtype=dtype),
        "mask": mask,
    }


class _EchoXt(torch.nn.Module):
    """A 'model' that returns its x_t input: predict() then returns exactly the x_t it computed."""

    def forward(self, x_t, t, x_sc, residue_index, chain_break, mask):
        return x_t


def test_feature_is_the_x_t_of_the_predict_path(gen):
    task = FlowMatchingTask()
    eb = task.evaluation_batches(_chains(gen), gen)["t=0.4"]
    torch.testing.assert_close(noisy_sample_feature(eb)["v"][..., 0], task.predict(_EchoXt(), eb)["v"], rtol=0, atol=0)
    carried = dict(eb, x_t=interpolate(eb["x0"], eb["x1"], eb["t"]) + 1.0)  # a carried x_t wins, as in predict
    torch.testing.assert_close(noisy_sample_feature(carried)["v"][..., 0], task.predict(_EchoXt(), carried)["v"], rtol=0, atol=0)
    with pytest.raises(KeyError, match="x0"):
        noisy_sample_feature(_chains(gen))


def test_c_is_the_closed_form_weighted_least_squares_and_beats_zero(gen):
    """c(t) = Σ_b w_b Σ_i v·x_t / Σ_b w_b Σ_i x_t·x_t (w_b = w(t)/(3 n_b), real residues only); at t = 0 (x_t = x0,
    independent of x1) it is ≈ −1 and, on held-out chains, the baseline's loss is below the zero field's at every t."""
    task = FlowMatchingTask()
    train = [task.evaluation_batches(_chains(gen), gen) for _ in range(4)]
    held = [task.evaluation_batches(_chains(gen), gen) for _ in range(2)]
    for suffix in train[0]:
        batches = [tb[suffix] for tb in train]
        base = task.make_baseline().fit(task, batches, task.terms[0])
        num = den = 0.0
        for bt in batches:
            x_t = interpolate(bt["x0"], bt["x1"], bt["t"]) * bt["mask"][..., None]
            v = task.targets(bt)["v"]
            w = 1 / (3 * bt["mask"].sum(1))  # w(t) is one constant at a fixed t: it cancels
            num += float((w[:, None] * (v * x_t).sum(-1)).sum())
            den += float((w[:, None] * (x_t * x_t).sum(-1)).sum())
        assert float(base.theta[0]) == pytest.approx(num / den, rel=1e-7), suffix  # the ridge (1e-8) shrinks by 1e-8
        loss = sum(float(task.terms[0].fn(base(hb[suffix]), task.targets(hb[suffix]), hb[suffix]).sum()) for hb in held)
        null = sum(float(task.terms[0].fn(task.null_prediction(hb[suffix]), task.targets(hb[suffix]), hb[suffix]).sum()) for hb in held)
        assert loss < null, (suffix, loss, null)
        if suffix == "t=0":
            assert float(base.theta[0]) == pytest.approx(-1.0, abs=0.1)


def test_baseline_is_exactly_equivariant_through_the_task_path(gen):
    """pct of the fitted baseline under Haar rotations through rotate_batch/unrotate_prediction: round-off (≤ 1e-20 in float64)."""
    task = FlowMatchingTask()
    evals = task.evaluation_batches(_chains(gen), gen)
    base = task.make_baseline().fit(task, [evals["t=0.6"]])
    dec = twirl_decomposition(base, task, evals["t=0.6"], haar_rotations(5, gen, torch.float64))
    for d in dec.values():
        assert float(d.total.sum()) > 1e-3 and abs(float(d.pct)) <= 1e-20
