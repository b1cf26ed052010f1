"""Contract fixtures of the force-field task: SPICE-layout HDF5 (default data) and MACE-OFF extended XYZ (paper)."""

from __future__ import annotations

from pathlib import Path

from tests.contracts import Contract
from tests.tasks.forcefield.files import standard_groups, write_extxyz, write_spice, xyz_frames


def _spice(tmp: Path) -> list[str]:
    path = write_spice(tmp / "spice.h5", standard_groups(8, 3))
    return [f"data.path={path}", "data.heldout_size=2"]


def _maceoff(tmp: Path) -> list[str]:
    train = write_extxyz(tmp / "train_large_neut_no_bad_clean.xyz", xyz_frames(12, seed=0))
    test = write_extxyz(tmp / "test_large_neut_all.xyz", xyz_frames(6, seed=1))
    return [f"data.path={train}", f"data.test_path={test}"]


CONTRACT = Contract(
    task="forcefield",
    package="tasks.forcefield",
    write_data=_spice,
    write_paper_data=_maceoff,
    shrink=["trainer.batch_size=4", "equivariance.num_samples=2", "equivariance.batch_size=2", "equivariance.baseline_samples=4"],
    paper_shrink=[
        "trainer.batch_size=2",
        "equivariance.num_samples=2",
        "equivariance.batch_size=2",
        "equivariance.baseline_samples=4",
        "equivariance.k=3",
    ],
)
