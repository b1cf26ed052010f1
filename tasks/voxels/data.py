"""GEOM-drugs conformers for voxel denoising: MiDi pickle / SDF readers, an indexed HDF5 store, the data module.

Items are ``{"coords": (N, 3) float32 Å, centred at the mean atom position, "elements": (N,) long channel
index}``; batches (:meth:`VoxelDataModule.collate`) add ``mask (B, N)``.

**Inputs.** Two raw formats are read, and converted once into an on-disk store:

* ``midi_pickle`` — the MiDi GEOM-drugs split files (``train_data.pickle``, ``val_data.pickle``,
  ``test_data.pickle``) that VoxMol uses: a pickled list of ``(smiles, [rdkit Mol, ...])``, one Mol per
  conformer (a Mol holding several conformers contributes each of them, in order).
* ``sdf`` — an SDF file (optionally ``.sdf.gz``) read with RDKit (``removeHs=False, sanitize=False``).
  ``sdf_group_by='name'`` (default) groups records with the same title line (``_Name``) into one
  molecule, wherever they occur in the file; ``'record'`` makes every record its own molecule. The
  stored SMILES is the record's ``smiles``/``SMILES`` property, else its name.

For every molecule the first ``max_conformers`` (5, as VoxMol) conformers are kept. Atoms are mapped to
the element channels ``elements`` (GEOM-drugs: C, H, O, N, F, S, Cl, Br); a molecule with any other
element is dropped whole, and the drops are counted per element (``describe()['dropped_by_element']``,
and a log line). Hydrogens are taken as they are in the input (GEOM conformers carry explicit H).

**Bad input.** An unreadable file, an unparseable SDF record, a pickle entry that is not
``(smiles, [Mol, ...])``, a molecule without conformers or with non-finite coordinates raise
:class:`~equivrepro.data.DataError` naming the file and the record (list index or SDF record number).
With ``bad_records='skip'`` such records are skipped and counted instead (``skipped``).

**Streaming conversion.** The MiDi train pickle does not fit in RAM on modest machines (MiDi issue #3),
and VoxMol's ``torch.save`` of the whole list inherits that. The pickle has to be unpickled once; it is
read with a *streaming* unpickler: every batch of list items the pickle appends to the top-level list is
handed to the converter and then forgotten (including its memo entries), RDKit Mols are materialised
only for the conformers that are kept, and the store is written in chunks. Peak memory is one append
batch (≤ 1000 molecules), not the file. Only the classes a MiDi pickle needs are accepted
(``rdkit.Chem.rdchem.Mol``, ``_codecs.encode``); anything else is refused with a :class:`DataError` —
unpickling runs code, so only convert files you trust. ``stream_pickle=False`` falls back to loading the
whole list (same restricted classes).

**Store** (HDF5, written to a temporary file and renamed into place)::

    coords          (total_atoms, 3) float32  Å, as in the input (not centred)
    elements        (total_atoms,)   uint8    channel index
    offsets         (n_conformers+1,) int64   atoms of conformer i: offsets[i]:offsets[i+1]
    molecule_id     (n_conformers,)  int64    index into smiles
    conformer_index (n_conformers,)  int16    position of the conformer within its molecule
    record          (n_conformers,)  int64    source record (pickle list index / SDF record number)
    radius          (n_conformers,)  float32  max distance of an atom from the conformer's centroid, Å
    smiles          (n_molecules,)   str
    attrs: format, version, channels (json), source, source_format, settings (json), counts (json)

A raw file is converted to ``<store_dir or its directory>/<name>.store-<key>.h5``, keyed by the
file's size and mtime and the conversion settings, so it happens once. A path ending in ``.h5`` is read
as a store directly (the embedded data, made by :mod:`tasks.voxels.generate`).

**Splits and subsets.** The held-out set is either a separate file (``heldout_path``; MiDi's
``val_data.pickle``) or a fixed fraction/count of *molecules* (:func:`equivrepro.data.heldout_split`;
all conformers of a held-out molecule are held out). Training subsets for the 100/50/25/10/1 % runs are
nested (:func:`equivrepro.data.nested_subset`) and drawn by ``subset_by``: ``'conformer'`` (default:
a fraction of VoxMol's dataset, which is a list of conformers) or ``'molecule'`` (whole molecules).
Optional filters ``max_atoms`` (VoxMol intended 80 but its filter is a no-op upstream, so the default is
off) and ``max_radius`` (Å, keep conformers that fit a box) drop conformers with a count.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import logging
import math
import functools
import os
import pickle
import struct
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from equivrepro.atomic import atomic_path
from equivrepro.data import DataError, DataModule, ProcessLocalFile, SubsetDataset, heldout_split, nested_subset, pad_collate
from equivrepro.task import Batch

log = logging.getLogger("tasks.voxels.data")

__all__ = [
    "GEOM_DRUGS_ELEMENTS",
    "STORE_FORMAT",
    "StoreWriter",
    "VoxelStore",
    "VoxelDataModule",
    "convert_to_store",
    "read_midi_pickle",
    "read_sdf",
    "store_path_for",
]

#: VoxMol's GEOM-drugs channels, in channel order.
GEOM_DRUGS_ELEMENTS = ("C", "H", "O", "N", "F", "S", "Cl", "Br")
STORE_FORMAT = "equivrepro-voxels-store"
STORE_VERSION = 1
_PICKLE_SUFFIXES = (".pickle", ".pkl")
_SDF_SUFFIXES = (".sdf", ".sdf.gz")


def _atomic_number(symbol: str) -> int:
    from rdkit import Chem

    try:
        return int(Chem.GetPeriodicTable().GetAtomicNumber(symbol))
    except RuntimeError:
        raise ValueError(f"unknown element symbol {symbol!r}") from None


def _symbol(z: int) -> str:
    from rdkit import Chem

    return str(Chem.GetPeriodicTable().GetElementSymbol(int(z)))


# --------------------------------------------------------------------------------------------------
# Raw readers: MiDi pickle (streamed to a callback per molecule) and SDF (an iterator of records)
# --------------------------------------------------------------------------------------------------
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


class _StreamingUnpickler(pickle._Unpickler):
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


def _mol_conformers(obj, where: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    if mol.GetNumConformers() == 0:
        raise DataError(f"{where}: Mol has no conformer (no 3-D coordinates)")
    for conf in mol.GetConformers():
        yield z, np.asarray(conf.GetPositions(), dtype=np.float64).reshape(-1, 3)


def _pickle_record(path: str, index: int, item, max_conformers: int) -> tuple[str, list[tuple[np.ndarray, np.ndarray]]]:
    where = f"{path}: record {index}"
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], (list, tuple))):
        raise DataError(f"{where}: expected (smiles, [rdkit Mol, ...]), got {type(item).__name__}")
    smiles, mols = item
    confs: list[tuple[np.ndarray, np.ndarray]] = []
    for j, m in enumerate(mols):
        for conf in _mol_conformers(m, f"{where}, conformer {j}"):
            if len(confs) < max_conformers:
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
        unpickler = _StreamingUnpickler(fh, path, process if stream else None)
        try:
            result = unpickler.load()
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt pickles raise many exception types
            raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); {unpickler._emitted} records were read") from None
    if stream and result is not None and result is unpickler._top:
        return n_read  # every record went through the stream
    if not isinstance(result, (list, tuple)):
        raise DataError(f"{path}: expected a pickled list of (smiles, [Mol, ...]), got {type(result).__name__}")
    process(0, result)
    return n_read


def _open_text(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_sdf(
    path: str | Path,
    group_by: str = "name",
    bad_records: str = "error",
    counts: Counter | None = None,
) -> Iterator[tuple[int, str, str, np.ndarray, np.ndarray]]:
    """Records of an SDF file: ``(record, key, smiles, Z (n,), coords (n, 3) Å)``, one conformer each.

    ``key`` identifies the molecule: the title line for ``group_by='name'`` (a record with an empty
    title is its own molecule), ``'#record<i>'`` for ``'record'``. ``smiles`` is the record's
    ``smiles``/``SMILES`` property, else its title. Grouping and the conformer limit are applied by
    :func:`convert_to_store`. Unparseable records raise (or are counted in ``counts['bad_record']``).
    """
    from rdkit import Chem, RDLogger

    if group_by not in ("name", "record"):
        raise ValueError(f"sdf_group_by must be 'name' or 'record', got {group_by!r}")
    path = str(path)
    counts = counts if counts is not None else Counter()
    RDLogger.DisableLog("rdApp.*")
    try:
        fh = _open_text(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc})") from None
    with fh:
        for i, mol in enumerate(Chem.ForwardSDMolSupplier(fh, removeHs=False, sanitize=False)):
            where = f"{path}: SDF record {i}"
            try:
                if mol is None:
                    raise DataError(f"{where}: RDKit cannot parse this record")
                z, x = next(_mol_conformers(mol, where))
            except DataError:
                if bad_records != "skip":
                    raise
                counts["bad_record"] += 1
                log.warning("skipping bad record: %s", where, exc_info=True)
                continue
            name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
            smiles = next((mol.GetProp(k) for k in ("smiles", "SMILES") if mol.HasProp(k)), name)
            key = name if (group_by == "name" and name) else f"#record{i}"
            yield i, key, smiles, z, x


# --------------------------------------------------------------------------------------------------
# Store writer / reader
# --------------------------------------------------------------------------------------------------
class StoreWriter:
    """Writes a voxel store incrementally into a temporary file and renames it into place on success."""

    def __init__(self, path: str | Path, channels: Sequence[str], chunk_atoms: int = 1 << 18):
        self.path = Path(path)
        self.channels = tuple(channels)
        self.chunk_atoms = int(chunk_atoms)
        self._target = ExitStack()  # holds the atomic_path context: closed normally → renamed into place
        self.tmp = self._target.enter_context(atomic_path(self.path))
        self.f = h5py.File(self.tmp, "w")
        mk = lambda name, shape, dtype: self.f.create_dataset(  # noqa: E731
            name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=dtype, chunks=(max(1, 65536 // max(1, math.prod(shape))),) + shape
        )
        self.ds = {
            "coords": mk("coords", (3,), np.float32),
            "elements": mk("elements", (), np.uint8),
            "molecule_id": mk("molecule_id", (), np.int64),
            "conformer_index": mk("conformer_index", (), np.int16),
            "record": mk("record", (), np.int64),
            "radius": mk("radius", (), np.float32),
            "smiles": mk("smiles", (), h5py.string_dtype()),
        }
        self.buf: dict[str, list] = {k: [] for k in self.ds}
        self.offsets = [0]
        self.n_atoms = 0
        self.n_molecules = 0
        self._buffered_atoms = 0

    def add_molecule(self, smiles: str) -> int:
        self.buf["smiles"].append(smiles)
        self.n_molecules += 1
        return self.n_molecules - 1

    def add_conformer(self, molecule_id: int, conformer_index: int, record: int, channels: np.ndarray, coords: np.ndarray) -> None:
        n = len(channels)
        centred = coords - coords.mean(0)
        self.buf["coords"].append(coords.astype(np.float32))
        self.buf["elements"].append(channels.astype(np.uint8))
        self.buf["molecule_id"].append(molecule_id)
        self.buf["conformer_index"].append(conformer_index)
        self.buf["record"].append(record)
        self.buf["radius"].append(float(np.linalg.norm(centred, axis=1).max()) if n else 0.0)
        self.n_atoms += n
        self.offsets.append(self.n_atoms)
        self._buffered_atoms += n
        if self._buffered_atoms >= self.chunk_atoms:
            self.flush()

    def flush(self) -> None:
        for key, values in self.buf.items():
            if not values:
                continue
            if key in ("coords", "elements"):
                arr = np.concatenate(values)
            elif key == "smiles":
                arr = np.array(values, dtype=object)
            else:
                arr = np.asarray(values)
            ds = self.ds[key]
            start = ds.shape[0]
            ds.resize(start + len(arr), axis=0)
            ds[start:] = arr
            values.clear()
        self._buffered_atoms = 0

    def close(self, attrs: Mapping[str, Any]) -> None:
        """Finish the file (offsets, attributes) and rename it to ``path``."""
        self.flush()
        self.f.create_dataset("offsets", data=np.asarray(self.offsets, dtype=np.int64))
        self.f.attrs["format"] = STORE_FORMAT
        self.f.attrs["version"] = STORE_VERSION
        self.f.attrs["channels"] = json.dumps(list(self.channels))
        self.f.attrs["units"] = "coords Å (not centred); elements = index into channels"
        for key, value in attrs.items():
            self.f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, default=str)
        self.f.close()
        self._target.close()

    def abort(self) -> None:
        """Drop the temporary file; ``path`` is left as it was."""
        try:
            self.f.close()
        finally:
            err = RuntimeError(f"writing {self.path} was aborted")
            self._target.__exit__(type(err), err, None)


def _source_format(path: str, source_format: str) -> str:
    if source_format != "auto":
        if source_format not in ("midi_pickle", "sdf"):
            raise ValueError(f"source_format must be 'auto', 'midi_pickle' or 'sdf', got {source_format!r}")
        return source_format
    low = path.lower()
    if low.endswith(_PICKLE_SUFFIXES):
        return "midi_pickle"
    if low.endswith(_SDF_SUFFIXES):
        return "sdf"
    raise DataError(f"{path}: cannot tell the format from the name; use a .pickle/.pkl (MiDi GEOM) or .sdf[.gz] file, "
                    "or a converted .h5 store")


def convert_to_store(
    source: str | Path,
    store: str | Path,
    *,
    source_format: str = "auto",
    elements: Sequence[str] = GEOM_DRUGS_ELEMENTS,
    max_conformers: int = 5,
    sdf_group_by: str = "name",
    bad_records: str = "error",
    stream_pickle: bool = True,
    extra_attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert a MiDi pickle or an SDF file into a voxel store (see the module docstring); returns the counts.

    Counts: ``molecules`` / ``conformers`` / ``atoms`` kept, ``molecules_read``, ``dropped_molecules``
    (any element outside ``elements``), ``dropped_conformers``, ``dropped_by_element`` (molecules per
    offending element symbol), ``skipped`` (bad records, extra conformers of SDF molecules), ``seconds``.
    """
    if bad_records not in ("error", "skip"):
        raise ValueError(f"bad_records must be 'error' or 'skip', got {bad_records!r}")
    source = str(source)
    fmt = _source_format(source, source_format)
    channel_of = {_atomic_number(sym): i for i, sym in enumerate(elements)}
    table = np.full(256, 255, dtype=np.int64)
    for z, ch in channel_of.items():
        table[z] = ch
    skipped: Counter = Counter()
    dropped_by_element: Counter = Counter()
    counts = Counter()
    t0 = time.perf_counter()
    writer = StoreWriter(store, elements)
    try:
        if fmt == "midi_pickle":

            def handle(record: int, smiles: str, confs: list[tuple[np.ndarray, np.ndarray]]) -> None:
                counts["molecules_read"] += 1
                bad = sorted({int(v) for z, _ in confs for v in z if v > 255 or table[v] == 255})
                if bad:
                    counts["dropped_molecules"] += 1
                    counts["dropped_conformers"] += len(confs)
                    dropped_by_element.update(_symbol(v) for v in bad)
                    return
                good = [(j, z, x) for j, (z, x) in enumerate(confs) if _check_finite(x, f"{source}: record {record}, conformer {j}", bad_records, skipped)]
                if not good:
                    return
                mid = writer.add_molecule(smiles)
                for j, z, x in good:
                    writer.add_conformer(mid, j, record, table[z], x)
                    counts["conformers"] += 1
                if counts["molecules_read"] % 50_000 == 0:
                    log.info("converted %d molecules of %s", counts["molecules_read"], source)

            read_midi_pickle(source, handle, max_conformers, bad_records, stream_pickle, skipped)
        else:
            molecule_of: dict[str, int] = {}
            n_confs: Counter = Counter()
            first_z: dict[str, np.ndarray] = {}
            dropped_keys: set[str] = set()
            for record, key, smiles, z, x in read_sdf(source, sdf_group_by, bad_records, skipped):
                if key in dropped_keys:
                    counts["dropped_conformers"] += 1
                    continue
                if key not in first_z:
                    counts["molecules_read"] += 1
                    bad = sorted({int(v) for v in z if v > 255 or table[v] == 255})
                    if bad:
                        dropped_keys.add(key)
                        counts["dropped_molecules"] += 1
                        counts["dropped_conformers"] += 1
                        dropped_by_element.update(_symbol(v) for v in bad)
                        continue
                    first_z[key] = z
                    molecule_of[key] = writer.add_molecule(smiles)
                elif not np.array_equal(first_z[key], z):
                    raise DataError(f"{source}: SDF record {record} is named {key!r} like an earlier record but has different atoms; "
                                    "use sdf_group_by='record' if names do not identify molecules")
                if n_confs[key] >= max_conformers:
                    skipped["extra_conformers"] += 1
                    continue
                if not _check_finite(x, f"{source}: SDF record {record}", bad_records, skipped):
                    continue
                writer.add_conformer(molecule_of[key], n_confs[key], record, table[z], x)
                n_confs[key] += 1
                counts["conformers"] += 1
        counts["molecules"] = writer.n_molecules
        summary = {
            "molecules": int(writer.n_molecules),
            "conformers": int(counts["conformers"]),
            "atoms": int(writer.n_atoms),
            "molecules_read": int(counts["molecules_read"]),
            "dropped_molecules": int(counts["dropped_molecules"]),
            "dropped_conformers": int(counts["dropped_conformers"]),
            "dropped_by_element": dict(sorted(dropped_by_element.items())),
            "skipped": dict(skipped),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if summary["conformers"] == 0:
            raise DataError(f"{source}: no conformer survived the conversion (elements {tuple(elements)}; counts {summary})")
        settings = {"elements": list(elements), "max_conformers": int(max_conformers), "source_format": fmt,
                    "sdf_group_by": sdf_group_by, "bad_records": bad_records}
        attrs = {"source": os.path.abspath(source), "source_format": fmt, "settings": settings, "counts": summary}
        attrs.update(extra_attrs or {})
        writer.close(attrs)
    except BaseException:
        writer.abort()
        raise
    if summary["dropped_molecules"]:
        log.warning("%s: dropped %d molecules (%d conformers) with elements outside %s: %s", source, summary["dropped_molecules"],
                    summary["dropped_conformers"], list(elements), summary["dropped_by_element"])
    log.info("converted %s → %s: %d molecules, %d conformers in %.1f s", source, store, summary["molecules"], summary["conformers"], summary["seconds"])
    return summary


def _check_finite(x: np.ndarray, where: str, bad_records: str, skipped: Counter) -> bool:
    if np.isfinite(x).all():
        return True
    if bad_records != "skip":
        raise DataError(f"{where}: non-finite coordinates")
    skipped["non_finite"] += 1
    return False


def store_path_for(source: str | Path, settings: Mapping[str, Any], store_dir: str | Path | None = None) -> Path:
    """Where the store of ``source`` converted with ``settings`` lives: ``<dir>/<name>.store-<key>.h5``."""
    source = Path(source)
    st = source.stat()
    key = json.dumps({"v": STORE_VERSION, "size": st.st_size, "mtime": st.st_mtime_ns, **settings}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(store_dir or source.parent) / f"{source.name}.store-{digest}.h5"


class VoxelStore(Dataset):
    """Map-style dataset over a store file: item ``i`` is conformer ``i`` (read lazily, centred).

    Index arrays (offsets, molecule ids, radii) are read into memory at construction; coordinates and
    elements are read per item through an HDF5 handle opened once per process.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != STORE_FORMAT:
                    raise DataError(f"{self.path}: not a voxel store (attribute format={f.attrs.get('format')!r}); "
                                    "pass the raw .pickle/.sdf file instead and it is converted")
                if int(f.attrs.get("version", -1)) != STORE_VERSION:
                    raise DataError(f"{self.path}: store version {f.attrs.get('version')} is not {STORE_VERSION}; re-convert it")
                for key in ("coords", "elements", "offsets", "molecule_id", "radius", "smiles"):
                    if key not in f:
                        raise DataError(f"{self.path}: store has no dataset '{key}'")
                self.offsets = f["offsets"][...]
                self.molecule_id = f["molecule_id"][...]
                self.radius = f["radius"][...]
                self.conformer_index = f["conformer_index"][...]
                self.n_molecules = int(f["smiles"].shape[0])
                self.channels = tuple(json.loads(f.attrs["channels"]))
                self.attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read the store ({exc})") from None
        if len(self.offsets) != len(self.molecule_id) + 1:
            raise DataError(f"{self.path}: offsets has {len(self.offsets)} entries for {len(self.molecule_id)} conformers")
        self.n_atoms = np.diff(self.offsets)
        self._handle = ProcessLocalFile(functools.partial(h5py.File, self.path, "r"))

    def __len__(self) -> int:
        return int(len(self.molecule_id))

    def _file(self):
        return self._handle.get()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        f = self._file()
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        x = f["coords"][a:b].astype(np.float64)
        x -= x.mean(0)
        return {"coords": torch.from_numpy(x.astype(np.float32)), "elements": torch.from_numpy(f["elements"][a:b].astype(np.int64))}

    def smiles(self, molecule: int) -> str:
        s = self._file()["smiles"][int(molecule)]
        return s.decode() if isinstance(s, bytes) else str(s)


def _decode_attr(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except ValueError:
            return v
    if isinstance(v, np.generic):
        return v.item()
    return v


# --------------------------------------------------------------------------------------------------
# Data module
# --------------------------------------------------------------------------------------------------
class VoxelDataModule(DataModule):
    """GEOM-drugs-format conformers with a fixed held-out set and nested training subsets.

    Args:
        path: training data — a MiDi pickle, an SDF file, or a converted ``.h5`` store (relative paths are
            resolved against ``root``).
        heldout_path: a separate held-out file (MiDi ``val_data.pickle``); ``None`` → split ``path``.
        root: directory that relative ``path`` / ``heldout_path`` are resolved against (one setting for
            the GEOM-drugs location).
        store_dir: where converted stores are written (default: next to the raw file).
        train_size: training conformers (``subset_by='conformer'``) or molecules (``'molecule'``): a count,
            a fraction ≤ 1 (0.5 / 0.25 / 0.1 / 0.01 for the paper's runs) or ``None`` for all. Nested.
        heldout_size: without ``heldout_path``, the held-out molecules (count or fraction); with it, an
            optional cap on the held-out conformers (``None``: all).
        subset_by: ``'conformer'`` or ``'molecule'``; seed: split and subset seed (keep it fixed).
        elements: channel order; molecules with other elements are dropped (counted).
        max_conformers: conformers kept per molecule (VoxMol: 5).
        sdf_group_by: ``'name'`` or ``'record'`` (see module docstring); bad_records: ``'error'`` | ``'skip'``.
        max_atoms, max_radius: optional conformer filters (atoms incl. H; Å from the centroid); counted.
        stream_pickle: stream the pickle while converting (see module docstring).
        generate: settings of :class:`tasks.voxels.generate.GeneratorConfig` used to create ``path`` (a
            ``.h5`` store) when it does not exist; ``None`` → a missing file is an error.
    """

    def __init__(self, path: str, heldout_path: str | None = None, root: str | None = None, store_dir: str | None = None,
                 train_size: int | float | None = None, heldout_size: int | float | None = 0.05, subset_by: str = "conformer",
                 seed: int = 0, elements: Sequence[str] = GEOM_DRUGS_ELEMENTS, max_conformers: int = 5, sdf_group_by: str = "name",
                 bad_records: str = "error", max_atoms: int | None = None, max_radius: float | None = None,
                 stream_pickle: bool = True, generate: Mapping[str, Any] | None = None):
        if subset_by not in ("conformer", "molecule"):
            raise ValueError(f"subset_by must be 'conformer' or 'molecule', got {subset_by!r}")
        resolve = lambda p: None if p is None else str(Path(root) / p if root and not os.path.isabs(p) else p)  # noqa: E731
        self.path, self.heldout_path = resolve(str(path)), resolve(heldout_path)
        self.store_dir = store_dir
        self.train_size, self.heldout_size, self.subset_by, self.seed = train_size, heldout_size, subset_by, int(seed)
        self.elements = tuple(elements)
        self.convert_kwargs = dict(elements=self.elements, max_conformers=int(max_conformers), sdf_group_by=sdf_group_by,
                                   bad_records=bad_records, stream_pickle=bool(stream_pickle))
        self.max_atoms, self.max_radius = max_atoms, max_radius
        self.generate = dict(generate) if generate else None
        self._ready = False

    @property
    def n_channels(self) -> int:
        return len(self.elements)

    def _ensure_generated(self) -> None:
        if Path(self.path).exists() or self.generate is None:
            return
        from tasks.voxels.generate import GeneratorConfig, generate

        log.warning("%s does not exist: generating the embedded voxel data (%s)", self.path, self.generate)
        summary = generate(self.path, GeneratorConfig(**self.generate))
        log.warning("generated %s: %d molecules, %d conformers in %.0f s", self.path, summary["molecules"], summary["conformers"], summary["seconds"])

    def open_store(self, path: str) -> VoxelStore:
        """The store of ``path``: opened directly (``.h5``) or converted once from the raw file."""
        if not Path(path).exists():
            hint = " The embedded data is made by `python -m tasks.voxels.generate --out data/geom_embedded.h5 --seed 0` (or `make data`)."
            raise DataError(f"{path}: no such file.{hint if path.endswith('.h5') else ''}")
        if path.endswith(".h5"):
            store = VoxelStore(path)
        else:
            settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.convert_kwargs.items() if k != "stream_pickle"}
            target = store_path_for(path, settings, self.store_dir)
            if not target.exists():
                log.warning("converting %s into the voxel store %s (once)", path, target)
                convert_to_store(path, target, **self.convert_kwargs)
            store = VoxelStore(target)
        if store.channels != self.elements:
            raise DataError(f"{store.path}: store channels {store.channels} differ from data.elements {self.elements}; "
                            "convert the raw file with these elements (point data.path at the .pickle/.sdf)")
        return store

    def _usable(self, store: VoxelStore, skipped: dict[str, int]) -> np.ndarray:
        keep = np.ones(len(store), dtype=bool)
        if self.max_atoms is not None:
            bad = store.n_atoms > int(self.max_atoms)
            skipped["max_atoms"] = int(bad.sum())
            keep &= ~bad
        if self.max_radius is not None:
            bad = store.radius > float(self.max_radius)
            skipped["max_radius"] = int((bad & keep).sum())
            keep &= ~bad
        return keep

    def setup(self) -> None:
        if self._ready:
            return
        self._ensure_generated()
        base = self.open_store(self.path)
        self.skipped: dict[str, int] = {}
        records = np.flatnonzero(self._usable(base, self.skipped))
        if self.heldout_path:
            held_base = self.open_store(self.heldout_path)
            self.heldout_skipped: dict[str, int] = {}
            held_all = torch.from_numpy(np.flatnonzero(self._usable(held_base, self.heldout_skipped)))
            held = held_all if self.heldout_size is None else nested_subset(held_all, self.heldout_size, self.seed + 1)
            pool = records
        else:
            self.heldout_skipped = {}
            if self.heldout_size is None:
                raise ValueError("heldout_size must be set when there is no heldout_path")
            mol_ids, inverse = np.unique(base.molecule_id[records], return_inverse=True)
            _, held_mols = heldout_split(len(mol_ids), self.heldout_size, self.seed)
            is_held = np.isin(inverse, held_mols.numpy())
            pool, held = records[~is_held], torch.from_numpy(records[is_held])
            held_base = base
        if self.subset_by == "conformer":
            train = nested_subset(torch.from_numpy(pool), self.train_size, self.seed)
        else:
            mols = np.unique(base.molecule_id[pool])
            chosen = nested_subset(torch.from_numpy(mols), self.train_size, self.seed).numpy()
            train = torch.from_numpy(pool[np.isin(base.molecule_id[pool], chosen)])
        self.base, self.heldout_base = base, held_base
        self.train_dataset = SubsetDataset(base, train)
        self.heldout_dataset = SubsetDataset(held_base, held)
        self._ready = True

    def collate(self, items: Sequence[Mapping[str, torch.Tensor]]) -> Batch:
        """``coords (B, N, 3)`` Å, ``elements (B, N)`` long, ``mask (B, N)`` bool (zero padding)."""
        return pad_collate(items, ragged=("coords", "elements"))

    def describe(self) -> dict[str, Any]:
        counts = self.base.attrs.get("counts", {})
        out = {
            "train_size": len(self.train_dataset),
            "heldout_size": len(self.heldout_dataset),
            "path": self.path,
            "store": self.base.path,
            "conformers": len(self.base),
            "molecules": self.base.n_molecules,
            "channels": list(self.elements),
            "subset_by": self.subset_by,
            "dropped_molecules": counts.get("dropped_molecules", 0) if isinstance(counts, dict) else None,
            "dropped_by_element": counts.get("dropped_by_element", {}) if isinstance(counts, dict) else None,
            "conversion_skipped": counts.get("skipped", {}) if isinstance(counts, dict) else None,
            "skipped": self.skipped,
            "units": "coords Å, centred at the mean atom position; elements = channel index",
        }
        if self.heldout_path:
            out["heldout_path"] = self.heldout_path
            out["heldout_store"] = self.heldout_base.path
            out["heldout_skipped"] = self.heldout_skipped
        return out
