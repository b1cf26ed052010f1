"""VoxMol U-Net: the paper's parameter counts, shapes, GroupNorm groups, the tiny preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from tasks.voxels.models.unet import VoxUNet

CONFIGS = Path(__file__).resolve().parents[4] / "configs" / "model"


def _config(name: str) -> dict:
    """Model kwargs of configs/model/<name>.yaml as the voxel task composes it (``n_elements`` follows the data's
    element list: 8 for GEOM-drugs)."""
    from equivrepro.train.app import compose_config

    cfg = OmegaConf.to_container(compose_config(["task=voxels", f"model={name}", "logger=none"]).model, resolve=True)
    return {k: v for k, v in cfg.items() if k != "_target_"}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, upstream",
    [("voxunet_111m", 111.52e6), ("voxunet_28m", 27.90e6), ("voxunet_7m", 6.98e6)],
)
def test_paper_sizes_match_upstream_counts(name, upstream):
    """Counts of the upstream code (codebases.md §3.1) — 111.52M / 27.90M / 6.98M — within 0.1 % (spec: 5 %)."""
    with torch.device("meta"):
        model = VoxUNet(**_config(name))
    n = _count(model)
    assert abs(n / upstream - 1) < 1e-3, (name, n)


def test_exact_counts_are_stable():
    expected = {"voxunet_111m": 111_513_896, "voxunet_28m": 27_893_144, "voxunet_7m": 6_980_624, "voxunet_tiny": 368_296}
    for name, n in expected.items():
        with torch.device("meta"):
            assert _count(VoxUNet(**_config(name))) == n, name


def test_widths_follow_cumulative_multipliers():
    with torch.device("meta"):
        model = VoxUNet(width=8)
    convs = [m for m in model.down if isinstance(m, nn.Conv3d)]  # the three downsamplers
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert model.middle[0].conv1.out_channels == 128  # 16 w at the bottom
    assert sum(isinstance(m.attn, nn.Module) and not isinstance(m.attn, nn.Identity) for m in model.down if hasattr(m, "attn")) == 4
    groups = {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {8, 16}  # gcd(16, channels): 8 groups at width 8
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0


def test_tiny_preset_runs_a_32_grid_and_keeps_the_shape(gen):
    torch.manual_seed(0)
    model = VoxUNet(**_config("voxunet_tiny")).eval()
    y = torch.randn(2, 8, 32, 32, 32, generator=gen)
    out = model(y)
    assert out.shape == y.shape and torch.isfinite(out).all()
    # samples do not interact (GroupNorm, attention within a sample)
    torch.testing.assert_close(model(y[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_bad_grid_side_is_rejected():
    model = VoxUNet(**_config("voxunet_tiny"))
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.zeros(1, 8, 20, 20, 20))
    with pytest.raises(ValueError, match="expected a grid"):
        model(torch.zeros(1, 5, 16, 16, 16))


def test_head_gain_scales_the_initial_output_exactly():
    kwargs = {**_config("voxunet_tiny"), "dropout": 0.0}
    y = torch.randn(1, 8, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    outs = []
    for gain in (1.0, 0.05):
        torch.manual_seed(0)
        outs.append(VoxUNet(**{**kwargs, "head_gain": gain}).eval()(y))
    torch.testing.assert_close(outs[1], 0.05 * outs[0], rtol=1e-5, atol=1e-7)
    assert _config("voxunet_111m")["head_gain"] == 1.0  # the paper-size models keep the upstream initialisation
