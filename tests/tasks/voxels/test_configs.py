"""Hydra configs of the voxel task compose and build; the harness trains and evaluates it end to end."""

from __future__ import annotations

import math

import pytest
import torch

from equivrepro.rotations import haar_rotations
from equivrepro.train.app import compose_config
from equivrepro.train.build import build_from_config
from tasks.voxels.data import VoxelDataModule
from tasks.voxels.models.unet import VoxUNet
from tasks.voxels.task import VoxelDenoisingTask
from tests.tasks.voxels.molecules import conformer_mols, write_pickle


@pytest.fixture(scope="module")
def small_pickle(tmp_path_factory):
    root = tmp_path_factory.mktemp("voxels_data")
    records = [
        (f"{smi}.{i}", conformer_mols(smi, 3, seed=i, scale=0.5)) for i, smi in enumerate(["CCO", "CCN", "OCO", "CS", "CCC", "NCN"] * 2)
    ]
    return write_pickle(root / "train_data.pickle", records)


def test_task_config_composes_and_builds():
    cfg = compose_config(["task=voxels", "logger=none"])
    task, model, dm = build_from_config(cfg)
    assert isinstance(task, VoxelDenoisingTask) and task.name == "voxels" and isinstance(model, VoxUNet)
    assert isinstance(dm, VoxelDataModule) and dm.path.endswith("geom_embedded.h5")
    assert task.voxelizer.grid_size == 32 and task.sigma == 0.9 and task.reduction == "sum"
    assert model.n_elements == task.voxelizer.n_channels == dm.n_channels == 8
    # the channel count follows the data: fewer elements → fewer channels in task and model alike
    three = compose_config(["task=voxels", "logger=none", "data.elements=[C,H,O]"])
    assert three.task.n_channels == three.model.n_elements == 3


def test_smoke_experiment_has_the_voxmol_recipe_shape():
    cfg = compose_config(["experiment=voxels_smoke", "logger=none"])
    assert list(cfg.optim.betas) == [0.99, 0.999] and cfg.optim.weight_decay == 0.01 and cfg.trainer.grad_clip is None
    assert cfg.equivariance.floor and cfg.equivariance.k >= 3


def test_paper_experiment_config():
    paper = compose_config(["experiment=voxels_paper", "logger=none", "data.root=/geom"])
    assert paper.model.width == 32 and list(paper.model.ch_mults) == [1, 2, 2, 4] and paper.model.n_blocks == 2
    assert paper.task.grid_size == 64 and paper.task.n_channels == 8 and paper.model.n_elements == 8
    assert paper.trainer.batch_size == 64 and paper.trainer.precision == "32" and paper.trainer.ema_decay == 0.999
    assert paper.data.path == "train_data.pickle" and paper.data.heldout_path == "val_data.pickle" and paper.data.root == "/geom"
    assert paper.optim.lr == 2e-5 and list(paper.optim.betas) == [0.99, 0.999] and paper.equivariance.k == 4
    for size, width in (("voxunet_28m", 16), ("voxunet_7m", 8)):
        assert compose_config(["experiment=voxels_paper", f"model={size}", "logger=none"]).model.width == width


def test_one_harness_style_step_on_a_converted_pickle(small_pickle):
    dm = VoxelDataModule(path=small_pickle.name, root=str(small_pickle.parent), heldout_size=2)
    dm.setup()
    task = VoxelDenoisingTask(grid_size=16)
    torch.manual_seed(0)
    model = VoxUNet(width=4, ch_mults=(1, 2, 2, 2), n_blocks=1)
    batch = dm.collate([dm.train_dataset[i] for i in range(3)])
    g = torch.Generator().manual_seed(0)
    loss, logs = task.training_loss(model, task.rotate_batch(batch, haar_rotations(3, generator=g)), g)
    loss.backward()
    assert torch.isfinite(loss) and logs["atoms_outside_box"] == 0
    assert all(p.grad is not None for p in model.parameters())


def test_harness_trains_and_decomposes_the_voxel_task(small_pickle, tmp_path):
    """Three training steps and two equivariance evaluations (Haar, floor, cube group) through the real harness."""
    from equivrepro.train.loop import train

    out = train(
        compose_config(
            [
                "task=voxels",
                "logger=none",
                f"paths.runs_dir={tmp_path}",
                "trainer.progress_bar=false",
                f"data.path={small_pickle}",
                "data.heldout_size=2",
                "~data.generate",
                "task.grid_size=16",
                "trainer.max_steps=3",
                "trainer.batch_size=2",
                "trainer.checkpoint_every=3",
                "equivariance.every=3",
                "equivariance.num_samples=2",
                "equivariance.k=3",
                "equivariance.batch_size=2",
                "equivariance.floor=true",
                "equivariance.cube_group=true",
                "equivariance.baseline_samples=4",
                "equivariance.spectrum_l_max=4",
            ]
        )
    )
    m = out["metrics"]
    assert out["step"] == 3
    assert math.isfinite(m["equiv/denoise/pct"]) and m["equiv/denoise/total"] > 0
    assert "equiv_floor/denoise/equiv" in m and m["equiv/denoise/baseline_total"] > 0  # the fitted isotropic filter through the path
    assert 0 <= m["equiv_cube/denoise/pct"] < 1
    assert "spectrum/denoise/l=4" in m
