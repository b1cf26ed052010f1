"""The SPICE HDF5 reader: units, references, validation (incl. physical plausibility), the cached index."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from equivrepro.data import DataError
from tasks.forcefield.data import SpiceHDF5Dataset
from tasks.forcefield.units import SPICE_ISOLATED_ATOM_ENERGIES_EV
from tests.tasks.forcefield.files import METHANOL_Z, WATER_Z, molecule, standard_groups, write_spice

BOHR = 0.529177210903
HARTREE = 27.211386245988
#: water in Å (O–H 0.96 Å, H–O–H 104.5°)
WATER_ANGSTROM = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2399, 0.9266, 0.0]])


def _ref(z) -> float:
    return sum(SPICE_ISOLATED_ATOM_ENERGIES_EV[int(x)] for x in z)


def test_spice_reader_converts_units_and_subtracts_isolated_atom_references(tmp_path):
    groups = {"water": molecule(WATER_Z, 3, seed=1), "methanol": molecule(METHANOL_Z, 2, seed=2, energy_ha=-115.7)}
    path = write_spice(tmp_path / "spice.h5", groups)
    ds = SpiceHDF5Dataset(path, element_references="auto")  # no file references → SPICE isolated atoms
    assert len(ds) == 5
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        name, c = ds.group_names[int(ds.index["group"][i])], int(ds.index["conformer"][i])
        g = groups[name]
        seen.add((name, c))
        assert item["z"].dtype == torch.long and item["z"].tolist() == g["atomic_numbers"].tolist()
        np.testing.assert_allclose(item["pos"].numpy(), g["conformations"][c].astype(np.float64) * BOHR, rtol=1e-6, atol=1e-6)
        forces = -g["dft_total_gradient"][c].astype(np.float64) * HARTREE / BOHR
        np.testing.assert_allclose(item["forces"].numpy(), forces, rtol=1e-6, atol=1e-6)
        expected = g["dft_total_energy"][c] * HARTREE - _ref(g["atomic_numbers"])
        assert abs(float(item["energy"]) - expected) <= 1e-6 * abs(expected)
        assert abs(ds.energy[i] - expected) <= 1e-9 * abs(expected)  # the index holds the same energy
        assert ds.force_sq[i] == pytest.approx(float((item["forces"].double() ** 2).sum()), rel=1e-5)
    assert seen == {("water", 0), ("water", 1), ("water", 2), ("methanol", 0), ("methanol", 1)}
    total = SpiceHDF5Dataset(path, element_references="none", cache_index=False)
    e_ha = groups[total.group_names[int(total.index["group"][0])]]["dft_total_energy"][int(total.index["conformer"][0])]
    assert abs(float(total[0]["energy"]) - e_ha * HARTREE) <= 1e-6 * abs(e_ha * HARTREE)


def test_spice_reader_uses_the_files_own_element_references(tmp_path):
    groups = {"water": molecule(WATER_Z, 2, seed=1)}
    refs = {"element_reference_Z": np.array([1, 8]), "element_reference_energy_eV": np.array([-10.0, -2000.0])}
    path = write_spice(tmp_path / "emb.h5", groups, attrs=refs)
    ds = SpiceHDF5Dataset(path)
    assert "least-squares" in ds.references_source or "file" in ds.references_source
    expected = groups["water"]["dft_total_energy"][0] * HARTREE - (-2000.0 - 20.0)
    assert abs(float(ds[0]["energy"]) - expected) <= 1e-6 * abs(expected)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda g: g.pop("dft_total_gradient"), "no dataset 'dft_total_gradient'"),
        (lambda g: g.update(conformations=g["conformations"][:, :2]), "shape mismatch"),
        (lambda g: g.update(dft_total_gradient=g["dft_total_gradient"][:1]), "shape mismatch"),
        (lambda g: g["dft_total_energy"].__setitem__(1, np.nan), "NaN"),
        (lambda g: g["dft_total_gradient"].__setitem__((0, 0, 0), np.nan), "NaN"),
        (lambda g: g["atomic_numbers"].__setitem__(0, 11), "Z=[11]"),
    ],
    ids=["missing_key", "shape_positions", "shape_gradient", "nan_energy", "nan_gradient", "unknown_element"],
)
def test_malformed_spice_file_raises_dataerror_naming_file_and_group(tmp_path, corrupt, message):
    groups = standard_groups(3, 2)
    corrupt(groups["mol01"])
    path = write_spice(tmp_path / "bad.h5", groups)
    with pytest.raises(DataError) as err:
        SpiceHDF5Dataset(path, cache_index=False)
    assert str(path) in str(err.value) and "mol01" in str(err.value) and message in str(err.value)


def test_skip_policies_drop_and_count_bad_conformers(tmp_path):
    groups = standard_groups(4, 3)
    groups["mol00"]["dft_total_energy"][2] = np.nan
    groups["mol03"]["atomic_numbers"][0] = 11  # Na: outside the table → whole group skipped
    path = write_spice(tmp_path / "skip.h5", groups)
    ds = SpiceHDF5Dataset(path, bad_records="skip", unknown_elements="skip")
    assert ds.skipped == {"non_finite": 1, "unknown_element": 3}
    assert len(ds) == 12 - 4
    assert all(torch.isfinite(ds[i]["energy"]) for i in range(len(ds)))


def test_neutral_only_reads_smiles_charges(tmp_path):
    groups = standard_groups(2, 2)
    groups["mol00"]["smiles"] = "[OH2:1]"
    groups["mol01"]["smiles"] = "[CH3:1][O-:2]"  # formally charged (the atoms do not matter here)
    path = write_spice(tmp_path / "ions.h5", groups)
    ds = SpiceHDF5Dataset(path, neutral_only=True)
    assert ds.skipped == {"charged": 2} and len(ds) == 2


def test_index_is_cached_next_to_the_file_and_dataset_pickles_for_workers(tmp_path):
    path = write_spice(tmp_path / "c.h5", standard_groups(2, 2))
    ds = SpiceHDF5Dataset(path)
    caches = list(tmp_path.glob("c.h5.index-*.npz"))
    assert len(caches) == 1
    again = SpiceHDF5Dataset(path)
    assert again.group_names == ds.group_names and np.array_equal(again.index["conformer"], ds.index["conformer"])
    assert np.array_equal(again.energy, ds.energy) and np.array_equal(again.force_sq, ds.force_sq)
    first = ds[0]  # opens the HDF5 handle
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handle._handle is None and torch.equal(clone[0]["pos"], first["pos"])


def test_embedded_fallback_labels_are_skipped_unless_accepted(tmp_path):
    groups = standard_groups(2, 2)
    for g in groups.values():
        g["label_method"] = np.array(["GFN2-xTB", "MMFF94"], dtype=object)
    path = tmp_path / "fb.h5"
    write_spice(path, {k: {kk: vv for kk, vv in v.items() if kk != "label_method"} for k, v in groups.items()},
                attrs={"primary_label_method": "GFN2-xTB"})
    with h5py.File(path, "a") as f:
        for name, g in groups.items():
            f[name].create_dataset("label_method", data=list(g["label_method"]), dtype=h5py.string_dtype())
    assert len(SpiceHDF5Dataset(path)) == 2 and SpiceHDF5Dataset(path).skipped == {"fallback_label": 2}
    assert len(SpiceHDF5Dataset(path, accept_fallback_labels=True)) == 4


def test_contiguous_files_are_read_by_offset_and_chunked_ones_through_h5py_with_equal_items(tmp_path):
    groups = standard_groups(6, 3)
    plain = SpiceHDF5Dataset(write_spice(tmp_path / "plain.h5", groups), cache_index=False)
    assert (plain.index["group_raw"][:, [0, 2]] > 0).all()  # byte offsets of conformations / gradient
    packed = tmp_path / "packed.h5"
    with h5py.File(packed, "w") as f:
        for name, g in groups.items():
            grp = f.create_group(name)
            for key, value in g.items():
                big = key in ("conformations", "dft_total_gradient")
                grp.create_dataset(key, data=value, **(dict(chunks=(1,) + value.shape[1:], compression="gzip") if big else {}))
    chunked = SpiceHDF5Dataset(packed, cache_index=False)
    assert (chunked.index["group_raw"][:, [0, 2]] == -1).all()
    for i in range(len(plain)):
        a, b = plain[i], chunked[i]
        assert all(torch.equal(a[k], b[k]) for k in a), i
    assert len(chunked._open) <= 6 and pickle.loads(pickle.dumps(chunked))._open == {}


# ---- physical plausibility ---------------------------------------------------------------------
def _angstrom_water_group(m: int) -> dict[str, np.ndarray]:
    """Water whose conformations hold Å values in SPICE's bohr field (the unit mistake)."""
    g = molecule(WATER_Z, m, seed=0)
    g["conformations"] = np.repeat(WATER_ANGSTROM[None], m, axis=0).astype(np.float32)
    return g


