"""Force-field data: streaming readers for SPICE HDF5 and MACE-OFF extended XYZ, and the data module.

Every item is ``{"pos": (N, 3) Å, "z": (N,) long, "energy": () eV, "forces": (N, 3) eV/Å}`` (float32)
where ``energy = E_total − Σ_atoms e_ref(Z)`` (per-element reference energies; see
:func:`resolve_references`). Batches are padded by :func:`equivrepro.data.pad_collate` and carry
``mask (B, N)``.

**Streaming.** Neither reader loads a file into memory. At ``setup`` each reader walks the file once —
one HDF5 group / one XYZ frame at a time — validating every record, and keeps only an index
(group id + conformer index, or the byte offset of each frame). The index is cached next to the file
(``<file>.index-<key>.npz``, keyed by the file's path, size, mtime and the validation settings; under
``~/.cache/equivrepro/index`` if the data directory is read-only), so the walk happens once per file. ``__getitem__`` reads one conformer (HDF5 handles are opened lazily, once per
worker process) or seeks to one frame.

**Bad input.** A missing dataset or a shape mismatch always raises :class:`~equivrepro.data.DataError`
naming the file and the group/frame. Non-finite labels or positions (``bad_records``) and elements
outside the model's element table (``unknown_elements``) raise too by default; with ``"skip"`` the
affected conformers are dropped and counted in :meth:`ForceFieldDataModule.describe` (``skipped``).

**Splits.** The held-out set is fixed by :func:`equivrepro.data.heldout_split` (by molecule for SPICE
HDF5, so no molecule is in both sets) or is a separate test file (MACE-OFF); training subsets of any
size are nested (:func:`equivrepro.data.nested_subset`): the 500-conformer subset lies inside the 5k one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import functools
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from equivrepro.atomic import atomic_write
from equivrepro.data import DataError, DataModule, ProcessLocalFile, SubsetDataset, heldout_split, nested_subset, pad_collate
from equivrepro.task import Batch
from tasks.forcefield.units import (
    BOHR_TO_ANGSTROM,
    HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    HARTREE_TO_EV,
    SPICE_ELEMENTS,
    SPICE_ISOLATED_ATOM_ENERGIES_EV,
    SYMBOL_TO_Z,
)

log = logging.getLogger("tasks.forcefield.data")

__all__ = ["SpiceHDF5Dataset", "ExtXYZDataset", "ForceFieldDataModule", "resolve_references", "parse_extxyz_header"]

_INDEX_VERSION = 1
SPICE_KEYS = ("atomic_numbers", "conformations", "dft_total_energy", "dft_total_gradient")


def resolve_references(spec: str | Mapping[int, float] | None, file_refs: Mapping[int, float] | None) -> tuple[dict[int, float], str]:
    """Per-element reference energies (eV) and a description of where they come from.

    ``spec``: ``"auto"`` (the file's own references if it has them, else SPICE's isolated atoms),
    ``"file"``, ``"spice_isolated_atoms"`` (ωB97M-D3(BJ)/def2-TZVPPD, the MACE-OFF/EScAIP table),
    ``"none"`` (no subtraction) or an explicit ``{Z: eV}`` mapping.
    """
    if isinstance(spec, Mapping):
        return {int(k): float(v) for k, v in spec.items()}, "explicit per-element references from the config"
    spec = spec or "none"
    if spec == "auto":
        spec = "file" if file_refs else "spice_isolated_atoms"
    if spec == "file":
        if not file_refs:
            raise DataError("element_references='file' but the data file stores no element_reference_Z/_energy_eV attributes")
        return dict(file_refs), "the file's own least-squares element references (attrs element_reference_*)"
    if spec == "spice_isolated_atoms":
        return dict(SPICE_ISOLATED_ATOM_ENERGIES_EV), "SPICE isolated-atom energies, ωB97M-D3(BJ)/def2-TZVPPD (MACE-OFF / EScAIP)"
    if spec == "none":
        return {}, "none (total energies)"
    raise ValueError(f"unknown element_references {spec!r}: use auto, file, spice_isolated_atoms, none or a {{Z: eV}} mapping")


# --------------------------------------------------------------------------------------------------
# Index cache shared by both readers
# --------------------------------------------------------------------------------------------------
def _cache_path(path: Path, settings: dict) -> Path:
    """``<file>.index-<key>.npz`` next to the data, or under ``$EQUIVREPRO_INDEX_CACHE`` (default
    ``~/.cache/equivrepro/index``) when the data directory is read-only (a shared dataset)."""
    st = path.stat()
    key = json.dumps({"v": _INDEX_VERSION, "path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns, **settings},
                     sort_keys=True, default=str)
    name = f"{path.name}.index-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if os.access(path.parent, os.W_OK):
        return path.with_name(name)
    cache_dir = Path(os.environ.get("EQUIVREPRO_INDEX_CACHE", Path.home() / ".cache" / "equivrepro" / "index"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir / name


def _load_cache(path: Path) -> dict[str, Any] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        out["skipped"] = json.loads(str(out["skipped"]))
        return out
    except (OSError, ValueError, KeyError):
        return None


def _save_cache(path: Path, arrays: dict[str, Any]) -> None:
    payload = {k: v for k, v in arrays.items() if k != "skipped"}
    try:
        atomic_write(path, lambda fh: np.savez(fh, **payload, skipped=np.array(json.dumps(arrays["skipped"]))))
    except PermissionError as exc:
        log.warning("cannot cache the index next to the data (%s); it will be rebuilt next time", exc)


class _IndexedDataset(Dataset):
    """Common part of the two readers: validation settings, the cached index and reference energies."""

    def __init__(self, path, elements: Sequence[int], element_references, bad_records: str, unknown_elements: str, neutral_only: bool, cache_index: bool):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file")
        for name, value in (("bad_records", bad_records), ("unknown_elements", unknown_elements)):
            if value not in ("error", "skip"):
                raise ValueError(f"{name} must be 'error' or 'skip', got {value!r}")
        self.elements = tuple(sorted(int(z) for z in elements))
        self.element_references_spec = element_references
        self.bad_records, self.unknown_elements = bad_records, unknown_elements
        self.neutral_only, self.cache_index = bool(neutral_only), bool(cache_index)
        self.references, self.references_source = resolve_references(element_references, self._file_references())
        self._ref_table = np.zeros(max(max(self.elements, default=0), max(self.references, default=0)) + 1)
        for z, e in self.references.items():
            self._ref_table[z] = e
        self.index = self._build_or_load_index()
        self.skipped: dict[str, int] = self.index["skipped"]

    # subclasses implement
    def _file_references(self) -> dict[int, float] | None:
        return None

    def _settings(self) -> dict:
        refs = {str(k): v for k, v in sorted(self.references.items())}
        return {"kind": type(self).__name__, "elements": self.elements, "refs": refs, "bad": self.bad_records,
                "unknown": self.unknown_elements, "neutral": self.neutral_only}

    def _scan(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_or_load_index(self) -> dict[str, Any]:
        cache = _cache_path(self.path, self._settings()) if self.cache_index else None
        if cache is not None and cache.exists():
            loaded = _load_cache(cache)
            if loaded is not None:
                return loaded
        log.info("indexing %s (one pass, %s)", self.path, "cached afterwards" if cache else "not cached")
        index = self._scan()
        if cache is not None:
            _save_cache(cache, index)
        return index

    # shared checks ---------------------------------------------------------------------------------
    def _check_elements(self, z: np.ndarray, where: str, skipped: dict[str, int], n: int) -> bool:
        """True if the record may be used; raise or count when it has elements outside the table."""
        bad = sorted(set(int(x) for x in np.unique(z)) - set(self.elements))
        if bad:
            if self.unknown_elements == "error":
                raise DataError(f"{self.path}: {where} has element(s) Z={bad} outside the model's element table {list(self.elements)}")
            skipped["unknown_element"] = skipped.get("unknown_element", 0) + n
            return False
        missing = sorted({int(x) for x in np.unique(z)} - set(self.references)) if self.references else []
        if missing:
            raise DataError(f"{self.path}: {where} has element(s) Z={missing} with no reference energy ({self.references_source})")
        return True

    def reference_energy(self, z: np.ndarray) -> float:
        """Σ_atoms e_ref(Z) in eV (0 with element_references='none')."""
        return float(self._ref_table[z].sum()) if self.references else 0.0

    @property
    def natoms(self) -> np.ndarray:
        return self.index["natoms"]

    @property
    def molecule(self) -> np.ndarray:
        """Molecule id of every record (records of one molecule are never split across train/held-out)."""
        return self.index["molecule"]

    def __len__(self) -> int:
        return int(self.index["natoms"].shape[0])

    @staticmethod
    def _item(pos: np.ndarray, z: np.ndarray, energy: float, forces: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "pos": torch.as_tensor(np.ascontiguousarray(pos), dtype=torch.float32),
            "z": torch.as_tensor(np.asarray(z, dtype=np.int64)),
            "energy": torch.tensor(energy, dtype=torch.float32),
            "forces": torch.as_tensor(np.ascontiguousarray(forces), dtype=torch.float32),
        }


# --------------------------------------------------------------------------------------------------
# SPICE HDF5
# --------------------------------------------------------------------------------------------------
def _str(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode()
    if isinstance(value, np.ndarray):
        return _str(value.reshape(-1)[0]) if value.size else ""
    return str(value)


class SpiceHDF5Dataset(_IndexedDataset):
    """Conformers of a SPICE-format HDF5 file (bohr / hartree / hartree·bohr⁻¹ → Å / eV / eV·Å⁻¹).

    One group per molecule with ``atomic_numbers (N,)``, ``conformations (M, N, 3)`` [bohr],
    ``dft_total_energy (M,)`` [hartree], ``dft_total_gradient (M, N, 3)`` [hartree/bohr]; forces are the
    negative gradient. ``neutral_only`` drops groups whose ``smiles`` carries a net formal charge (the
    MACE-OFF filter). If the file declares a ``primary_label_method`` and groups carry a per-conformer
    ``label_method`` (the embedded data), conformers labelled by another method are skipped unless
    ``accept_fallback_labels``.
    """

    def __init__(self, path, elements: Sequence[int] = SPICE_ELEMENTS, element_references="auto", bad_records: str = "error",
                 unknown_elements: str = "error", neutral_only: bool = False, accept_fallback_labels: bool = False, cache_index: bool = True):
        import h5py

        self.accept_fallback_labels = bool(accept_fallback_labels)
        self._handle = ProcessLocalFile(functools.partial(h5py.File, str(path), "r"))
        super().__init__(path, elements, element_references, bad_records, unknown_elements, neutral_only, cache_index)
        self.group_names: list[str] = [str(s) for s in self.index["names"]]

    def _file_references(self) -> dict[int, float] | None:
        import h5py

        with h5py.File(self.path, "r") as f:
            if "element_reference_Z" in f.attrs and "element_reference_energy_eV" in f.attrs:
                return {int(z): float(e) for z, e in zip(f.attrs["element_reference_Z"], f.attrs["element_reference_energy_eV"])}
        return None

    def _settings(self) -> dict:
        return {**super()._settings(), "fallback": self.accept_fallback_labels}

    def _scan(self) -> dict[str, Any]:
        import h5py

        names, group_id, conformer, natoms = [], [], [], []
        skipped: dict[str, int] = {}
        with h5py.File(self.path, "r") as f:
            primary = _str(f.attrs["primary_label_method"]) if "primary_label_method" in f.attrs else None
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
                    charge = _net_charge(_str(g["smiles"][()]))
                    if charge is None:
                        raise DataError(f"{self.path}: {where}: RDKit cannot read its smiles {_str(g['smiles'][()])!r}")
                    if charge != 0:
                        skipped["charged"] = skipped.get("charged", 0) + m
                        continue
                keep = np.ones(m, dtype=bool)
                if primary is not None and "label_method" in g and not self.accept_fallback_labels:
                    methods = [_str(x) for x in g["label_method"][()]]
                    fallback = np.array([meth != primary for meth in methods], dtype=bool)
                    if fallback.any():
                        skipped["fallback_label"] = skipped.get("fallback_label", 0) + int(fallback.sum())
                    keep &= ~fallback
                finite = (
                    np.isfinite(g["dft_total_energy"][()])
                    & np.isfinite(g["dft_total_gradient"][()]).reshape(m, -1).all(1)
                    & np.isfinite(g["conformations"][()]).reshape(m, -1).all(1)
                )
                if not finite.all():
                    bad = np.flatnonzero(~finite).tolist()
                    if self.bad_records == "error":
                        raise DataError(f"{self.path}: {where}: conformer(s) {bad[:10]} have NaN/inf energy, gradient or positions")
                    skipped["non_finite"] = skipped.get("non_finite", 0) + int((~finite & keep).sum())
                    keep &= finite
                gid = len(names)
                names.append(name)
                for c in np.flatnonzero(keep):
                    group_id.append(gid)
                    conformer.append(int(c))
                    natoms.append(n)
        return {
            "names": np.array(names, dtype=str),
            "group": np.array(group_id, dtype=np.int64),
            "conformer": np.array(conformer, dtype=np.int64),
            "natoms": np.array(natoms, dtype=np.int64),
            "molecule": np.array(group_id, dtype=np.int64),
            "skipped": skipped,
        }

    def _file(self):
        return self._handle.get()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = self._file()[self.group_names[int(self.index["group"][i])]]
        c = int(self.index["conformer"][i])
        z = g["atomic_numbers"][()].astype(np.int64)
        pos = g["conformations"][c].astype(np.float64) * BOHR_TO_ANGSTROM
        forces = -g["dft_total_gradient"][c].astype(np.float64) * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM
        energy = float(g["dft_total_energy"][c]) * HARTREE_TO_EV - self.reference_energy(z)
        return self._item(pos, z, energy, forces)

    def record_name(self, i: int) -> str:
        return f"{self.path}:{self.group_names[int(self.index['group'][i])]}[{int(self.index['conformer'][i])}]"


def _net_charge(smiles: str) -> int | None:
    """Sum of formal charges of a SMILES string (None if RDKit cannot read it)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    return None if mol is None else sum(a.GetFormalCharge() for a in mol.GetAtoms())


