"""The SPICE HDF5 reader (openmm/spice-dataset layout; also the embedded data's format).

One group per molecule with ``atomic_numbers (N,)``, ``conformations (M, N, 3)`` [bohr],
``dft_total_energy (M,)`` [hartree] and ``dft_total_gradient (M, N, 3)`` [hartree/bohr]; items are in
Å / eV / eV·Å⁻¹ with forces = −gradient. Validation and the cached index: :mod:`tasks.forcefield.data.index`.
Because the format says bohr, a file that stores Å there has bond lengths × 0.529 (C–H 0.58 Å, O–H
0.51 Å) and fails the plausibility check with a hint saying so.

**Reads.** The index keeps each group's atomic numbers and each conformer's energy, so an item needs only
its positions and gradient. Where those datasets are stored contiguously and uncompressed (SPICE's own
files and the embedded data are), the index also keeps their byte offsets and an item is two plain
``pread`` calls on a per-process file handle — no HDF5 object is opened, so memory does not grow with the
number of groups. Chunked or compressed files are read through h5py, keeping the datasets of the last
:data:`OPEN_GROUPS` groups open per process.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from equivrepro.data import MIN_INTERATOMIC_DISTANCE, DataError, ProcessLocalFile, hdf5_string, open_hdf5, shortest_distances
from tasks.forcefield.data.index import IndexedReader
from tasks.forcefield.units import BOHR_TO_ANGSTROM, HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM, HARTREE_TO_EV, SPICE_ELEMENTS

__all__ = ["SpiceHDF5Dataset", "SPICE_KEYS"]

SPICE_KEYS = ("atomic_numbers", "conformations", "dft_total_energy", "dft_total_gradient")
#: groups whose datasets a reader keeps open per process (a bounded LRU)
OPEN_GROUPS = 64


def _raw_layout(ds) -> tuple[int, int]:
    """``(byte offset, itemsize)`` of a dataset stored contiguously, uncompressed, as little-endian float32/64
    (then a conformer is one plain read at ``offset + c · N · 3 · itemsize``), else ``(-1, 0)``."""
    dt = ds.dtype
    if ds.chunks is not None or ds.compression is not None or dt.kind != "f" or dt.itemsize not in (4, 8) or dt.byteorder == ">":
        return -1, 0
    offset = ds.id.get_offset()
    return (-1, 0) if offset is None else (int(offset), int(dt.itemsize))


def _net_charge(smiles: str) -> int | None:
    """Sum of formal charges of a SMILES string (None if RDKit cannot read it)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    return None if mol is None else sum(a.GetFormalCharge() for a in mol.GetAtoms())


