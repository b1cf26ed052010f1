"""DipoleTransformer: shapes, the size of the presets, the symmetries it has (permutation, translation, padding) and
the one it must not have built in (rotation)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from equivrepro.rotations import haar_rotations, rotate_points
from equivrepro.train.app import compose_config
from tasks.dipoles.models.transformer import DipoleTransformer


def _molecules(gen, sizes=(5, 3), dtype=torch.float64) -> dict[str, torch.Tensor]:
    n = max(sizes)
    mask = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
    pos = torch.randn(len(sizes), n, 3, generator=gen, dtype=dtype) * 1.5 * mask[..., None]
    z = torch.randint(1, 10, (len(sizes), n), generator=gen) * mask
    return {"pos": pos, "z": z, "mask": mask}


def _model(**kw) -> DipoleTransformer:
    torch.manual_seed(0)
    return DipoleTransformer(**{"dim": 16, "num_layers": 2, "heads": 2, "head_gain": 1.0, **kw}).double().eval()


@pytest.mark.parametrize(
    "preset, low, high",
    [("dipole_transformer_tiny", 80_000, 150_000), ("dipole_transformer_small", 500_000, 1_200_000)],
    ids=["tiny", "small"],
)
def test_presets_compose_and_have_their_documented_size(preset, low, high):
    cfg = compose_config(["task=dipoles", f"model={preset}", "logger=none"])
    n = sum(p.numel() for p in instantiate(cfg.model).parameters())
    assert low < n < high


def test_output_is_a_vector_per_molecule_invariant_to_padding_permutation_and_translation(gen):
    model, b = _model(), _molecules(gen)
    out = model(b["pos"], b["z"], b["mask"])
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    # more padding, with garbage in it, changes nothing
    pad = {k: torch.cat([v, v[:, :2] * 0 + (7 if k != "mask" else 0)], dim=1) for k, v in b.items()}
    pad["mask"] = pad["mask"].bool()
    torch.testing.assert_close(model(pad["pos"], pad["z"], pad["mask"]), out)
    # the atoms of molecule 0 in another order; both molecules moved
    perm = torch.tensor([3, 0, 4, 1, 2])
    pos, z = b["pos"].clone(), b["z"].clone()
    pos[0], z[0] = b["pos"][0, perm], b["z"][0, perm]
    moved = pos + torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64) * b["mask"][..., None]
    torch.testing.assert_close(model(moved, z, b["mask"]), out)


def test_rotation_equivariance_is_not_built_in(gen):
    model, b = _model(), _molecules(gen)
    rot = haar_rotations(2, generator=gen, dtype=torch.float64)
    rotated_in = model(rotate_points(b["pos"], rot), b["z"], b["mask"])
    rotated_out = rotate_points(model(b["pos"], b["z"], b["mask"])[:, None], rot)[:, 0]
    assert (rotated_in - rotated_out).norm() > 1e-3 * rotated_out.norm()


def test_head_gain_scales_the_first_predictions_and_unknown_elements_are_an_error(gen):
    b = _molecules(gen)
    full, small = _model(head_gain=1.0)(b["pos"], b["z"], b["mask"]), _model(head_gain=0.1)(b["pos"], b["z"], b["mask"])
    torch.testing.assert_close(small, 0.1 * full)  # the head's bias starts at 0
    with pytest.raises(ValueError, match="max_atomic_number=54"):
        _model()(b["pos"], b["z"] * 0 + 60, b["mask"])
    with pytest.raises(ValueError, match="divisible"):
        DipoleTransformer(dim=10, heads=4)


def test_a_gradient_step_reaches_every_parameter(gen):
    model, b = _model().train(), _molecules(gen)
    model(b["pos"], b["z"], b["mask"]).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
