"""Contract fixtures of the dipole task: small dipole HDF5 files in the embedded layout (positions Å, dipoles D)."""

from __future__ import annotations

from pathlib import Path

from tests.contracts import Contract
from tests.tasks.dipoles.files import standard_groups, write_dipoles


def _dipoles(tmp: Path) -> list[str]:
    path = write_dipoles(tmp / "dipoles.h5", standard_groups(8, 3))
    return [f"data.path={path}", "data.heldout_size=2"]


CONTRACT = Contract(
    task="dipoles",
    package="tasks.dipoles",
    write_data=_dipoles,
    write_paper_data=_dipoles,
    shrink=["trainer.batch_size=4", "equivariance.num_samples=2", "equivariance.batch_size=2", "equivariance.baseline_samples=4"],
    paper_shrink=[
        "trainer.batch_size=2",
        "equivariance.num_samples=2",
        "equivariance.batch_size=2",
        "equivariance.baseline_samples=4",
        "equivariance.k=3",
    ],
)
