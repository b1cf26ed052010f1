"""The parse cache: reused, invalidated by a changed file, never left half-written."""

from __future__ import annotations

import os

from tasks.flowmatching.data import ProteinChainDataModule
from tests.tasks.flowmatching.conftest import renumber, residues_of, write_pdb

XRAY = ["EXPDTA    X-RAY DIFFRACTION", "REMARK   2 RESOLUTION.    2.00 ANGSTROMS."]


def test_cache_is_reused_and_invalidated(tmp_path, ahs_lines):
    groups = residues_of(ahs_lines)
    src = tmp_path / "src"
    src.mkdir()
    write_pdb(src / "a.pdb", renumber(groups, 1), XRAY)
    write_pdb(src / "b.pdb", renumber(groups[:-10], 1, chain="B"), XRAY)
    kw = dict(root=str(src), cache_dir=str(tmp_path / "cache"), heldout=1, min_length=50)
    dm = ProteinChainDataModule(**kw)
    dm.setup()
    assert dm.describe()["cache"]["parsed"] == 2
    dm = ProteinChainDataModule(**kw)
    dm.setup()
    assert dm.describe()["cache"] == {"cache_hits": 2, "parsed": 0, "dir": kw["cache_dir"]}
    write_pdb(src / "b.pdb", renumber(groups[:-20], 1, chain="B"), XRAY)
    os.utime(src / "b.pdb", ns=(1, 1))  # a different mtime even on coarse clocks
    dm = ProteinChainDataModule(**kw)
    dm.setup()
    assert dm.describe()["cache"]["parsed"] == 1
    assert sorted(dm.store.length(i) for i in range(2)) == [106, 126]
    assert not list((tmp_path / "cache").rglob("*.tmp"))
