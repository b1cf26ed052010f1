"""The store reader: files that are not stores (empty, cut, foreign) are named, not h5py's bare OSError."""

from __future__ import annotations

import h5py
import pytest

from equivrepro.data import DataError
from tasks.voxels.data import STORE_FORMAT, VoxelStore, convert_to_store
from tests.tasks.voxels.molecules import standard_records, write_pickle


def test_broken_store_files_name_the_file_and_what_is_wrong(tmp_path):
    good = tmp_path / "good.h5"
    convert_to_store(write_pickle(tmp_path / "s.pickle", standard_records()), good)
    with h5py.File(good) as f:
        assert f.attrs["format"] == STORE_FORMAT
    raw = good.read_bytes()
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 3])
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f.create_dataset("x", data=[1, 2])
    for name, words in (("empty.h5", "empty"), ("cut.h5", "truncated"), ("foreign.h5", "not a voxel store")):
        with pytest.raises(DataError) as err:
            VoxelStore(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and words in str(err.value), str(err.value)
