"""The cube-group-averaged voxel model: exactly cube-equivariant through the task (its base U-Net is not),
chunking does not change it, the presets compose with the base's parameters."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from equivrepro.metrics import twirl_decomposition
from equivrepro.rotations import octahedral_group, permute_grid
from equivrepro.train.app import compose_config
from tasks.voxels.models.cube_averaged import CubeAveraged
from tasks.voxels.models.unet import VoxUNet
from tasks.voxels.task import VoxelDenoisingTask
from tests.tasks.voxels.test_task import molecule_batch

UNET = dict(width=4, ch_mults=(1, 2, 2, 2), n_blocks=1)


def test_pct_on_the_cube_group_is_round_off_while_the_base_unet_is_not(f64, gen):
    task = VoxelDenoisingTask(grid_size=8, resolution=0.5)  # a 4 Å box: 24 × 24 passes stay cheap
    torch.manual_seed(0)
    base = VoxUNet(**{**UNET, "width": 2}).double().eval()
    model = CubeAveraged(base).eval()
    batch = task.evaluation_batches(molecule_batch(2, 5, gen, spread=0.5), gen)[""]
    cube = octahedral_group()
    plain = twirl_decomposition(base, task, batch, cube, exact_group=True)["denoise"]
    dec = twirl_decomposition(model, task, batch, cube, exact_group=True)["denoise"]
    assert float(plain.pct) > 1e-4
    assert abs(float(dec.pct)) < 1e-25 and float(dec.total.min()) > 0


def test_forward_is_the_group_mean_and_chunking_does_not_change_it(f64, gen):
    torch.manual_seed(0)
    base = VoxUNet(**UNET, dropout=0.0).double().eval()
    y = torch.randn(2, 8, 8, 8, 8, generator=gen)
    cube = octahedral_group()
    ref = torch.stack([permute_grid(base(permute_grid(y, g.expand(2, 3, 3))), g.T.expand(2, 3, 3)) for g in cube]).mean(0)
    for chunk in (None, 5, 1):
        torch.testing.assert_close(CubeAveraged(base, chunk_size=chunk)(y), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, expected", [("cube_voxunet_tiny", 368_296), ("cube_voxunet_7m", 6_980_624)])
def test_presets_wrap_the_unet_presets(name, expected):
    cfg = OmegaConf.to_container(compose_config(["task=voxels", f"model={name}", "logger=none"]).model, resolve=True)
    with torch.device("meta"):
        model = instantiate(cfg)
    assert isinstance(model, CubeAveraged) and isinstance(model.base, VoxUNet)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        CubeAveraged(VoxUNet(**UNET), chunk_size=25)
    with pytest.raises(TypeError, match="nn.Module"):
        CubeAveraged(lambda y: y)
    with pytest.raises(ValueError, match="expected a grid"):
        CubeAveraged(VoxUNet(**UNET))(torch.zeros(8, 8, 8, 8))
