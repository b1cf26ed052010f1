"""Contract fixtures of the voxel task: MiDi-format GEOM pickles (the format of both the embedded store's source
and the paper's data), converted by the real pipeline; the grid shrinks to 16³ at the same 0.25 Å resolution."""

from __future__ import annotations

from pathlib import Path

from tests.contracts import Contract
from tests.tasks.voxels.molecules import conformer_mols, write_pickle

_SMILES = ["CCO", "CCN", "OCO", "CS", "CCC", "NCN"] * 2


def _records(seed: int):
    return [(f"{smi}.{i}", conformer_mols(smi, 3, seed=seed + i, scale=0.5)) for i, smi in enumerate(_SMILES)]


def _embedded_format(tmp: Path) -> list[str]:
    path = write_pickle(tmp / "train_data.pickle", _records(0))
    return [f"data.path={path}", "data.heldout_size=2", "~data.generate"]


def _geom_drugs(tmp: Path) -> list[str]:
    root = tmp / "geom"
    root.mkdir(parents=True, exist_ok=True)
    write_pickle(root / "train_data.pickle", _records(0))
    write_pickle(root / "val_data.pickle", _records(100)[:4])
    return [f"data.root={root}"]


_SMALL = [
    "task.grid_size=16",
    "trainer.batch_size=2",
    "equivariance.num_samples=2",
    "equivariance.batch_size=2",
    "equivariance.baseline_samples=4",
]

CONTRACT = Contract(
    task="voxels",
    package="tasks.voxels",
    write_data=_embedded_format,
    write_paper_data=_geom_drugs,
    shrink=_SMALL,
    paper_shrink=[*_SMALL, "trainer.batch_size=1", "equivariance.k=3"],
    # exact on the 24 cube rotations; under Haar rotations the prediction comes back by trilinear resampling
    exact_group="cube",
    roundtrip_tol=0.35,
    equivariant_pct=1e-10,
    haar_pct=0.02,
)