# --------------------------------------------------------------------------------------------------
# Extended XYZ (MACE-OFF)
# --------------------------------------------------------------------------------------------------
_KV = re.compile(r'\s*([A-Za-z_][\w\-]*)\s*(?:=\s*("(?:[^"\\]|\\.)*"|\{[^}]*\}|\S+))?')


def parse_extxyz_header(line: str) -> dict[str, str | bool]:
    """``key=value`` pairs of an extended-XYZ comment line (quoted values unquoted; bare keys → True)."""
    out: dict[str, str | bool] = {}
    pos, line = 0, line.strip()
    while pos < len(line):
        m = _KV.match(line, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse extended-XYZ header near {line[pos:pos + 40]!r}")
        key, value = m.group(1), m.group(2)
        if value is None:
            out[key] = True
        else:
            out[key] = value[1:-1] if value[:1] in "\"{" else value
        pos = m.end()
    return out


def _properties(spec: str) -> dict[str, tuple[str, int, int]]:
    """``species:S:1:pos:R:3:forces:R:3`` → {name: (type, first column, n columns)}."""
    parts = spec.split(":")
    if len(parts) % 3:
        raise ValueError(f"malformed Properties={spec!r}")
    out, col = {}, 0
    for name, kind, n in zip(parts[::3], parts[1::3], parts[2::3]):
        out[name] = (kind, col, int(n))
        col += int(n)
    return out


class ExtXYZDataset(_IndexedDataset):
    """Frames of an extended-XYZ file such as MACE-OFF's SPICE split (Å, eV, eV/Å already).

    The energy is the first of ``energy_keys`` found in the comment line; forces the first of
    ``forces_keys`` found in ``Properties``; species are element symbols (``S``) or numbers (``Z:I``).
    The byte offset of every frame is indexed once (cached next to the file); reads seek to it.
    ``neutral_only`` drops frames whose ``total_charge`` is non-zero.
    """

    def __init__(self, path, elements: Sequence[int] = SPICE_ELEMENTS, element_references="auto", bad_records: str = "error",
                 unknown_elements: str = "error", neutral_only: bool = False, cache_index: bool = True,
                 energy_keys: Sequence[str] = ("energy", "REF_energy", "dft_total_energy"),
                 forces_keys: Sequence[str] = ("forces", "REF_forces", "force")):
        self.energy_keys, self.forces_keys = tuple(energy_keys), tuple(forces_keys)
        self._handle = ProcessLocalFile(functools.partial(open, str(path), "rb"))
        super().__init__(path, elements, element_references, bad_records, unknown_elements, neutral_only, cache_index)

    def _settings(self) -> dict:
        return {**super()._settings(), "ekeys": self.energy_keys, "fkeys": self.forces_keys}

    def _parse(self, lines: list[bytes], frame: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, dict]:
        """(z (N,), pos (N, 3) Å, total energy eV, forces (N, 3) eV/Å, header) of one frame."""
        where = f"frame {frame}"
        try:
            n = int(lines[0])
        except ValueError:
            raise DataError(f"{self.path}: {where}: first line {lines[0][:40]!r} is not an atom count") from None
        if len(lines) != n + 2:
            raise DataError(f"{self.path}: {where}: expected {n} atom lines, the file ends after {len(lines) - 2}")
        try:
            header = parse_extxyz_header(lines[1].decode())
            props = _properties(str(header.get("Properties", "species:S:1:pos:R:3")))
        except ValueError as exc:
            raise DataError(f"{self.path}: {where}: {exc}") from None
        ekey = next((k for k in self.energy_keys if k in header), None)
        fkey = next((k for k in self.forces_keys if k in props), None)
        if ekey is None or fkey is None or "pos" not in props or not ("species" in props or "Z" in props):
            raise DataError(f"{self.path}: {where}: needs an energy ({'/'.join(self.energy_keys)}) in the header and "
                            f"species, pos and forces ({'/'.join(self.forces_keys)}) in Properties; has {sorted(header)} / {sorted(props)}")
        ncols = sum(p[2] for p in props.values())
        rows = [ln.split() for ln in lines[2:]]
        if any(len(r) != ncols for r in rows):
            raise DataError(f"{self.path}: {where}: atom lines must have {ncols} columns (Properties={header.get('Properties')})")
        table = np.array(rows, dtype=object).reshape(n, ncols)
        try:
            if "species" in props:
                z = np.array([SYMBOL_TO_Z[s.decode()] for s in table[:, props["species"][1]]], dtype=np.int64)
            else:
                z = table[:, props["Z"][1]].astype(np.int64)
        except KeyError as exc:
            raise DataError(f"{self.path}: {where}: unknown element symbol {exc}") from None
        try:
            p0, f0 = props["pos"][1], props[fkey][1]
            pos = table[:, p0 : p0 + 3].astype(np.float64)
            forces = table[:, f0 : f0 + 3].astype(np.float64)
            energy = float(header[ekey])
        except (ValueError, TypeError) as exc:
            raise DataError(f"{self.path}: {where}: non-numeric value ({exc})") from None
        return z, pos, energy, forces, header

    def _scan(self) -> dict[str, Any]:
        offsets, natoms = [], []
        skipped: dict[str, int] = {}
        with open(self.path, "rb") as fh:
            offset, frame = 0, 0
            while True:
                first = fh.readline()
                if not first:
                    break
                if not first.strip():
                    offset += len(first)
                    continue
                try:
                    n = int(first)
                except ValueError:
                    raise DataError(f"{self.path}: frame {frame} (byte {offset}): {first[:40]!r} is not an atom count") from None
                lines = [first] + [fh.readline() for _ in range(n + 1)]
                lines = [ln for ln in lines if ln]
                size = sum(len(ln) for ln in lines)
                z, pos, energy, forces, header = self._parse(lines, frame)
                where = f"frame {frame}"
                ok = self._check_elements(z, where, skipped, 1)
                if ok and self.neutral_only and float(header.get("total_charge", 0) or 0) != 0:
                    skipped["charged"] = skipped.get("charged", 0) + 1
                    ok = False
                if ok and not (np.isfinite(energy) and np.isfinite(pos).all() and np.isfinite(forces).all()):
                    if self.bad_records == "error":
                        raise DataError(f"{self.path}: {where}: NaN/inf energy, forces or positions")
                    skipped["non_finite"] = skipped.get("non_finite", 0) + 1
                    ok = False
                if ok:
                    offsets.append(offset)
                    natoms.append(n)
                offset += size
                frame += 1
                if frame % 100_000 == 0:
                    log.info("indexed %d frames of %s", frame, self.path)
        ids = np.arange(len(offsets), dtype=np.int64)
        return {"offset": np.array(offsets, dtype=np.int64), "natoms": np.array(natoms, dtype=np.int64), "molecule": ids, "skipped": skipped}

    def _file(self):
        return self._handle.get()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        fh = self._file()
        fh.seek(int(self.index["offset"][i]))
        n = int(self.index["natoms"][i])
        lines = [fh.readline() for _ in range(n + 2)]
        z, pos, energy, forces, _ = self._parse(lines, i)
        return self._item(pos, z, energy - self.reference_energy(z), forces)

    def record_name(self, i: int) -> str:
        return f"{self.path}@byte{int(self.index['offset'][i])}"


# --------------------------------------------------------------------------------------------------
# Data module
# --------------------------------------------------------------------------------------------------
class ForceFieldDataModule(DataModule):
    """SPICE HDF5 or extended-XYZ conformers with a fixed held-out set and nested training subsets.

    Args:
        path: the data file (``format='spice_hdf5'`` or ``'extxyz'``).
        train_size: conformers in the training subset (count, fraction ≤ 1, or ``None`` for all).
        heldout_size: held-out size — molecules (``split_by='molecule'``) or conformers — as a count or a
            fraction; with ``test_path`` the held-out set is that file, optionally capped to this many
            conformers (``None``: all of it).
        seed: seeds the held-out split and the subset permutation (keep it fixed across training seeds
            so replicates see the same data).
        test_path: a separate held-out file in the same format (MACE-OFF's ``test_large_neut_all.xyz``).
        max_atoms: drop conformers with more atoms (counted in ``describe()['skipped']``).
        split_by: ``'molecule'`` (HDF5 groups never straddle the split; an XYZ frame is its own molecule)
            or ``'conformer'``.
        elements: the model's element table; records with other elements are an error or skipped
            (``unknown_elements``).
        element_references: see :func:`resolve_references`.
        bad_records / unknown_elements: ``'error'`` (DataError naming file and record) or ``'skip'``.
        neutral_only: drop charged molecules (SPICE ``smiles`` formal charges / XYZ ``total_charge``).
        accept_fallback_labels: keep conformers the embedded generator labelled with MMFF94.
        generate: generator settings (``tasks.forcefield.generate.GeneratorConfig`` fields) used to create
            ``path`` when it does not exist; ``None`` → a missing file is an error.
    """

    def __init__(self, path: str, format: str = "spice_hdf5", train_size: int | float | None = None, heldout_size: int | float | None = 0.1,
                 seed: int = 0, test_path: str | None = None, max_atoms: int | None = None, split_by: str = "molecule",
                 elements: Sequence[int] = SPICE_ELEMENTS, element_references: Any = "auto", bad_records: str = "error",
                 unknown_elements: str = "error", neutral_only: bool = False, accept_fallback_labels: bool = False,
                 cache_index: bool = True, generate: Mapping[str, Any] | None = None):
        if format not in ("spice_hdf5", "extxyz"):
            raise ValueError(f"format must be 'spice_hdf5' or 'extxyz', got {format!r}")
        if split_by not in ("molecule", "conformer"):
            raise ValueError(f"split_by must be 'molecule' or 'conformer', got {split_by!r}")
        self.path, self.format, self.test_path = str(path), format, (str(test_path) if test_path else None)
        self.train_size, self.heldout_size, self.seed = train_size, heldout_size, int(seed)
        self.max_atoms, self.split_by = max_atoms, split_by
        self.reader_kwargs = dict(elements=tuple(elements), element_references=element_references, bad_records=bad_records,
                                  unknown_elements=unknown_elements, neutral_only=neutral_only, cache_index=cache_index)
        if format == "spice_hdf5":
            self.reader_kwargs["accept_fallback_labels"] = accept_fallback_labels
        self.generate = dict(generate) if generate else None
        self._ready = False

    def _reader(self, path: str) -> SpiceHDF5Dataset | ExtXYZDataset:
        cls = SpiceHDF5Dataset if self.format == "spice_hdf5" else ExtXYZDataset
        return cls(path, **self.reader_kwargs)

    def _ensure_file(self) -> None:
        if Path(self.path).exists():
            return
        if self.generate is None or self.format != "spice_hdf5":
            raise DataError(f"{self.path}: no such file. The embedded data is made by "
                            f"`python -m tasks.forcefield.generate --out {self.path} --seed 0` (or `make data`)")
        from tasks.forcefield.generate import GeneratorConfig, generate

        log.warning("%s does not exist: generating the embedded force-field data (%s)", self.path, self.generate)
        summary = generate(self.path, GeneratorConfig(**self.generate))
        log.warning("generated %s: %d molecules, %d conformers in %.0f s", self.path, summary["molecules"], summary["conformers"], summary["seconds"])

    def _usable(self, ds) -> np.ndarray:
        keep = np.ones(len(ds), dtype=bool)
        if self.max_atoms is not None:
            keep &= ds.natoms <= int(self.max_atoms)
        return keep

    def setup(self) -> None:
        if self._ready:
            return
        self._ensure_file()
        base = self._reader(self.path)
        keep = self._usable(base)
        self.skipped = dict(base.skipped)
        if (~keep).any():
            self.skipped["max_atoms"] = int((~keep).sum())
        if self.test_path:
            test = self._reader(self.test_path)
            tkeep = self._usable(test)
            self.test_skipped = dict(test.skipped) | ({"max_atoms": int((~tkeep).sum())} if (~tkeep).any() else {})
            pool = torch.from_numpy(np.flatnonzero(keep))
            held_all = torch.from_numpy(np.flatnonzero(tkeep))
            held = held_all if self.heldout_size is None else nested_subset(held_all, self.heldout_size, self.seed + 1)
            held_base = test
        else:
            self.test_skipped = {}
            if self.heldout_size is None:
                raise ValueError("heldout_size must be set when there is no test_path")
            records = np.flatnonzero(keep)
            if self.split_by == "molecule":
                mol_ids, inverse = np.unique(base.molecule[records], return_inverse=True)
                train_mols, held_mols = heldout_split(len(mol_ids), self.heldout_size, self.seed)
                is_held = np.isin(inverse, held_mols.numpy())
                pool, held = torch.from_numpy(records[~is_held]), torch.from_numpy(records[is_held])
            else:
                train_pos, held_pos = heldout_split(len(records), self.heldout_size, self.seed)
                pool, held = torch.from_numpy(records[train_pos.numpy()]), torch.from_numpy(records[held_pos.numpy()])
            held_base = base
        train = nested_subset(pool, self.train_size, self.seed)
        self.base, self.heldout_base = base, held_base
        self.train_dataset = SubsetDataset(base, train)
        self.heldout_dataset = SubsetDataset(held_base, held)
        self._ready = True

    def collate(self, items: Sequence[Mapping[str, torch.Tensor]]) -> Batch:
        return pad_collate(items, ragged=("pos", "z", "forces"))

    def describe(self) -> dict[str, Any]:
        out = {
            "train_size": len(self.train_dataset),
            "heldout_size": len(self.heldout_dataset),
            "format": self.format,
            "path": self.path,
            "records": len(self.base),
            "skipped": self.skipped,
            "element_references": self.base.references_source,
            "units": "pos Å; energy eV (element references subtracted); forces eV/Å",
        }
        if self.test_path:
            out["test_path"] = self.test_path
            out["test_records"] = len(self.heldout_base)
            out["test_skipped"] = self.test_skipped
        if isinstance(self.base, SpiceHDF5Dataset):
            out["molecules"] = len(self.base.group_names)
        return out
