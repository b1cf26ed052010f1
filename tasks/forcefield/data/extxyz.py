"""The extended-XYZ reader (MACE-OFF's SPICE split: Å, eV, eV/Å already).

One frame per conformer: an atom-count line, a ``key=value`` comment line (the energy, ``Properties``) and
one line per atom. The byte offset of every frame is indexed once (validation and the cached index:
:mod:`tasks.forcefield.data.index`); reads seek to it. Positions are read as Å: a file in nm (or another
unit that makes bonds shorter than 0.6 Å) fails the plausibility check naming the frame.
"""

from __future__ import annotations

import functools
import logging
import re
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from equivrepro.data import MIN_INTERATOMIC_DISTANCE, DataError, ProcessLocalFile, shortest_distances
from tasks.forcefield.data.index import IndexedReader
from tasks.forcefield.units import SPICE_ELEMENTS, SYMBOL_TO_Z

log = logging.getLogger("tasks.forcefield.data")

__all__ = ["ExtXYZDataset", "parse_extxyz_header"]

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


@functools.lru_cache(maxsize=64)
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


class ExtXYZDataset(IndexedReader):
    """Frames of an extended-XYZ file such as MACE-OFF's SPICE split (Å, eV, eV/Å already).

    The energy is the first of ``energy_keys`` found in the comment line; forces the first of
    ``forces_keys`` found in ``Properties``; species are element symbols (``S``) or numbers (``Z:I``).
    ``neutral_only`` drops frames whose ``total_charge`` is non-zero.
    """

    def unit_hint(self, shortest: float | None = None) -> str:
        return " (extended-XYZ positions are read as Å: check the unit the file was written in)"

    def __init__(self, path, elements: Sequence[int] = SPICE_ELEMENTS, element_references="auto", bad_records: str = "error",
                 unknown_elements: str = "error", neutral_only: bool = False, cache_index: bool = True,
                 energy_keys: Sequence[str] = ("energy", "REF_energy", "dft_total_energy"),
                 forces_keys: Sequence[str] = ("forces", "REF_forces", "force"), min_distance: float | None = MIN_INTERATOMIC_DISTANCE):
        self.energy_keys, self.forces_keys = tuple(energy_keys), tuple(forces_keys)
        self._handle = ProcessLocalFile(functools.partial(open, str(path), "rb"))
        super().__init__(path, elements, element_references, bad_records, unknown_elements, neutral_only, cache_index, min_distance)

    def _settings(self) -> dict:
        return {**super()._settings(), "ekeys": self.energy_keys, "fkeys": self.forces_keys}

    def _empty_hint(self) -> str:
        return ": the file holds no extended-XYZ frame"

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
        table = np.array(rows, dtype=bytes).reshape(n, ncols)  # fixed-width bytes: numeric columns convert in C
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
        # typed arrays (8 bytes a value), not lists of Python numbers: the walk of a 950k-frame file stays small
        offsets, natoms, energies, force_sq = array("q"), array("q"), array("d"), array("d")
        skipped: dict[str, int] = {}
        one = np.ones(1, dtype=bool)
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
                    self._count(skipped, "charged", 1)
                    ok = False
                if ok:
                    finite = np.isfinite(energy) and np.isfinite(pos).all() and np.isfinite(forces).all()
                    ok = bool(self._check_finite(np.array([finite]), where, skipped, one)[0])
                if ok:
                    ok = bool(self._check_geometry(shortest_distances(pos), where, skipped, one)[0])
                if ok:
                    offsets.append(offset)
                    natoms.append(n)
                    energies.append(energy - self.reference_energy(z))
                    force_sq.append(float((forces ** 2).sum()))
                offset += size
                frame += 1
                if frame % 100_000 == 0:
                    log.info("indexed %d frames of %s", frame, self.path)
        ids = np.arange(len(offsets), dtype=np.int64)
        return {"offset": np.frombuffer(offsets, dtype=np.int64).copy(), "natoms": np.frombuffer(natoms, dtype=np.int64).copy(),
                "molecule": ids, "energy": np.frombuffer(energies, dtype=np.float64).copy(),
                "force_sq": np.frombuffer(force_sq, dtype=np.float64).copy(), "skipped": skipped}

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