def test_angstrom_stored_as_bohr_is_an_error_naming_file_group_and_the_likely_cause(tmp_path):
    groups = standard_groups(2, 2)
    groups["mol01"] = _angstrom_water_group(2)
    path = write_spice(tmp_path / "units.h5", groups)
    with pytest.raises(DataError) as err:
        SpiceHDF5Dataset(path, cache_index=False)
    msg = str(err.value)
    assert str(path) in msg and "group 'mol01', conformer 0" in msg and "0.507 Å" in msg  # 0.9572 bohr = 0.507 Å
    assert "Å stored as bohr" in msg
    # a correct file with the same geometry in bohr passes
    groups["mol01"]["conformations"] = (groups["mol01"]["conformations"] / BOHR).astype(np.float32)
    assert len(SpiceHDF5Dataset(write_spice(tmp_path / "bohr.h5", groups), cache_index=False)) == 4


def test_skipping_implausible_conformers_counts_them_but_a_wrong_unit_file_still_fails(tmp_path):
    groups = standard_groups(3, 2)
    groups["mol00"]["conformations"][1, 1] = groups["mol00"]["conformations"][1, 0] + np.array([0.3, 0, 0])  # one clash (0.16 Å)
    ds = SpiceHDF5Dataset(write_spice(tmp_path / "one.h5", groups), bad_records="skip", cache_index=False)
    assert ds.skipped == {"implausible_geometry": 1} and len(ds) == 5
    with pytest.raises(DataError) as err:  # a clash that is implausible in Å too gets no unit hint
        SpiceHDF5Dataset(tmp_path / "one.h5", cache_index=False)
    assert "group 'mol00', conformer 1" in str(err.value) and "bohr" not in str(err.value)
    wrong = {f"w{i}": _angstrom_water_group(3) for i in range(3)}
    path = write_spice(tmp_path / "all.h5", wrong)
    with pytest.raises(DataError, match=r"all\.h5: 9 of 9 conformers .*unit is wrong.*Å stored as bohr"):
        SpiceHDF5Dataset(path, bad_records="skip", cache_index=False)


