"""The force-field data module: splits, subsets, batches, statistics, settings checks, embedded-data location."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from equivrepro.data import DataConfigError, DataError
from tasks.forcefield.data import ForceFieldDataModule, SpiceHDF5Dataset
from tests.tasks.forcefield.files import standard_groups, write_extxyz, write_spice, xyz_frames


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
    assert d["skipped"] == {"max_atoms": 6} and d["train_size"] + d["heldout_size"] == 6 and d["format"] == "spice_hdf5"
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


# ---- statistics -------------------------------------------------------------------------------
def _by_hand(dm) -> dict[str, float]:
    items = [dm.train_dataset[i] for i in range(len(dm.train_dataset))]
    e = np.array([float(it["energy"]) for it in items], dtype=np.float64)
    f = np.concatenate([it["forces"].double().numpy().reshape(-1) for it in items])
    return {"energy_mean": e.mean(), "energy_std": e.std(), "force_rms": float(np.sqrt((f ** 2).mean()))}


def test_statistics_are_those_of_the_training_split_and_follow_the_data(tmp_path, monkeypatch):
    path = write_spice(tmp_path / "s.h5", standard_groups(10, 3))
    dm = ForceFieldDataModule(str(path), heldout_size=3, train_size=12, element_references="none")
    dm.setup()
    stats = dm.statistics()
    assert set(stats) == {"energy_mean", "energy_std", "force_rms"}
    for key, value in _by_hand(dm).items():
        assert stats[key] == pytest.approx(value, rel=1e-5), key  # float32 items vs float64 index
    # a user's own file on another energy and force scale gets its own normalisers
    scaled = standard_groups(10, 3)
    for g in scaled.values():
        g["dft_total_energy"] = g["dft_total_energy"] * 3.0
        g["dft_total_gradient"] = g["dft_total_gradient"] * 10.0
    other = ForceFieldDataModule(str(write_spice(tmp_path / "scaled.h5", scaled)), heldout_size=3, train_size=12, element_references="none")
    other.setup()
    assert other.statistics()["force_rms"] == pytest.approx(10 * stats["force_rms"], rel=1e-5)
    assert other.statistics()["energy_std"] == pytest.approx(3 * stats["energy_std"], rel=1e-5)
    # the statistics come from the cached index: a second module never walks the file again
    monkeypatch.setattr(SpiceHDF5Dataset, "_scan", lambda self: pytest.fail("the file was walked again"))
    again = ForceFieldDataModule(str(path), heldout_size=3, train_size=12, element_references="none")
    again.setup()
    assert again.statistics() == stats


# ---- settings are checked before any file is touched --------------------------------------------
@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(heldout_size=0), "data.heldout_size must be an int ≥ 1 or a fraction in (0, 1) or null, got 0"),
        (dict(heldout_size=1.5), "data.heldout_size must be an int ≥ 1 or a fraction in (0, 1) or null, got 1.5"),
        (dict(heldout_size=None), "data.heldout_size"),
        (dict(train_size=-3), "data.train_size"),
        (dict(train_size="all"), "data.train_size"),
        (dict(format="xyz"), "data.format"),
        (dict(split_by="group"), "data.split_by"),
        (dict(max_atoms=0), "data.max_atoms"),
        (dict(bad_records="ignore"), "data.bad_records"),
        (dict(element_references="dft"), "data.element_references"),
        (dict(elements=[]), "data.elements"),
        (dict(min_distance=-1.0), "data.min_distance"),
        (dict(seed=0.5), "data.seed"),
        (dict(neutral_only="yes"), "data.neutral_only"),
        (dict(generate={"seed": 0}), "data.generate"),
    ],
)
def test_bad_settings_name_the_config_key_at_construction(tmp_path, kwargs, key):
    with pytest.raises(DataConfigError) as err:
        ForceFieldDataModule(str(tmp_path / "never-opened.h5"), **kwargs)
    assert key in str(err.value)


def test_a_heldout_size_the_data_cannot_hold_names_the_setting_and_no_records_is_not_a_size_problem(tmp_path):
    path = write_spice(tmp_path / "five.h5", standard_groups(5, 2))
    dm = ForceFieldDataModule(str(path), heldout_size=5)
    with pytest.raises(DataConfigError, match=r"between 1 and 4 \(dataset has 5 molecules\): change data.heldout_size"):
        dm.setup()
    dm = ForceFieldDataModule(str(path), heldout_size=2, train_size=100)
    with pytest.raises(DataConfigError, match=r"data.train_size=100 is not within 1..6"):
        dm.setup()
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(DataError, match=rf"no records in {empty}"):
        ForceFieldDataModule(str(empty), heldout_size=1).setup()


# ---- which reader ------------------------------------------------------------------------------
def test_format_auto_reads_hdf5_under_an_xyz_config_and_contradictions_fail(tmp_path):
    h5 = write_spice(tmp_path / "SPICE.hdf5", standard_groups(6, 2))
    dm = ForceFieldDataModule(str(h5), format="auto", heldout_size=2, split_by="conformer")
    dm.setup()
    assert dm.describe()["format"] == "spice_hdf5" and len(dm.train_dataset) == 10
    with pytest.raises(DataError, match=r"data.format=extxyz but data.path=.*SPICE\.hdf5 is an HDF5 file"):
        ForceFieldDataModule(str(h5), format="extxyz", heldout_size=2).setup()
    # the MACE-OFF config with a SPICE file and the MACE-OFF test file missing says what to use instead
    dm = ForceFieldDataModule(str(h5), test_path=str(tmp_path / "maceoff" / "test_large_neut_all.xyz"), heldout_size=None)
    with pytest.raises(DataError, match=r"data.test_path=.*test_large_neut_all.xyz: no such file.*data=spice"):
        dm.setup()
    xyz = write_extxyz(tmp_path / "test.xyz", xyz_frames(3))
    with pytest.raises(DataError, match=r"is spice_hdf5 but data.test_path=.*test.xyz is extxyz"):
        ForceFieldDataModule(str(h5), test_path=str(xyz), heldout_size=None).setup()


# ---- the embedded file is generated only at its own location ----------------------------------------
@dataclass
class FakeEmbedded:
    """An :class:`equivrepro.data.EmbeddedFile` that writes a tiny SPICE file and records its calls."""

    path: str
    calls: list = field(default_factory=list)

    def __call__(self) -> dict:
        self.calls.append(self.path)
        write_spice(Path(self.path), standard_groups(6, 2))
        return {"seconds": 0.0}


def test_a_mistyped_path_is_an_error_and_only_the_default_location_is_generated(tmp_path):
    embedded = FakeEmbedded(str(tmp_path / "spice_embedded.h5"))
    typo = tmp_path / "spice_embeded.h5"
    dm = ForceFieldDataModule(str(typo), heldout_size=2, generate=embedded)
    with pytest.raises(DataError) as err:
        dm.setup()
    assert f"data.path={typo}: no such file" in str(err.value) and "make data" in str(err.value)
    assert embedded.calls == [] and not typo.exists() and not Path(embedded.path).exists()
    dm = ForceFieldDataModule(embedded.path, heldout_size=2, generate=embedded)
    dm.setup()
    assert embedded.calls == [embedded.path] and len(dm.train_dataset) > 0
    missing = ForceFieldDataModule(str(tmp_path / "nope.h5"))
    with pytest.raises(DataError, match="tasks.forcefield.generate"):
        missing.setup()


def test_the_embedded_config_builds_a_generator_for_its_default_location_only(tmp_path):
    from equivrepro.train.app import compose_config
    from equivrepro.train.build import build_from_config

    cfg = compose_config(["task=forcefield", "logger=none", f"paths.data_dir={tmp_path}", f"data.path={tmp_path / 'typo.h5'}"])
    _, _, dm = build_from_config(cfg)
    assert dm.generate.path == str(tmp_path / "spice_embedded.h5") and dm.format == "auto"
    with pytest.raises(DataError, match=r"typo\.h5: no such file.*make data"):
        dm.setup()
    assert not list(tmp_path.iterdir())  # nothing generated anywhere


def test_the_readme_spice_command_reads_the_hdf5_with_the_spice_reader(tmp_path):
    """`experiment=forcefield_paper data.path=SPICE.hdf5` (MACE-OFF config) says to use data=spice; with it, it trains on the file."""
    from equivrepro.train.app import compose_config
    from equivrepro.train.build import build_from_config

    groups = standard_groups(40, 2)
    for i, g in enumerate(groups.values()):
        g["smiles"] = "[OH2:1]" if i % 2 == 0 else "[CH3:1][OH:2]"
    h5 = write_spice(tmp_path / "SPICE.hdf5", groups)
    base = ["experiment=forcefield_paper", "logger=none", f"paths.data_dir={tmp_path}", f"data.path={h5}"]
    _, _, dm = build_from_config(compose_config(base))
    with pytest.raises(DataError, match=r"data.test_path=.*: no such file.*data=spice"):
        dm.setup()
    _, _, dm = build_from_config(compose_config(base + ["data=spice"]))
    dm.setup()
    assert dm.describe()["format"] == "spice_hdf5" and len(dm.heldout_dataset) == 2 * 2  # 5 % of 40 molecules
