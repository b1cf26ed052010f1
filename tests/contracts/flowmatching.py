"""Contract fixtures of the flow-matching task: the embedded MDAnalysisTests chains (default data, no file to write)
and a directory of real PDB files, the layout of a PDB mirror (paper)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.flowmatching.data import mdanalysistests_data_dir
from tests.contracts import Contract


def _embedded(tmp: Path) -> list[str]:
    return [f"data.cache_dir={tmp / 'cache'}", "data.heldout=2"]


def _mirror(tmp: Path) -> list[str]:
    src = mdanalysistests_data_dir()
    root = tmp / "mmCIF"
    for name in ("1a28.pdb.gz", "19hc.pdb.gz", "4E43.pdb", "5a7u.pdb"):  # X-ray entries of the package
        (root / name[:2].lower()).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, root / name[:2].lower() / name)
    return [f"data.root={root}", f"data.cache_dir={tmp / 'cache'}", "data.heldout=1", "data.num_workers=0", "data.max_length=300"]


CONTRACT = Contract(
    task="flowmatching",
    package="tasks.flowmatching",
    write_data=_embedded,
    write_paper_data=_mirror,
    shrink=["trainer.batch_size=2", "equivariance.num_samples=2", "equivariance.batch_size=2", "equivariance.baseline_samples=2"],
    paper_shrink=[
        "trainer.batch_size=1",
        "equivariance.num_samples=1",
        "equivariance.batch_size=1",
        "equivariance.baseline_samples=1",
        "equivariance.k=3",
        "task.eval_times=[0.4]",
    ],
)