# ---- files that are not what they claim -------------------------------------------------------
def test_empty_truncated_and_non_hdf5_files_name_the_file(tmp_path):
    good = write_spice(tmp_path / "good.h5", standard_groups(4, 2))
    raw = good.read_bytes()
    cases = {"empty.h5": (b"", "empty"), "cut.h5": (raw[: len(raw) // 2], "truncated"),
             "text.h5": (b"hello world\n" * 4, "not an HDF5 file")}
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as err:
            SpiceHDF5Dataset(tmp_path / name, cache_index=False)
        assert str(tmp_path / name) in str(err.value) and words in str(err.value), (name, str(err.value))


def test_a_file_without_groups_says_no_records(tmp_path):
    path = tmp_path / "nogroups.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "SPICE"
    with pytest.raises(DataError, match=rf"no records in {path}: the file has no groups"):
        SpiceHDF5Dataset(path, cache_index=False)
    skipped = write_spice(tmp_path / "allna.h5", {"na": {**molecule(WATER_Z, 2, seed=0), "atomic_numbers": np.array([11, 1, 1], np.int16)}})
    with pytest.raises(DataError, match=r"no usable records in .*allna\.h5: every record was skipped \({'unknown_element': 2}\)"):
        SpiceHDF5Dataset(skipped, unknown_elements="skip", cache_index=False)
