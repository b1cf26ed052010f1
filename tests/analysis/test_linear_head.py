"""Linear-head decomposition θ = θ_∥ + θ_⊥ and the α² law of L_equiv — an identity for a linear head on invariant features
(slope 2 for any weights), so a test of the decomposition, not a finding (the finding is :mod:`equivrepro.analysis.head_deviation`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from equivrepro.analysis import (
    SubsetLosses,
    deviation_norm,
    deviation_scaling,
    equal_rows_projector,
    fit_loglog_slope,
    scaled_deviation,
    split_head,
    vector_output_projector,
)
from equivrepro.metrics import twirl_decomposition
from tests.analysis.toys import DirectForceToy, setup


class InvariantToVector(nn.Module):
    """f_i = Linear(d → 3)(φ_i) with invariant φ_i = tanh(E Σ_j RBF(d_ij)): equivariant only when W = 0, b = 0."""

    def __init__(self, d: int = 5):
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.out = nn.Linear(d, 3)

    def forward(self, pos):
        dist = (pos[:, :, None] - pos[:, None, :]).norm(dim=-1)
        rbf = torch.exp(-((dist[..., None] - torch.linspace(0, 3, 6, dtype=pos.dtype)) ** 2)).sum(2)
        return self.out(torch.tanh(self.embed(rbf)))


def _toy(seed: int = 0):
    torch.manual_seed(seed)
    return DirectForceToy(d=6).double()


def test_split_head_projects_onto_equal_rows():
    head = _toy().out
    par, dev = split_head(head)
    assert torch.allclose(par.weight + dev.weight, head.weight, rtol=0, atol=1e-15)
    assert torch.allclose(par.bias + dev.bias, head.bias, rtol=0, atol=1e-15)
    assert torch.allclose(par.weight, head.weight.mean(0, keepdim=True).expand(3, -1).detach())
    assert torch.allclose(dev.weight.sum(0), torch.zeros(6, dtype=torch.float64), atol=1e-15)
    assert float(dev.bias.sum().abs()) < 1e-15
    stats = deviation_norm(head)
    assert stats["weight_deviation"] == pytest.approx(float(dev.weight.norm()))
    assert stats["relative_weight_deviation"] == pytest.approx(float(dev.weight.norm() / head.weight.detach().norm()))
    assert stats["row_variance"] == pytest.approx(float(dev.weight.norm() ** 2) / (2 * 6))
    # a generic vector head: the equivariant subspace is {0}, so the deviation is the whole head
    par0, dev0 = split_head(head, vector_output_projector(3))
    assert float(par0.weight.abs().max()) == 0.0 and torch.equal(dev0.weight, head.weight.detach())
    with pytest.raises(ValueError, match="idempotent"):
        split_head(head, 2 * equal_rows_projector(3))


def test_equivariant_part_alone_has_zero_equivariance_error():
    task, batch, rot = setup(b=8, k=4)
    model = _toy()
    with scaled_deviation(model, "out", 0.0):
        l0 = twirl_decomposition(model, task, batch, rot)["mse"].summary()
    full = twirl_decomposition(model, task, batch, rot)["mse"].summary()
    assert full["equiv"] > 1e-3
    assert abs(l0["equiv"]) < 1e-24 * full["equiv"] + 1e-28


def test_alpha_squared_law_is_exact_and_slope_is_two():
    task, batch, rot = setup(b=8, k=4)
    model = _toy()
    alphas = [1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0]
    res = deviation_scaling(model, task, batch, rot, "out", alphas=alphas)
    t = res.table
    ratio = t["l_equiv_over_alpha2"].to_numpy()  # L_equiv(α)/α² must be the same number for every α
    assert np.all(np.abs(ratio / ratio[4] - 1) < 1e-8), ratio
    assert res.slope == pytest.approx(2.0, abs=1e-6) and res.r2 > 1 - 1e-12
    # α = 1 is the model as it is
    direct = SubsetLosses(model, task, batch, rot, "out").evaluate()
    assert float(t["l_equiv"].iloc[4]) == pytest.approx(float(direct["equiv"]), rel=1e-12)
    # L_mean does not follow α² (the equivariant part carries the fit)
    lm = (t["l_mean"] / t["alpha"] ** 2).to_numpy()
    assert np.ptp(lm) > 0.5 * lm.max()


def test_vector_head_on_invariant_features_scales_whole_head():
    task, batch, rot = setup(b=8, k=4)
    torch.manual_seed(3)
    model = InvariantToVector().double()
    res = deviation_scaling(model, task, batch, rot, "out", projector=vector_output_projector(3), alphas=[0.01, 0.1, 1.0])
    assert res.slope == pytest.approx(2.0, abs=1e-6)
    # with the equal-rows projector this head is NOT quadratic in its deviation (its θ_∥ is not equivariant)
    wrong = deviation_scaling(model, task, batch, rot, "out", alphas=[0.01, 0.1, 1.0])
    assert abs(wrong.slope - 2.0) > 0.1


def test_scaled_deviation_restores_exact_weights_and_matches_functional_evaluation():
    task, batch, rot = setup(b=8, k=4)
    model = _toy()
    w0, b0 = model.out.weight.detach().clone(), model.out.bias.detach().clone()
    res = deviation_scaling(model, task, batch, rot, "out", alphas=[0.3])
    with scaled_deviation(model, "out", 0.3) as head:
        assert head is model.out
        inside = SubsetLosses(model, task, batch, rot, "out").evaluate()
        assert not torch.equal(model.out.weight, w0)
    assert torch.equal(model.out.weight, w0) and torch.equal(model.out.bias, b0)
    assert float(inside["equiv"]) == pytest.approx(float(res.table["l_equiv"].iloc[0]), rel=1e-12)
    with pytest.raises(TypeError, match="DirectForceToy, not an nn.Linear"):
        with scaled_deviation(model, "", 0.5):  # "" is the model itself
            pass
    with pytest.raises(KeyError, match="no submodule 'force_head'"):
        deviation_scaling(model, task, batch, rot, "force_head")


def test_loglog_slope_fit_drops_nonpositive_points():
    fit = fit_loglog_slope([1, 2, 4, 0, 8], [3, 12, 48, 5, 192])
    assert fit["slope"] == pytest.approx(2.0) and fit["n_dropped"] == 1
