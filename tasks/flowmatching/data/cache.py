"""The parse cache: one ``.pt`` per structure file (the parse of all its chains, before any filter, so
changing a filter never re-parses), written atomically and keyed by the file's absolute path, size, mtime
and the parser version; a changed file is re-parsed, a broken entry is re-parsed and never trusted.
``directory=None`` parses every time.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from equivrepro.atomic import atomic_write
from equivrepro.data import DataError
from tasks.flowmatching.data.structures import PARSER_VERSION, parse_structure_file

log = logging.getLogger("tasks.flowmatching.data")

__all__ = ["ParseCache", "parse_or_error"]


class ParseCache:
    """One ``.pt`` per structure file, keyed by absolute path + size + mtime + parser version."""

    def __init__(self, directory: Path | None):
        self.directory = Path(directory) if directory is not None else None

    def _path(self, source: Path) -> Path:
        digest = hashlib.sha1(str(source.resolve()).encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.pt"

    @staticmethod
    def _stamp(source: Path) -> dict[str, Any]:
        st = source.stat()
        return {"source": str(source.resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "version": PARSER_VERSION}

    def get(self, source: Path) -> dict[str, Any] | None:
        if self.directory is None:
            return None
        path = self._path(source)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a broken cache entry is re-parsed, never trusted
            log.warning("ignoring unreadable cache entry %s (%s); re-parsing %s", path, exc, source)
            return None
        if entry.get("stamp") != self._stamp(source):
            return None
        return entry

    def put(self, source: Path, parsed: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
        entry = {"stamp": self._stamp(source), "error": error, "parsed": _to_torch(parsed) if parsed is not None else None}
        if self.directory is not None:
            atomic_write(self._path(source), lambda f: torch.save(entry, f))
        return entry


def _to_torch(parsed: dict[str, Any]) -> dict[str, Any]:
    chains = []
    for c in parsed["chains"]:
        c = dict(c)
        c["resseq"] = torch.from_numpy(np.ascontiguousarray(c["resseq"]))
        c["ca_angstrom"] = torch.from_numpy(np.ascontiguousarray(c["ca_angstrom"]))
        chains.append(c)
    return {**parsed, "chains": chains}


def parse_or_error(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return parse_structure_file(path), None
    except DataError as exc:
        return None, str(exc)
