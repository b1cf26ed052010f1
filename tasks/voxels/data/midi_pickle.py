"""The MiDi GEOM-drugs pickle reader (``train_data.pickle`` / ``val_data.pickle`` / ``test_data.pickle``).

A MiDi pickle is a pickled list of ``(smiles, [rdkit Mol, ...])``, one Mol per conformer (a Mol holding
several conformers contributes each of them, in order).

**Streaming.** The MiDi train pickle does not fit in RAM on modest machines (MiDi issue #3), and
VoxMol's ``torch.save`` of the whole list inherits that. The pickle has to be unpickled once; it is read
with a *streaming* unpickler: every batch of list items the pickle appends to the top-level list is handed
to the consumer and then forgotten (including its memo entries), and RDKit Mols are materialised only for
the conformers that are kept. Peak memory is one append batch (≤ 1000 molecules), not the file. Only the
classes a MiDi pickle needs are accepted (``rdkit.Chem.rdchem.Mol``, ``_codecs.encode``); anything else is
refused with a :class:`~equivrepro.data.DataError` — unpickling runs code, so only convert files you
trust. ``stream=False`` falls back to loading the whole list (same restricted classes).

**Bad records** (:class:`~equivrepro.data.DataError` naming the file and the list index): an entry that
is not ``(smiles, [Mol, ...])``, a Mol that cannot be rebuilt, a molecule without conformers, flat (2-D)
coordinates (:func:`tasks.voxels.data.conformers.mol_conformers`).
"""

from __future__ import annotations

import codecs
import logging
import pickle
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from equivrepro.data import DataError
from tasks.voxels.data.conformers import mol_conformers

log = logging.getLogger("tasks.voxels.data")

__all__ = ["read_midi_pickle", "StreamingUnpickler"]


class _LazyMol:
    """Stands in for ``rdkit.Chem.rdchem.Mol`` while unpickling: keeps the binary, parses it on demand."""

    __slots__ = ("binary",)

    def __init__(self, binary: bytes = b"", *args):
        self.binary = binary

    def __setstate__(self, state) -> None:  # boost.python pickles carry the (empty) instance dict
        pass

    def mol(self):
        from rdkit import Chem

        return Chem.Mol(self.binary)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("rdkit.Chem.rdchem", "Mol"): _LazyMol,
    ("rdkit.Chem.rdchem", "RWMol"): _LazyMol,
    ("_codecs", "encode"): codecs.encode,
}


