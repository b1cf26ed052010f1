"""MiDi pickles: round trip through the store, streaming in append batches, refused classes, bad records."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from equivrepro.data import DataError
from tasks.voxels.data import StreamingUnpickler, VoxelStore, convert_to_store, read_midi_pickle
from tests.tasks.voxels.data.helpers import KEPT, check_store
from tests.tasks.voxels.molecules import STANDARD, conformer_mols, standard_records, write_pickle


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("stream", [True, False])
def test_pickle_round_trip_keeps_five_conformers_and_drops_elements(tmp_path, protocol, stream):
    records = standard_records()
    src = write_pickle(tmp_path / "train_data.pickle", records, protocol)
    summary = convert_to_store(src, tmp_path / "store.h5", stream_pickle=stream)
    assert summary["molecules_read"] == len(STANDARD)
    assert summary["dropped_molecules"] == 2 and summary["dropped_by_element"] == {"I": 1, "P": 1}
    assert summary["conformers"] == sum(min(n, 5) for _, n in KEPT)
    check_store(VoxelStore(tmp_path / "store.h5"), records)


@pytest.fixture(scope="module")
def many_records():
    return [(f"C{'C' * (i % 3)}O", conformer_mols("CCO", 1 + i % 7, seed=i)) for i in range(2100)]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_streaming_handles_many_append_batches(tmp_path, monkeypatch, many_records, protocol):
    """> 1000 records: the pickler appends in batches of 1000, each streamed and then forgotten."""
    src = write_pickle(tmp_path / "big.pkl", many_records, protocol)
    memo_sizes = []
    emit = StreamingUnpickler._emit

    def spy(self, items):
        emit(self, items)
        memo_sizes.append(len(self.memo))

    monkeypatch.setattr(StreamingUnpickler, "_emit", spy)
    seen = []
    n = read_midi_pickle(src, lambda rec, smi, confs: seen.append((rec, len(confs))))
    assert n == 2100 and [r for r, _ in seen] == list(range(2100))
    assert [c for _, c in seen] == [min(1 + i % 7, 5) for i in range(2100)]
    assert len(memo_sizes) == 3 and max(memo_sizes) < 20  # only class / name entries survive a batch


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


def test_unknown_classes_in_a_pickle_are_refused(tmp_path):
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps([("CCO", [np.zeros(3)])]))
    with pytest.raises(DataError, match="refusing to unpickle numpy"):
        convert_to_store(src, tmp_path / "e.h5")


def _set_positions(mol, x):
    conf = mol.GetConformer()
    for i, p in enumerate(x):
        conf.SetAtomPosition(i, [float(v) for v in p])
    return mol


def test_flat_and_implausible_conformers_in_a_pickle_name_the_record(tmp_path):
    flat = conformer_mols("CCO", 2, seed=3)
    x = flat[1].GetConformer().GetPositions()
    x[:, 2] = 0.0
    _set_positions(flat[1], x)
    src = write_pickle(tmp_path / "flat.pickle", [("CCN", conformer_mols("CCN", 1, 0)), ("CCO", flat)])
    with pytest.raises(DataError, match=r"flat\.pickle: record 1, conformer 1: flat coordinates.*every z = 0.*2-D depiction"):
        convert_to_store(src, tmp_path / "f.h5")
    assert convert_to_store(src, tmp_path / "fs.h5", bad_records="skip")["skipped"] == {"bad_record": 1}
    # nm written where the format says Å: every bond is ten times too short
    nm = [(smi, [_set_positions(m, m.GetConformer().GetPositions() / 10.0) for m in mols]) for smi, mols in standard_records()[:3]]
    src = write_pickle(tmp_path / "nm.pickle", nm)
    with pytest.raises(DataError, match=r"nm\.pickle: record 0, conformer 0: two atoms are 0\.\d+ Å apart.*must be in Å"):
        convert_to_store(src, tmp_path / "n.h5")
    with pytest.raises(DataError, match=r"nm\.pickle: \d+ of \d+ conformers have atoms closer than 0.6 Å.*unit is wrong"):
        convert_to_store(src, tmp_path / "ns.h5", bad_records="skip")
