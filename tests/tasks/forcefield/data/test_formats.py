"""``data.format=auto``: the reader is chosen by the file; contradictions and unknown files name both sides."""

from __future__ import annotations

import pytest

from equivrepro.data import DataError
from tasks.forcefield.data import detect_format, resolve_format
from tests.tasks.forcefield.files import standard_groups, write_extxyz, write_spice, xyz_frames


def test_detects_hdf5_by_signature_and_extxyz_by_its_atom_count(tmp_path):
    h5 = write_spice(tmp_path / "SPICE.hdf5", standard_groups(2, 1))
    xyz = write_extxyz(tmp_path / "frames.dat", xyz_frames(2))  # the name says nothing
    assert h5.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    assert detect_format(h5) == "spice_hdf5" and detect_format(xyz) == "extxyz"
    assert resolve_format(h5, "auto") == "spice_hdf5" and resolve_format(xyz, "extxyz") == "extxyz"


def test_explicit_format_that_contradicts_the_file_names_both(tmp_path):
    h5 = write_spice(tmp_path / "SPICE.hdf5", standard_groups(2, 1))
    with pytest.raises(DataError) as err:
        resolve_format(h5, "extxyz")
    assert "data.format=extxyz" in str(err.value) and str(h5) in str(err.value) and "HDF5" in str(err.value)
    assert "data.format=spice_hdf5" in str(err.value)
    xyz = write_extxyz(tmp_path / "t.xyz", xyz_frames(2))
    with pytest.raises(DataError, match=r"data.format=spice_hdf5 but data.path=.*t\.xyz is extended-XYZ text"):
        resolve_format(xyz, "spice_hdf5")


def test_an_unknown_file_says_which_data_config_to_use(tmp_path):
    junk = tmp_path / "mystery.bin"
    junk.write_bytes(b"PK\x03\x04 this is a zip archive")
    with pytest.raises(DataError) as err:
        detect_format(junk)
    assert str(junk) in str(err.value) and "data=spice" in str(err.value) and "data=maceoff" in str(err.value)
    (tmp_path / "empty.xyz").write_bytes(b"")
    with pytest.raises(DataError, match="no records in .*empty.xyz"):
        detect_format(tmp_path / "empty.xyz")