class SpiceHDF5Dataset(IndexedReader):
    """Conformers of a SPICE-format HDF5 file (bohr / hartree / hartree·bohr⁻¹ → Å / eV / eV·Å⁻¹).

    ``neutral_only`` drops groups whose ``smiles`` carries a net formal charge (the MACE-OFF filter). If
    the file declares a ``primary_label_method`` and groups carry a per-conformer ``label_method`` (the
    embedded data), conformers labelled by another method are skipped unless ``accept_fallback_labels``.
    """

    def unit_hint(self, shortest: float | None = None) -> str:
        if shortest is not None and shortest / BOHR_TO_ANGSTROM < self.min_distance:
            return ""  # implausible in Å too: not a unit mistake
        return (" (SPICE HDF5 stores positions in bohr and they are multiplied by 0.529 Å/bohr here: coordinates look like "
                "Å stored as bohr; convert them to bohr when writing the file)")

    def __init__(self, path, elements: Sequence[int] = SPICE_ELEMENTS, element_references="auto", bad_records: str = "error",
                 unknown_elements: str = "error", neutral_only: bool = False, accept_fallback_labels: bool = False,
                 cache_index: bool = True,
                 min_distance: float | None = MIN_INTERATOMIC_DISTANCE):
        self.accept_fallback_labels = bool(accept_fallback_labels)
        self._open: OrderedDict[int, tuple] = OrderedDict()
        self._open_pid: int | None = None
        self._handle = ProcessLocalFile(functools.partial(open_hdf5, str(path)))
        self._raw = ProcessLocalFile(functools.partial(open, str(path), "rb"))
        super().__init__(path, elements, element_references, bad_records, unknown_elements, neutral_only, cache_index, min_distance)
        self.group_names: list[str] = [str(s) for s in self.index["names"]]

    def _file_references(self) -> dict[int, float] | None:
        with open_hdf5(self.path) as f:
            if "element_reference_Z" in f.attrs and "element_reference_energy_eV" in f.attrs:
                return {int(z): float(e) for z, e in zip(f.attrs["element_reference_Z"], f.attrs["element_reference_energy_eV"])}
        return None

    def _settings(self) -> dict:
        return {**super()._settings(), "fallback": self.accept_fallback_labels}

    def _empty_hint(self) -> str:
        return ": the file has no groups (SPICE files have one group per molecule)"

    def _scan(self) -> dict[str, Any]:
        import h5py

        # per-group arrays, concatenated at the end: the walk never holds more than the final index (no Python
        # object per conformer)
        names, group_id, conformer, natoms, energy, force_sq, group_z, raw = [], [], [], [], [], [], [], []
        skipped: dict[str, int] = {}
        with open_hdf5(self.path) as f:
            primary = hdf5_string(f.attrs["primary_label_method"]) if "primary_label_method" in f.attrs else None
            for name in f.keys():
                g = f[name]
                where = f"group '{name}'"
                if not isinstance(g, h5py.Group):
                    raise DataError(f"{self.path}: '{name}' is not a group (SPICE files have one group per molecule)")
                for key in SPICE_KEYS:
                    if key not in g:
                        raise DataError(f"{self.path}: {where} has no dataset '{key}'")
                z = g["atomic_numbers"][()]
                shapes = {k: tuple(g[k].shape) for k in SPICE_KEYS}
                if z.ndim != 1 or z.shape[0] == 0:
                    raise DataError(f"{self.path}: {where}: atomic_numbers has shape {z.shape}, expected (N,) with N ≥ 1")
                n = z.shape[0]
                m = shapes["dft_total_energy"][0] if len(shapes["dft_total_energy"]) == 1 else -1
                expected = {"conformations": (m, n, 3), "dft_total_energy": (m,), "dft_total_gradient": (m, n, 3)}
                for key, shape in expected.items():
                    if m < 0 or shapes[key] != shape:
                        raise DataError(f"{self.path}: {where}: shape mismatch, {key} is {shapes[key]} but atomic_numbers "
                                        f"{(n,)} and dft_total_energy {shapes['dft_total_energy']} imply {shape}")
                if not self._check_elements(z, where, skipped, m):
                    continue
                if self.neutral_only:
                    if "smiles" not in g:
                        raise DataError(f"{self.path}: {where} has no 'smiles' dataset, needed by neutral_only")
                    charge = _net_charge(hdf5_string(g["smiles"][()]))
                    if charge is None:
                        raise DataError(f"{self.path}: {where}: RDKit cannot read its smiles {hdf5_string(g['smiles'][()])!r}")
                    if charge != 0:
                        self._count(skipped, "charged", m)
                        continue
                keep = np.ones(m, dtype=bool)
                if primary is not None and "label_method" in g and not self.accept_fallback_labels:
                    methods = [hdf5_string(x) for x in g["label_method"][()]]
                    fallback = np.array([meth != primary for meth in methods], dtype=bool)
                    if fallback.any():
                        self._count(skipped, "fallback_label", int(fallback.sum()))
                    keep &= ~fallback
                e_ha = g["dft_total_energy"][()].astype(np.float64)
                grad = g["dft_total_gradient"][()].astype(np.float64)
                pos_bohr = g["conformations"][()].astype(np.float64)
                finite = np.isfinite(e_ha) & np.isfinite(grad).reshape(m, -1).all(1) & np.isfinite(pos_bohr).reshape(m, -1).all(1)
                keep = self._check_finite(finite, where, skipped, keep)
                keep = self._check_geometry(shortest_distances(pos_bohr) * BOHR_TO_ANGSTROM, where, skipped, keep)
                e_ev = e_ha * HARTREE_TO_EV - self.reference_energy(z.astype(np.int64))
                f_sq = (grad ** 2).reshape(m, -1).sum(1) * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM ** 2
                gid = len(names)
                names.append(name)
                group_z.append(z.astype(np.int64))
                raw.append([v for key in ("conformations", "dft_total_gradient") for v in _raw_layout(g[key])])
                kept = np.flatnonzero(keep)
                group_id.append(np.full(len(kept), gid, dtype=np.int64))
                conformer.append(kept.astype(np.int64))
                natoms.append(np.full(len(kept), n, dtype=np.int64))
                energy.append(e_ev[kept])
                force_sq.append(f_sq[kept])
        cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
        groups = cat(group_id, np.int64)
        return {
            "names": np.array(names, dtype=str),
            "group": groups,
            "conformer": cat(conformer, np.int64),
            "natoms": cat(natoms, np.int64),
            "molecule": groups.copy(),
            "energy": cat(energy, np.float64),
            "force_sq": cat(force_sq, np.float64),
            "group_z": np.concatenate(group_z) if group_z else np.zeros(0, np.int64),
            "group_z_offset": np.cumsum([0] + [len(z) for z in group_z]).astype(np.int64),
            "group_raw": np.array(raw, dtype=np.int64).reshape(-1, 4),
            "skipped": skipped,
        }

    def _file(self):
        return self._handle.get()

    def _datasets(self, gid: int):
        """(conformations, dft_total_gradient) h5py datasets of group ``gid``; the last :data:`OPEN_GROUPS` groups
        stay open per process (every open dataset costs HDF5 memory, so they are bounded, not one per group)."""
        if self._open_pid != os.getpid():
            self._open, self._open_pid = OrderedDict(), os.getpid()
        ds = self._open.get(gid)
        if ds is None:
            g = self._file()[self.group_names[gid]]
            ds = self._open[gid] = (g["conformations"], g["dft_total_gradient"])
            if len(self._open) > OPEN_GROUPS:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(gid)
        return ds

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict(), "_open_pid": None}  # h5py objects never travel to workers

    def _rows(self, gid: int, c: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions (n, 3) bohr, gradient (n, 3) hartree/bohr) of conformer ``c`` of group ``gid``."""
        conf_at, conf_size, grad_at, grad_size = (int(v) for v in self.index["group_raw"][gid])
        if conf_at >= 0 and grad_at >= 0:  # contiguous raw data: two plain reads, no HDF5 object opened
            fd = self._raw.get().fileno()
            out = []
            for at, size in ((conf_at, conf_size), (grad_at, grad_size)):
                nbytes = n * 3 * size
                buf = os.pread(fd, nbytes, at + c * nbytes)
                out.append(np.frombuffer(buf, dtype=f"<f{size}").reshape(n, 3))
            return out[0], out[1]
        conformations, gradient = self._datasets(gid)
        return conformations[c], gradient[c]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        gid, c = int(self.index["group"][i]), int(self.index["conformer"][i])
        a, b = self.index["group_z_offset"][gid], self.index["group_z_offset"][gid + 1]
        z = self.index["group_z"][a:b]
        x, grad = self._rows(gid, c, int(b - a))
        pos = x.astype(np.float64) * BOHR_TO_ANGSTROM
        forces = -grad.astype(np.float64) * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM
        return self._item(pos, z, float(self.index["energy"][i]), forces)  # energy: read and reference-subtracted at indexing

    def record_name(self, i: int) -> str:
        return f"{self.path}:{self.group_names[int(self.index['group'][i])]}[{int(self.index['conformer'][i])}]"
