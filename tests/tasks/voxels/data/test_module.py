"""The voxel data module: molecule split, nested subsets, filters, held-out file, settings, embedded data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import pytest
import torch

from equivrepro.data import DataConfigError, DataError
from tasks.voxels.data import VoxelDataModule, convert_to_store, store_path_for
from tests.tasks.voxels.data.helpers import KEPT
from tests.tasks.voxels.molecules import conformer_mols, standard_records, write_pickle


def _module(tmp_path, **kw) -> VoxelDataModule:
    kinds = [("CCO", 5), ("CCN", 3), ("CCCO", 4), ("OCO", 2)] * 5
    records = [(f"{smi}", conformer_mols(smi, n, seed=i)) for i, (smi, n) in enumerate(kinds)]
    records = [(f"{smi}.{i}", mols) for i, (smi, mols) in enumerate(records)]  # 20 distinct molecules
    write_pickle(tmp_path / "train.pickle", records)
    return VoxelDataModule(path="train.pickle", root=str(tmp_path), **kw)


def test_datamodule_split_by_molecule_and_nested_subsets(tmp_path):
    dm = _module(tmp_path, heldout_size=0.2)
    dm.setup()
    base = dm.base
    train_mols = set(base.molecule_id[dm.train_dataset.indices.numpy()].tolist())
    held_mols = set(base.molecule_id[dm.heldout_dataset.indices.numpy()].tolist())
    assert len(held_mols) == 4 and not train_mols & held_mols
    assert len(dm.train_dataset) + len(dm.heldout_dataset) == len(base) == 70
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dm.convert_kwargs.items() if k != "stream_pickle"}
    store = store_path_for(tmp_path / "train.pickle", settings)
    assert store.exists()  # converted once, next to the pickle
    subsets = []
    for size in (0.5, 0.25, 0.1):
        d = _module(tmp_path, heldout_size=0.2, train_size=size)
        d.setup()
        subsets.append(set(d.train_dataset.indices.tolist()))
        assert torch.equal(d.heldout_dataset.indices, dm.heldout_dataset.indices)  # same held-out set for every size
    assert subsets[2] <= subsets[1] <= subsets[0] <= set(dm.train_dataset.indices.tolist())
    assert len(subsets[1]) == round(0.25 * len(dm.train_dataset))
    by_mol = _module(tmp_path, heldout_size=0.2, train_size=4, subset_by="molecule")
    by_mol.setup()
    assert len(set(base.molecule_id[by_mol.train_dataset.indices.numpy()].tolist())) == 4


def test_collate_and_filters(tmp_path):
    dm = _module(tmp_path, heldout_size=4, max_atoms=10, max_radius=10.0)
    dm.setup()
    batch = dm.collate([dm.train_dataset[i] for i in range(3)])
    assert set(batch) == {"coords", "elements", "mask"}
    assert batch["coords"].shape[:2] == batch["mask"].shape == batch["elements"].shape
    assert (batch["coords"][~batch["mask"]] == 0).all()
    centroid = (batch["coords"] * batch["mask"][..., None]).sum(1) / batch["mask"].sum(1, keepdim=True)
    assert centroid.abs().max() < 1e-5
    d = dm.describe()
    assert d["skipped"]["max_atoms"] == 20 and d["train_size"] + d["heldout_size"] == 50  # CCCO (12 atoms) dropped
    assert d["dropped_molecules"] == 0


def test_separate_heldout_file_and_channel_mismatch(tmp_path):
    write_pickle(tmp_path / "val.pickle", standard_records())
    dm = _module(tmp_path, heldout_path="val.pickle", heldout_size=None)
    dm.setup()
    assert len(dm.heldout_dataset) == sum(min(n, 5) for _, n in KEPT) and len(dm.train_dataset) == 70
    assert dm.describe()["heldout_store"] != dm.describe()["store"]
    with h5py.File(dm.base.path) as f:
        assert f.attrs["format"] == "equivrepro-voxels-store"
    other = VoxelDataModule(path=dm.base.path, heldout_size=0.2, elements=("C", "H", "O", "N"))
    with pytest.raises(DataError, match="channels"):
        other.setup()
    missing = VoxelDataModule(path=str(tmp_path / "nope.h5"))
    with pytest.raises(DataError, match="nope.h5: no such file.*tasks.voxels.generate"):
        missing.setup()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(heldout_size=0), "data.heldout_size must be an int ≥ 1 or a fraction in (0, 1)"),
        (dict(heldout_size=None), "data.heldout_size"),
        (dict(train_size=1.5), "data.train_size"),
        (dict(subset_by="atom"), "data.subset_by"),
        (dict(elements=["C", "Xx"]), "data.elements"),
        (dict(max_conformers=0), "data.max_conformers"),
        (dict(sdf_group_by="smiles"), "data.sdf_group_by"),
        (dict(max_radius=0.0), "data.max_radius"),
        (dict(stream_pickle="no"), "data.stream_pickle"),
        (dict(root=3), "data.root"),
        (dict(generate={"seed": 0}), "data.generate"),
    ],
)
def test_bad_settings_name_the_config_key_at_construction(tmp_path, kwargs, key):
    with pytest.raises(DataConfigError) as err:
        VoxelDataModule(path=str(tmp_path / "never-opened.pickle"), **kwargs)
    assert key in str(err.value)


def test_a_file_given_as_root_and_a_heldout_size_too_large_say_what_to_change(tmp_path):
    src = write_pickle(tmp_path / "train_data.pickle", standard_records())
    dm = VoxelDataModule(path="train_data.pickle", root=str(src))
    with pytest.raises(DataError) as err:
        dm.setup()
    assert f"data.root={src} is a file, not a directory: set data.path={src}" in str(err.value) and "data.root=<" in str(err.value)
    dm = VoxelDataModule(path=str(src), heldout_size=5)  # 5 molecules survive the element filter
    with pytest.raises(DataConfigError, match=r"between 1 and 4 \(dataset has 5 molecules\): change data.heldout_size"):
        dm.setup()


@dataclass
class FakeEmbedded:
    path: str
    calls: list = field(default_factory=list)

    def __call__(self) -> dict:
        self.calls.append(self.path)
        convert_to_store(write_pickle(Path(self.path).with_suffix(".pkl"), standard_records()), self.path)
        return {"seconds": 0.0}


def test_a_mistyped_path_is_an_error_and_only_the_default_location_is_generated(tmp_path):
    embedded = FakeEmbedded(str(tmp_path / "geom_embedded.h5"))
    typo = tmp_path / "geom_embeded.h5"
    with pytest.raises(DataError) as err:
        VoxelDataModule(path=str(typo), heldout_size=2, generate=embedded).setup()
    assert f"data.path={typo}: no such file" in str(err.value) and "make data" in str(err.value)
    assert embedded.calls == [] and not typo.exists()
    dm = VoxelDataModule(path=embedded.path, heldout_size=2, generate=embedded)
    dm.setup()
    assert embedded.calls == [embedded.path] and len(dm.train_dataset) > 0


def test_the_embedded_config_generates_only_at_its_default_location(tmp_path):
    from equivrepro.train.app import compose_config
    from equivrepro.train.build import build_from_config

    cfg = compose_config(["task=voxels", "logger=none", f"paths.data_dir={tmp_path}", f"data.path={tmp_path / 'typo.h5'}"])
    _, _, dm = build_from_config(cfg)
    assert dm.generate.path == str(tmp_path / "geom_embedded.h5")
    with pytest.raises(DataError, match=r"typo\.h5: no such file.*make data"):
        dm.setup()
    assert not list(tmp_path.iterdir())
