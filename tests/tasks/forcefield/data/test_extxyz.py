"""The extended-XYZ reader: header parsing, values, random access, validation (incl. plausibility)."""

from __future__ import annotations

import numpy as np
import pytest

from equivrepro.data import DataError
from tasks.forcefield.data import ExtXYZDataset, parse_extxyz_header
from tasks.forcefield.units import SPICE_ISOLATED_ATOM_ENERGIES_EV
from tests.tasks.forcefield.files import write_extxyz, xyz_frames


def _ref(z) -> float:
    return sum(SPICE_ISOLATED_ATOM_ENERGIES_EV[int(x)] for x in z)


def test_extxyz_header_parser_handles_quotes_and_flags():
    h = parse_extxyz_header('Properties=species:S:1:pos:R:3 energy=-12.5 config_type="DES370K Dimers" smiles="[C:1]" pbc="F F F" flag')
    assert h == {"Properties": "species:S:1:pos:R:3", "energy": "-12.5", "config_type": "DES370K Dimers", "smiles": "[C:1]",
                 "pbc": "F F F", "flag": True}


def test_extxyz_reader_values_and_random_access(tmp_path):
    frames = xyz_frames(5)
    path = write_extxyz(tmp_path / "train.xyz", frames)
    ds = ExtXYZDataset(path)
    assert len(ds) == 5 and list(tmp_path.glob("train.xyz.index-*.npz"))
    for i in (3, 0, 4, 1):  # seeks, out of order
        item, fr = ds[i], frames[i]
        np.testing.assert_allclose(item["pos"].numpy(), fr["pos"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(item["forces"].numpy(), fr["forces"], rtol=1e-6, atol=1e-6)
        z = [{"O": 8, "H": 1, "C": 6}[s] for s in fr["symbols"]]
        assert item["z"].tolist() == z
        expected = fr["energy"] - _ref(z)
        assert abs(float(item["energy"]) - expected) <= 1e-6 * abs(expected)
        assert ds.energy[i] == pytest.approx(expected, rel=1e-12) and ds.force_sq[i] == pytest.approx(float((fr["forces"] ** 2).sum()))


def test_extxyz_reader_accepts_ref_keys(tmp_path):
    frames = xyz_frames(2)
    ds = ExtXYZDataset(write_extxyz(tmp_path / "ref.xyz", frames, energy_key="REF_energy", forces_key="REF_forces"))
    np.testing.assert_allclose(ds[1]["forces"].numpy(), frames[1]["forces"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda fr: fr.update(energy=float("nan")), "NaN"),
        (lambda fr: fr["symbols"].__setitem__(0, "Na"), "Z=[11]"),
        (lambda fr: fr["symbols"].__setitem__(0, "Qq"), "unknown element symbol"),
        (lambda fr: fr.update(pos=fr["pos"] / 10.0), "Å apart"),  # nm written where Å is the unit
    ],
    ids=["nan_energy", "unknown_element", "bad_symbol", "wrong_unit"],
)
def test_malformed_extxyz_raises_dataerror_naming_file_and_frame(tmp_path, mutate, message):
    frames = xyz_frames(3)
    mutate(frames[2])
    path = write_extxyz(tmp_path / "bad.xyz", frames)
    with pytest.raises(DataError) as err:
        ExtXYZDataset(path, cache_index=False)
    assert str(path) in str(err.value) and "frame 2" in str(err.value) and message in str(err.value)


def test_extxyz_missing_forces_or_truncated_file(tmp_path):
    path = write_extxyz(tmp_path / "noforces.xyz", xyz_frames(2), forces_key="velocities")
    with pytest.raises(DataError, match="forces"):
        ExtXYZDataset(path, cache_index=False)
    text = write_extxyz(tmp_path / "cut.xyz", xyz_frames(2)).read_text().splitlines()
    (tmp_path / "cut.xyz").write_text("\n".join(text[:-2]) + "\n")
    with pytest.raises(DataError, match="frame 1"):
        ExtXYZDataset(tmp_path / "cut.xyz", cache_index=False)


def test_an_empty_xyz_file_says_no_records(tmp_path):
    for name, content in (("empty.xyz", ""), ("blank.xyz", "\n\n  \n")):
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=rf"no records in {tmp_path / name}"):
            ExtXYZDataset(tmp_path / name, cache_index=False)


def test_a_unit_mistake_fails_even_when_skipping_bad_records(tmp_path):
    frames = xyz_frames(4)
    for fr in frames:
        fr["pos"] = fr["pos"] / 10.0
    with pytest.raises(DataError, match=r"4 of 4 conformers .*unit is wrong.*read as Å"):
        ExtXYZDataset(write_extxyz(tmp_path / "nm.xyz", frames), bad_records="skip", cache_index=False)
