"""GEOM-drugs readers, the HDF5 store and the data module, on small files written here."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from equivrepro.data import DataError
from tasks.voxels.data import GEOM_DRUGS_ELEMENTS, VoxelDataModule, _StreamingUnpickler, VoxelStore, convert_to_store, read_midi_pickle, store_path_for
from tests.tasks.voxels.molecules import STANDARD, conformer_mols, standard_records, write_pickle, write_sdf

#: STANDARD molecules the GEOM-drugs channels keep (CP(C)C has P, CCI has I).
KEPT = [(smi, n) for smi, n in STANDARD if smi not in ("CP(C)C", "CCI")]
CHANNEL = {sym: i for i, sym in enumerate(GEOM_DRUGS_ELEMENTS)}


def _expected(records):
    """(smiles, [(channels, coords)]) of the first ≤5 conformers of the kept molecules."""
    out = []
    for smi, mols in records:
        syms = [a.GetSymbol() for a in mols[0].GetAtoms()]
        if any(s not in CHANNEL for s in syms):
            continue
        ch = np.array([CHANNEL[s] for s in syms])
        out.append((smi, [(ch, m.GetConformer().GetPositions()) for m in mols[:5]]))
    return out


def _check_store(store: VoxelStore, records, atol: float = 2e-6) -> None:
    expected = _expected(records)
    assert store.n_molecules == len(expected)
    assert len(store) == sum(len(c) for _, c in expected)
    i = 0
    for mol_id, (smi, confs) in enumerate(expected):
        assert store.smiles(mol_id) == smi
        for j, (ch, x) in enumerate(confs):
            item = store[i]
            assert int(store.molecule_id[i]) == mol_id and int(store.conformer_index[i]) == j
            assert torch.equal(item["elements"], torch.from_numpy(ch))
            np.testing.assert_allclose(item["coords"].numpy(), x - x.mean(0), atol=atol)  # centred, float32
            assert item["coords"].dtype == torch.float32 and item["elements"].dtype == torch.long
            i += 1


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("stream", [True, False])
def test_pickle_round_trip_keeps_five_conformers_and_drops_elements(tmp_path, protocol, stream):
    records = standard_records()
    src = write_pickle(tmp_path / "train_data.pickle", records, protocol)
    summary = convert_to_store(src, tmp_path / "store.h5", stream_pickle=stream)
    assert summary["molecules_read"] == len(STANDARD)
    assert summary["dropped_molecules"] == 2 and summary["dropped_by_element"] == {"I": 1, "P": 1}
    assert summary["conformers"] == sum(min(n, 5) for _, n in KEPT)
    _check_store(VoxelStore(tmp_path / "store.h5"), records)


@pytest.fixture(scope="module")
def many_records():
    return [(f"C{'C' * (i % 3)}O", conformer_mols("CCO", 1 + i % 7, seed=i)) for i in range(2100)]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_streaming_handles_many_append_batches(tmp_path, monkeypatch, many_records, protocol):
    """> 1000 records: the pickler appends in batches of 1000, each streamed and then forgotten."""
    src = write_pickle(tmp_path / "big.pkl", many_records, protocol)
    memo_sizes = []
    emit = _StreamingUnpickler._emit

    def spy(self, items):
        emit(self, items)
        memo_sizes.append(len(self.memo))

    monkeypatch.setattr(_StreamingUnpickler, "_emit", spy)
    seen = []
    n = read_midi_pickle(src, lambda rec, smi, confs: seen.append((rec, len(confs))))
    assert n == 2100 and [r for r, _ in seen] == list(range(2100))
    assert [c for _, c in seen] == [min(1 + i % 7, 5) for i in range(2100)]
    assert len(memo_sizes) == 3 and max(memo_sizes) < 20  # only class / name entries survive a batch


def test_sdf_round_trip_groups_conformers_by_name(tmp_path):
    records = standard_records()
    src = write_sdf(tmp_path / "mols.sdf", records)
    summary = convert_to_store(src, tmp_path / "sdf.h5")
    assert summary["dropped_by_element"] == {"I": 1, "P": 1}
    assert summary["skipped"] == {"extra_conformers": sum(max(0, n - 5) for _, n in KEPT)}  # beyond the first 5
    _check_store(VoxelStore(tmp_path / "sdf.h5"), records, atol=1e-4)  # SDF keeps 4 decimals
    # one molecule per record
    summary = convert_to_store(src, tmp_path / "rec.h5", sdf_group_by="record")
    assert summary["molecules"] == summary["conformers"] == sum(n for _, n in KEPT)


def test_sdf_names_that_do_not_identify_molecules_are_an_error(tmp_path):
    records = [("X", conformer_mols("CCO", 1, 0)), ("X", conformer_mols("CCN", 1, 1))]
    w = write_sdf(tmp_path / "clash.sdf", [(smi, m) for smi, m in records])
    with pytest.raises(DataError, match="record 1.*different atoms"):
        convert_to_store(w, tmp_path / "x.h5")


def test_bad_records_name_file_and_record(tmp_path):
    no_confs = [("CCO", conformer_mols("CCO", 2, 0)), ("CCN", []), ("CS", conformer_mols("CS", 1, 1))]
    src = write_pickle(tmp_path / "bad.pickle", no_confs)
    with pytest.raises(DataError, match=r"bad\.pickle: record 1.*no conformers"):
        convert_to_store(src, tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists() and not list(tmp_path.glob(".bad.h5*"))  # nothing half-written
    summary = convert_to_store(src, tmp_path / "skip.h5", bad_records="skip")
    assert summary["skipped"] == {"bad_record": 1} and summary["molecules"] == 2

    not_a_pair = write_pickle(tmp_path / "pairs.pickle", [("CCO", conformer_mols("CCO", 1, 0)), "CCN"])
    with pytest.raises(DataError, match=r"record 1: expected \(smiles"):
        convert_to_store(not_a_pair, tmp_path / "p.h5")

    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="junk.pkl: not a readable pickle"):
        convert_to_store(tmp_path / "junk.pkl", tmp_path / "j.h5")

    sdf = (tmp_path / "mols.sdf")
    write_sdf(sdf, [("CCO", conformer_mols("CCO", 2, 0))])
    text = sdf.read_text().split("$$$$\n")
    sdf.write_text(text[0] + "$$$$\n" + "garbage\n\n\n  3  2  0  0  0  0  0  0  0  0999 V2000\nnonsense\nM  END\n$$$$\n")
    with pytest.raises(DataError, match="SDF record 1"):
        convert_to_store(sdf, tmp_path / "s.h5")


def test_unknown_classes_in_a_pickle_are_refused(tmp_path):
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps([("CCO", [np.zeros(3)])]))
    with pytest.raises(DataError, match="refusing to unpickle numpy"):
        convert_to_store(src, tmp_path / "e.h5")


def _module(tmp_path, **kw) -> VoxelDataModule:
    records = [(f"{smi}", conformer_mols(smi, n, seed=i)) for i, (smi, n) in enumerate([("CCO", 5), ("CCN", 3), ("CCCO", 4), ("OCO", 2)] * 5)]
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
    store = store_path_for(tmp_path / "train.pickle", {k: (list(v) if isinstance(v, tuple) else v) for k, v in dm.convert_kwargs.items() if k != "stream_pickle"})
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
