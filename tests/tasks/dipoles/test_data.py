"""The dipole reader's validation and the data module's split, subsets, batches and embedded-file rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from equivrepro.data import DataError
from tasks.dipoles.data import DipoleDataModule, DipoleHDF5Dataset
from tests.tasks.dipoles.files import METHANOL, WATER, molecule, standard_groups, write_dipoles


def test_reader_returns_every_conformer_in_angstrom_and_debye(tmp_path):
    groups = {"water": molecule(WATER, 3, seed=1), "methanol": molecule(METHANOL, 2, seed=2)}
    ds = DipoleHDF5Dataset(write_dipoles(tmp_path / "d.h5", groups))
    assert len(ds) == 5 and ds.group_names == ["methanol", "water"]  # h5py lists groups sorted
    assert ds.molecule.tolist() == [0, 0, 1, 1, 1] and ds.natoms.tolist() == [6, 6, 3, 3, 3]
    for i in range(len(ds)):
        g = groups[ds.group_names[int(ds.molecule[i])]]
        c = i - int(np.flatnonzero(ds.molecule == ds.molecule[i])[0])
        item = ds[i]
        assert item["z"].dtype == torch.long and item["z"].tolist() == g["atomic_numbers"].tolist()
        np.testing.assert_allclose(item["pos"].numpy(), g["positions"][c], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(item["dipole"].numpy(), g["dipole"][c], rtol=1e-6, atol=1e-6)
    assert ds.record_name(3).endswith("water/conformer 1")


def _close_atoms(g):
    g["positions"][1, 2] = g["positions"][1, 0] + np.array([0.1, 0.0, 0.0])


def _isolated_atom(g):
    g["positions"][0, 1] += 20.0


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda g: g.pop("dipole"), "no dataset 'dipole'"),
        (lambda g: g.update(positions=g["positions"][:, :2]), "shape mismatch, positions"),
        (lambda g: g.update(dipole=g["dipole"][:1]), "shape mismatch, dipole"),
        (lambda g: g.update(dipole=g["dipole"][:, :2]), "shape mismatch, dipole"),
        (lambda g: g["positions"].__setitem__((1, 0, 0), np.nan), "conformer 1: non-finite positions"),
        (lambda g: g["dipole"].__setitem__((2, 1), np.inf), "conformer 2: non-finite dipole"),
        (lambda g: g["atomic_numbers"].__setitem__(0, 0), "atomic_numbers must be integers in 1..118"),
        (_close_atoms, "conformer 1: implausible geometry, atoms 0 and 2 are 0.1 Å apart"),
        (_isolated_atom, "conformer 0: implausible geometry, atom 1 is"),
        (lambda g: g["dipole"].__setitem__((0, 0), 500.0), "implausible dipole"),
    ],
    ids=[
        "missing_key",
        "shape_positions",
        "shape_dipole_m",
        "shape_dipole_3",
        "nan_positions",
        "inf_dipole",
        "bad_z",
        "close_atoms",
        "isolated_atom",
        "huge_dipole",
    ],
)
def test_malformed_file_raises_dataerror_naming_file_group_and_conformer(tmp_path, corrupt, message):
    groups = standard_groups(3, 3)
    corrupt(groups["mol01"])
    path = write_dipoles(tmp_path / "bad.h5", groups)
    with pytest.raises(DataError) as err:
        DipoleHDF5Dataset(path)
    assert str(path) in str(err.value) and "mol01" in str(err.value) and message in str(err.value)


def test_file_in_other_units_and_missing_file_are_errors(tmp_path):
    path = write_dipoles(tmp_path / "bohr.h5", standard_groups(2, 2), attrs={"units": "positions: bohr; dipole: e·bohr"})
    with pytest.raises(DataError, match="expects positions in Å and dipoles in Debye"):
        DipoleHDF5Dataset(path)
    with pytest.raises(DataError, match="no such file"):
        DipoleHDF5Dataset(tmp_path / "nope.h5")


def _module(path, **kw) -> DipoleDataModule:
    dm = DipoleDataModule(str(path), **kw)
    dm.setup()
    return dm


def test_split_is_by_molecule_fixed_across_train_sizes_and_subsets_are_nested(tmp_path):
    path = write_dipoles(tmp_path / "d.h5", standard_groups(10, 3))
    full = _module(path, heldout_size=3)
    mol = full.base.molecule
    train_mols = set(mol[full.train_dataset.indices.numpy()].tolist())
    held_mols = set(mol[full.heldout_dataset.indices.numpy()].tolist())
    assert len(held_mols) == 3 and not train_mols & held_mols and len(full.heldout_dataset) == 9 and len(full.train_dataset) == 21
    small, tiny = _module(path, heldout_size=3, train_size=10), _module(path, heldout_size=3, train_size=4)
    assert torch.equal(small.heldout_dataset.indices, full.heldout_dataset.indices)
    assert set(tiny.train_dataset.indices.tolist()) <= set(small.train_dataset.indices.tolist()) <= set(full.train_dataset.indices.tolist())
    assert len(small.train_dataset) == 10 and len(tiny.train_dataset) == 4
    assert not torch.equal(_module(path, heldout_size=3, seed=1).heldout_dataset.indices, full.heldout_dataset.indices)
    d = full.describe()
    assert d["train_molecules"] == 7 and d["heldout_molecules"] == 3 and d["molecules"] == 10 and d["records"] == 30


def test_batches_are_padded_with_a_mask_and_statistics_are_the_training_dipoles(tmp_path):
    path = write_dipoles(tmp_path / "d.h5", standard_groups(6, 2))
    dm = _module(path, heldout_size=2, max_atoms=5)  # drops every methanol (6 atoms)
    assert dm.describe()["skipped"] == {"max_atoms": 6}
    assert all(int(dm.train_dataset[i]["z"].numel()) == 3 for i in range(len(dm.train_dataset)))
    dm = _module(path, heldout_size=2)
    items = [dm.train_dataset[i] for i in range(len(dm.train_dataset))]
    batch = dm.collate(items)
    n = [int(it["z"].numel()) for it in items]
    assert batch["pos"].shape == (len(items), 6, 3) and batch["dipole"].shape == (len(items), 3)
    assert batch["mask"].sum(1).tolist() == n and (batch["z"][~batch["mask"]] == 0).all()
    d = torch.stack([it["dipole"] for it in items]).double()
    stats = dm.statistics()
    assert stats["dipole_rms"] == pytest.approx(float(d.pow(2).mean().sqrt()), rel=1e-6)
    assert stats["dipole_norm_mean"] == pytest.approx(float(d.norm(dim=1).mean()), rel=1e-6)


def test_only_the_embedded_location_is_generated_when_missing(tmp_path, monkeypatch):
    import tasks.dipoles.generate as G

    calls = []

    def fake_generate(out, cfg):
        calls.append((str(out), cfg))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_dipoles(out, standard_groups(4, 2))
        return {"molecules": 4, "conformers": 8, "seconds": 0.0}

    monkeypatch.setattr(G, "generate", fake_generate)
    embedded = tmp_path / "data" / "dipoles_embedded.h5"
    settings = {"seed": 5, "n_molecules": 4, "n_conformers": 2}
    with pytest.raises(DataError, match="other.h5: no such file"):
        _module(tmp_path / "other.h5", heldout_size=1, embedded_path=str(embedded), generate=settings)
    assert not calls
    dm = _module(embedded, heldout_size=1, embedded_path=str(embedded), generate=settings)
    assert len(calls) == 1 and calls[0][0] == str(embedded) and calls[0][1].seed == 5 and calls[0][1].n_conformers == 2
    assert len(dm.train_dataset) + len(dm.heldout_dataset) == 8
    _module(embedded, heldout_size=1, embedded_path=str(embedded), generate=settings)  # exists now: not regenerated
    assert len(calls) == 1
