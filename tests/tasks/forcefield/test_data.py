"""Readers (SPICE HDF5, extended XYZ), their validation, and the data module's splits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from equivrepro.data import DataError
from tasks.forcefield.data import ExtXYZDataset, ForceFieldDataModule, SpiceHDF5Dataset, parse_extxyz_header
from tasks.forcefield.units import SPICE_ISOLATED_ATOM_ENERGIES_EV
from tests.tasks.forcefield.files import METHANOL_Z, WATER_Z, molecule, standard_groups, write_extxyz, write_spice, xyz_frames

BOHR = 0.529177210903
HARTREE = 27.211386245988


def _ref(z) -> float:
    return sum(SPICE_ISOLATED_ATOM_ENERGIES_EV[int(x)] for x in z)


# ------------------------------------------------------------------------------------------ SPICE HDF5
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
        np.testing.assert_allclose(item["forces"].numpy(), -g["dft_total_gradient"][c].astype(np.float64) * HARTREE / BOHR, rtol=1e-6, atol=1e-6)
        expected = g["dft_total_energy"][c] * HARTREE - _ref(g["atomic_numbers"])
        assert abs(float(item["energy"]) - expected) <= 1e-6 * abs(expected)
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
    import h5py

    with h5py.File(path, "a") as f:
        for name, g in groups.items():
            f[name].create_dataset("label_method", data=list(g["label_method"]), dtype=h5py.string_dtype())
    assert len(SpiceHDF5Dataset(path)) == 2 and SpiceHDF5Dataset(path).skipped == {"fallback_label": 2}
    assert len(SpiceHDF5Dataset(path, accept_fallback_labels=True)) == 4


# ---------------------------------------------------------------------------------------- extended XYZ
def test_extxyz_header_parser_handles_quotes_and_flags():
    h = parse_extxyz_header('Properties=species:S:1:pos:R:3 energy=-12.5 config_type="DES370K Dimers" smiles="[C:1]" pbc="F F F" flag')
    assert h == {"Properties": "species:S:1:pos:R:3", "energy": "-12.5", "config_type": "DES370K Dimers", "smiles": "[C:1]", "pbc": "F F F", "flag": True}


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
    ],
    ids=["nan_energy", "unknown_element", "bad_symbol"],
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


# ----------------------------------------------------------------------------------------- data module
def test_subsets_are_nested_and_heldout_is_fixed_and_disjoint_by_molecule(tmp_path):
    path = write_spice(tmp_path / "s.h5", standard_groups(20, 3))
    subsets, heldouts = {}, {}
    for size in (None, 30, 12, 4):
        dm = ForceFieldDataModule(str(path), train_size=size, heldout_size=5, seed=3)
        dm.setup()
        subsets[size] = set(dm.train_dataset.indices.tolist())
        heldouts[size] = set(dm.heldout_dataset.indices.tolist())
        held_groups = {int(dm.base.index["group"][i]) for i in heldouts[size]}
        train_groups = {int(dm.base.index["group"][i]) for i in subsets[size]}
        assert len(held_groups) == 5 and not held_groups & train_groups
    assert len(subsets[None]) == 45 and subsets[4] < subsets[12] < subsets[30] < subsets[None]
    assert all(h == heldouts[None] for h in heldouts.values())
    other = ForceFieldDataModule(str(path), train_size=12, heldout_size=5, seed=4)
    other.setup()
    assert set(other.train_dataset.indices.tolist()) != subsets[12]


def test_datamodule_batch_keys_units_and_max_atoms(tmp_path):
    path = write_spice(tmp_path / "s.h5", standard_groups(6, 2))
    dm = ForceFieldDataModule(str(path), heldout_size=0.34, max_atoms=3)  # methanol (6 atoms) dropped
    dm.setup()
    d = dm.describe()
    assert d["skipped"] == {"max_atoms": 6} and d["train_size"] + d["heldout_size"] == 6
    batch = dm.collate([dm.train_dataset[i] for i in range(len(dm.train_dataset))])
    assert set(batch) == {"pos", "z", "mask", "energy", "forces"}
    b = len(dm.train_dataset)
    assert batch["pos"].shape == (b, 3, 3) and batch["energy"].shape == (b,) and batch["mask"].all()
    mixed = ForceFieldDataModule(str(path), heldout_size=2, split_by="conformer")
    mixed.setup()
    batch = mixed.collate([mixed.base[0], mixed.base[2]])  # water (3 atoms) + methanol (6 atoms)
    assert batch["pos"].shape == (2, 6, 3) and batch["mask"].sum(1).tolist() == [3, 6]
    assert batch["forces"][0, 3:].abs().sum() == 0 and batch["z"][0, 3:].abs().sum() == 0


def test_datamodule_with_separate_test_file(tmp_path):
    train = write_extxyz(tmp_path / "train.xyz", xyz_frames(8, seed=0))
    test = write_extxyz(tmp_path / "test.xyz", xyz_frames(4, seed=1))
    dm = ForceFieldDataModule(str(train), format="extxyz", test_path=str(test), heldout_size=None, train_size=5)
    dm.setup()
    assert len(dm.train_dataset) == 5 and len(dm.heldout_dataset) == 4
    assert dm.describe()["test_records"] == 4


def test_missing_file_message_says_how_to_generate(tmp_path):
    dm = ForceFieldDataModule(str(tmp_path / "nope.h5"))
    with pytest.raises(DataError, match="tasks.forcefield.generate"):
        dm.setup()
