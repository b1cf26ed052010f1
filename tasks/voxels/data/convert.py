"""Conversion of a raw GEOM-drugs-format file (MiDi pickle or SDF) into the voxel store, once.

For every molecule the first ``max_conformers`` (5, as VoxMol) conformers are kept. Atoms are mapped to the
element channels ``elements`` (GEOM-drugs: C, H, O, N, F, S, Cl, Br); a molecule with any other element is
dropped whole, and the drops are counted per element (``dropped_by_element``, and a log line). Hydrogens
are taken as they are in the input (GEOM conformers carry explicit H). Every stored conformer has finite
coordinates and passes the plausibility check of :func:`tasks.voxels.data.conformers.check_coordinates`
(error, or skipped and counted with ``bad_records='skip'``; if more than half of the conformers fail it,
the file's unit is wrong and that is an error either way). The store is written in chunks, so memory stays
bounded for the 300k-molecule train pickle.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from equivrepro.data import MIN_INTERATOMIC_DISTANCE, DataError, check_choice
from tasks.voxels.data.conformers import check_coordinates
from tasks.voxels.data.elements import GEOM_DRUGS_ELEMENTS, NO_CHANNEL, channel_table, symbol
from tasks.voxels.data.midi_pickle import read_midi_pickle
from tasks.voxels.data.sdf import SDF_SUFFIXES, read_sdf
from tasks.voxels.data.store import StoreWriter

log = logging.getLogger("tasks.voxels.data")

__all__ = ["convert_to_store", "PICKLE_SUFFIXES"]

PICKLE_SUFFIXES = (".pickle", ".pkl")


def _source_format(path: str, source_format: str) -> str:
    if source_format != "auto":
        if source_format not in ("midi_pickle", "sdf"):
            raise ValueError(f"source_format must be 'auto', 'midi_pickle' or 'sdf', got {source_format!r}")
        return source_format
    low = path.lower()
    if low.endswith(PICKLE_SUFFIXES):
        return "midi_pickle"
    if low.endswith(SDF_SUFFIXES):
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
    min_distance: float = MIN_INTERATOMIC_DISTANCE,
    extra_attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert a MiDi pickle or an SDF file into a voxel store (see the module docstring); returns the counts.

    Counts: ``molecules`` / ``conformers`` / ``atoms`` kept, ``molecules_read``, ``dropped_molecules``
    (any element outside ``elements``), ``dropped_conformers``, ``dropped_by_element`` (molecules per
    offending element symbol), ``skipped`` (bad records, extra conformers of SDF molecules), ``seconds``.
    """
    check_choice(bad_records, "data.bad_records", ("error", "skip"))
    source = str(source)
    fmt = _source_format(source, source_format)
    table = channel_table(elements)
    ok = lambda x, where: check_coordinates(x, where, bad_records, skipped, min_distance)  # noqa: E731
    skipped: Counter = Counter()
    dropped_by_element: Counter = Counter()
    counts = Counter()
    t0 = time.perf_counter()
    writer = StoreWriter(store, elements)
    try:
        if fmt == "midi_pickle":

            def handle(record: int, smiles: str, confs: list[tuple[np.ndarray, np.ndarray]]) -> None:
                counts["molecules_read"] += 1
                bad = sorted({int(v) for z, _ in confs for v in z if v > 255 or table[v] == NO_CHANNEL})
                if bad:
                    counts["dropped_molecules"] += 1
                    counts["dropped_conformers"] += len(confs)
                    dropped_by_element.update(symbol(v) for v in bad)
                    return
                good = [(j, z, x) for j, (z, x) in enumerate(confs) if ok(x, f"{source}: record {record}, conformer {j}")]
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
                    bad = sorted({int(v) for v in z if v > 255 or table[v] == NO_CHANNEL})
                    if bad:
                        dropped_keys.add(key)
                        counts["dropped_molecules"] += 1
                        counts["dropped_conformers"] += 1
                        dropped_by_element.update(symbol(v) for v in bad)
                        continue
                    first_z[key] = z
                    molecule_of[key] = writer.add_molecule(smiles)
                elif not np.array_equal(first_z[key], z):
                    raise DataError(f"{source}: SDF record {record} is named {key!r} like an earlier record but has different atoms; "
                                    "use sdf_group_by='record' if names do not identify molecules")
                if n_confs[key] >= max_conformers:
                    skipped["extra_conformers"] += 1
                    continue
                if not ok(x, f"{source}: SDF record {record} ({key!r})"):
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
        checked = summary["conformers"] + skipped["implausible_geometry"]
        if skipped["implausible_geometry"] * 2 > checked > 0:
            raise DataError(f"{source}: {skipped['implausible_geometry']} of {checked} conformers have atoms closer than {min_distance} Å, "
                            "which no real molecule has: the file's unit is wrong (coordinates must be in Å)")
        if summary["conformers"] == 0:
            raise DataError(f"{source}: no conformer survived the conversion (elements {tuple(elements)}; counts {summary})")
        settings = {"elements": list(elements), "max_conformers": int(max_conformers), "source_format": fmt,
                    "sdf_group_by": sdf_group_by, "bad_records": bad_records, "min_distance": min_distance}
        attrs = {"source": os.path.abspath(source), "source_format": fmt, "settings": settings, "counts": summary}
        attrs.update(extra_attrs or {})
        writer.close(attrs)
    except BaseException:
        writer.abort()
        raise
    if summary["dropped_molecules"]:
        log.warning("%s: dropped %d molecules (%d conformers) with elements outside %s: %s", source, summary["dropped_molecules"],
                    summary["dropped_conformers"], list(elements), summary["dropped_by_element"])
    log.info("converted %s → %s: %d molecules, %d conformers in %.1f s", source, store, summary["molecules"], summary["conformers"],
             summary["seconds"])
    return summary
