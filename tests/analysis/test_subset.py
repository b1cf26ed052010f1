"""SubsetLosses: parameter selection, exact agreement with the metrics, gradients, pooling over batches."""

from __future__ import annotations

import pytest
import torch

from equivrepro.analysis import SubsetLosses, select_parameters
from equivrepro.metrics import gradient_norms, twirl_decomposition
from equivrepro.testing.pointcloud import NonEquivariantMLP
from tests.analysis.toys import DirectForceToy, setup


def test_select_parameters_by_name_module_glob_list_and_all():
    model = DirectForceToy()
    assert select_parameters(model, "out") == ["out.weight", "out.bias"]
    assert select_parameters(model, "out.weight") == ["out.weight"]
    assert select_parameters(model, "*.bias") == ["embed.bias", "out.bias"]
    assert select_parameters(model, ["out.bias", "embed"]) == ["embed.weight", "embed.bias", "out.bias"]  # model order
    assert select_parameters(model, "all") == [n for n, _ in model.named_parameters()]
    with pytest.raises(KeyError, match="'force_head' matches no parameter"):
        select_parameters(model, "force_head")


def test_losses_at_theta0_equal_the_metrics_exactly_and_model_is_untouched():
    task, batch, rot = setup()
    torch.manual_seed(0)
    model = NonEquivariantMLP(hidden=8).double().train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = SubsetLosses(model, task, batch, rot, "net.4")
    vals = losses.evaluate()
    dec = twirl_decomposition(model.eval(), task, batch, rot)["mse"]
    model.train()
    assert float(vals["mean"]) == float(dec.mean_unbiased.mean())
    assert float(vals["equiv"]) == float(dec.equiv_unbiased.mean())
    assert float(vals["total"]) == float(dec.total.mean())
    # a perturbed θ_S changes the losses but never the model's own parameters or its mode
    theta = losses.theta0 + 0.1
    assert float(losses.loss("equiv", theta)) != float(vals["equiv"])
    assert model.training
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    plug = SubsetLosses(model, task, batch, rot, "net.4", estimator="plugin").evaluate()
    assert float(plug["mean"]) == pytest.approx(float(dec.mean_plugin.mean()), rel=1e-14)


def test_gradient_wrt_all_parameters_matches_metrics_gradient_norms():
    task, batch, rot = setup()
    torch.manual_seed(1)
    model = NonEquivariantMLP(hidden=8).double()
    losses = SubsetLosses(model, task, batch, rot, "all")
    theta = losses.theta0.clone().requires_grad_(True)
    vals = losses.evaluate(theta)
    (g_equiv,) = torch.autograd.grad(vals["equiv"], theta, retain_graph=True)
    (g_mean,) = torch.autograd.grad(vals["mean"], theta)
    ref = gradient_norms(model, task, batch, rot)
    assert float(g_equiv.norm()) == pytest.approx(ref["equiv_grad_norm"], rel=1e-12)
    assert float(g_mean.norm()) == pytest.approx(ref["mean_grad_norm"], rel=1e-12)


def test_several_batches_pool_per_sample_values():
    task, batch, rot = setup(b=8)
    model = DirectForceToy().double()
    halves = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    pooled = SubsetLosses(model, task, halves, [rot[:3], rot[3:]], "out").evaluate()
    whole = SubsetLosses(model, task, batch, rot, "out").evaluate()
    for key in whole:
        assert float(pooled[key]) == pytest.approx(float(whole[key]), rel=1e-13)
    with pytest.raises(ValueError, match="2 rotation tensors for 1 batches"):
        SubsetLosses(model, task, [batch], [rot, rot], "out")
