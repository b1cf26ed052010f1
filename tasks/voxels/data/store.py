"""The indexed HDF5 store every raw voxel input is converted into once, and its reader.

Layout (written to a temporary file and renamed into place)::

    coords          (total_atoms, 3) float32  Å, as in the input (not centred)
    elements        (total_atoms,)   uint8    channel index
    offsets         (n_conformers+1,) int64   atoms of conformer i: offsets[i]:offsets[i+1]
    molecule_id     (n_conformers,)  int64    index into smiles
    conformer_index (n_conformers,)  int16    position of the conformer within its molecule
    record          (n_conformers,)  int64    source record (pickle list index / SDF record number)
    radius          (n_conformers,)  float32  max distance of an atom from the conformer's centroid, Å
    smiles          (n_molecules,)   str
    attrs: format, version, channels (json), source, source_format, settings (json), counts (json)

A raw file is converted to ``<store_dir or its directory>/<name>.store-<key>.h5`` (:func:`store_path_for`),
keyed by the file's size and mtime and the conversion settings, so it happens once. :class:`VoxelStore`
reads index arrays at construction and one conformer per item through an HDF5 handle opened once per
process; a missing, empty, truncated or foreign ``.h5`` is a :class:`~equivrepro.data.DataError` naming it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from equivrepro.atomic import atomic_path
from equivrepro.data import DataError, ProcessLocalFile, open_hdf5

__all__ = ["STORE_FORMAT", "STORE_VERSION", "StoreWriter", "VoxelStore", "store_path_for"]

STORE_FORMAT = "equivrepro-voxels-store"
STORE_VERSION = 1


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
            with open_hdf5(self.path) as f:
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
        if len(self.molecule_id) == 0:
            raise DataError(f"no records in {self.path}: the store holds no conformers")
        self.n_atoms = np.diff(self.offsets)
        self._handle = ProcessLocalFile(functools.partial(open_hdf5, self.path))

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