class StreamingUnpickler(pickle._Unpickler):
    """Pure-Python unpickler that hands top-level list items to ``sink`` batch by batch and forgets them.

    The top-level list is the first ``EMPTY_LIST`` created on an empty stack. Each ``APPENDS`` /
    ``APPEND`` to it calls ``sink(first_index, items)`` instead of storing the items, then drops the
    memo entries of the batch (containers, strings, byte strings, Mols) — pickles of independent records
    never refer back to them. Classes, ``_codecs.encode`` and protocol 2's ``'latin1'`` stay memoised.
    A pickle that does refer back gets a :class:`DataError` suggesting ``stream_pickle=False``.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, fh, path: str, sink: Callable[[int, list], None] | None):
        super().__init__(fh)
        self.path, self.sink = path, sink
        self._top: list | None = None
        self._emitted = 0
        self._memoized = 0
        self._forgotten = False

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.path}: refusing to unpickle {module}.{name}; a MiDi GEOM pickle only holds "
                "(smiles, [rdkit Mol]) records (unpickling runs code, so only known classes are accepted)"
            ) from None

    def _is_top(self, obj) -> bool:
        return self.sink is not None and obj is self._top and len(self.stack) == 1 and not self.metastack

    def _emit(self, items: list) -> None:
        self.sink(self._emitted, items)
        self._emitted += len(items)
        forget = [k for k, v in self.memo.items() if not self._shared(v)]
        for key in forget:
            del self.memo[key]
        self._forgotten = True

    @staticmethod
    def _shared(obj) -> bool:
        """Memo entries later records may refer to: classes, functions, and protocol 2's 'latin1'."""
        return isinstance(obj, type) or obj is codecs.encode or (isinstance(obj, str) and obj == "latin1")

    def load_empty_list(self):
        lst: list = []
        if self._top is None and not self.stack and not self.metastack:
            self._top = lst
        self.append(lst)

    dispatch[pickle.EMPTY_LIST[0]] = load_empty_list

    def load_appends(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if self._is_top(target):
            self._emit(items)
        else:
            target.extend(items)

    dispatch[pickle.APPENDS[0]] = load_appends

    def load_append(self):
        value = self.stack.pop()
        target = self.stack[-1]
        if self._is_top(target):
            self._emit([value])
        else:
            target.append(value)

    dispatch[pickle.APPEND[0]] = load_append

    def load_memoize(self):
        # protocol ≥ 4 numbers memo entries by how many there have been (len(memo) upstream); count them
        # explicitly so that forgetting entries does not re-use numbers
        self.memo[self._memoized] = self.stack[-1]
        self._memoized += 1

    dispatch[pickle.MEMOIZE[0]] = load_memoize

    def _get(self, key):
        try:
            return self.memo[key]
        except KeyError:
            if self._forgotten:
                raise DataError(f"{self.path}: record {self._emitted} refers to an object of an earlier record; "
                                "convert this pickle with stream_pickle=False (loads the whole list)") from None
            raise

    def load_get(self):
        self.append(self._get(int(self.readline()[:-1])))

    def load_binget(self):
        self.append(self._get(self.read(1)[0]))

    def load_long_binget(self):
        self.append(self._get(struct.unpack("<I", self.read(4))[0]))

    dispatch[pickle.GET[0]] = load_get
    dispatch[pickle.BINGET[0]] = load_binget
    dispatch[pickle.LONG_BINGET[0]] = load_long_binget


def _conformers(obj, where: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(atomic numbers, coords Å) of every conformer of a (lazy) RDKit Mol."""
    from rdkit import Chem

    if isinstance(obj, _LazyMol):
        try:
            mol = obj.mol()
        except Exception as exc:  # noqa: BLE001 - RDKit raises assorted errors on corrupt binaries
            raise DataError(f"{where}: cannot rebuild the RDKit Mol ({exc})") from None
    elif isinstance(obj, Chem.Mol):
        mol = obj
    else:
        raise DataError(f"{where}: expected an RDKit Mol, got {type(obj).__name__}")
    yield from mol_conformers(mol, where)


def _pickle_record(path: str, index: int, item, max_conformers: int) -> tuple[str, list[tuple[np.ndarray, np.ndarray]]]:
    where = f"{path}: record {index}"
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], (list, tuple))):
        raise DataError(f"{where}: expected (smiles, [rdkit Mol, ...]), got {type(item).__name__}")
    smiles, mols = item
    confs: list[tuple[np.ndarray, np.ndarray]] = []
    for j, m in enumerate(mols):
        if len(confs) >= max_conformers:
            break
        for conf in _conformers(m, f"{where}, conformer {j}"):
            confs.append(conf)
            if len(confs) >= max_conformers:
                break
    if not confs:
        raise DataError(f"{where}: molecule {smiles!r} has no conformers")
    return str(smiles), confs


def read_midi_pickle(
    path: str | Path,
    handle: Callable[[int, str, list[tuple[np.ndarray, np.ndarray]]], None],
    max_conformers: int = 5,
    bad_records: str = "error",
    stream: bool = True,
    counts: Counter | None = None,
) -> int:
    """Call ``handle(record, smiles, [(Z (n,), coords (n, 3) Å), ... ≤ max_conformers])`` for every molecule
    of a MiDi GEOM pickle; returns the number of records read.

    With ``stream=True`` molecules are handled while the file is being unpickled, one append batch at a
    time (see the module docstring). Skipped bad records are counted in ``counts['bad_record']``.
    """
    path = str(path)
    counts = counts if counts is not None else Counter()
    n_read = 0

    def process(first: int, items: Sequence) -> None:
        nonlocal n_read
        for i, item in enumerate(items):
            idx = first + i
            n_read += 1
            try:
                smiles, confs = _pickle_record(path, idx, item, max_conformers)
            except DataError:
                if bad_records != "skip":
                    raise
                counts["bad_record"] += 1
                log.warning("skipping bad record %d of %s", idx, path, exc_info=True)
                continue
            handle(idx, smiles, confs)

    try:
        fh = open(path, "rb", buffering=1 << 20)
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc})") from None
    with fh:
        unpickler = StreamingUnpickler(fh, path, process if stream else None)
        try:
            result = unpickler.load()
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt pickles raise many exception types
            raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); "
                            f"{unpickler._emitted} records were read") from None
    if stream and result is not None and result is unpickler._top:
        return n_read  # every record went through the stream
    if not isinstance(result, (list, tuple)):
        raise DataError(f"{path}: expected a pickled list of (smiles, [Mol, ...]), got {type(result).__name__}")
    process(0, result)
    return n_read
