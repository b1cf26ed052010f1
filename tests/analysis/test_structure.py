"""The structural verdict: a linear direct-force head on invariant features is "structurally equal" (L_mean and
L_equiv Hessians from one Gram matrix), a trunk block is not; the declared head is the fallback."""

from __future__ import annotations

import pytest
import torch

from equivrepro.analysis.structure import EQUAL, NOT_TIED, UNDETERMINED, cube_spectra, is_declared_head, structure_verdict
from equivrepro.testing.pointcloud import NonEquivariantMLP
from tests.analysis.toys import DirectForceToy, setup


def _toy():
    task, batch, _ = setup(b=6)
    torch.manual_seed(0)
    return DirectForceToy().double(), task, [batch]


def test_linear_head_on_invariant_features_is_structurally_equal():
    model, task, batches = _toy()
    v = structure_verdict(model, task, batches, "out", linear_head="out", samples=4)
    assert v.verdict == EQUAL and v.forced and v.method == "cube-exact" and v.declared_head
    assert v.distance_log10 < 1e-8
    # L_mean sees the row mean only (d + 1 = 7 directions), L_equiv the two row deviations (14): same values, doubled
    spec = cube_spectra(model, task, batches, "out", samples=4)
    top = float(spec["mean"].max())
    assert int((spec["mean"] > 1e-9 * top).sum()) == 7 and int((spec["equiv"] > 1e-9 * float(spec["equiv"].max())).sum()) == 14


@pytest.mark.parametrize("subset", ["embed", "all"])
def test_a_trunk_block_is_not_tied(subset):
    model, task, batches = _toy()
    v = structure_verdict(model, task, batches, subset, linear_head="out", samples=4)
    assert v.verdict == NOT_TIED and not v.forced and not v.declared_head
    assert v.distance_log10 > 0.05


def test_a_head_on_non_invariant_features_is_not_tied():
    """The last Linear of a per-point MLP on raw coordinates: linear in θ_S, but its features are not invariant."""
    task, batch, _ = setup(b=6)
    torch.manual_seed(0)
    model = NonEquivariantMLP(hidden=6).double()
    v = structure_verdict(model, task, [batch], "net.4", samples=4)
    assert v.verdict == NOT_TIED


def test_lanczos_check_agrees_with_the_exact_one():
    model, task, batches = _toy()
    assert structure_verdict(model, task, batches, "out", exact_max=0, steps=21, samples=4, rtol=1e-3).verdict == EQUAL
    assert structure_verdict(model, task, batches, "embed", exact_max=0, steps=30, samples=4).verdict == NOT_TIED


def test_declared_head_is_the_fallback():
    model, task, batches = _toy()
    assert is_declared_head(model, ["out.weight", "out.bias"], "out")
    assert not is_declared_head(model, ["out.weight"], "out") and not is_declared_head(model, ["embed.weight", "embed.bias"], "out")
    v = structure_verdict(model, task, batches, "out", linear_head="out", numeric=False)
    assert v.verdict == EQUAL and v.method == "declared"
    assert structure_verdict(model, task, batches, "embed", linear_head="out", numeric=False).verdict == UNDETERMINED
