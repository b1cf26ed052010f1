"""Which reader a force-field file needs: chosen from the file's first bytes when ``data.format=auto``.

* HDF5 (signature ``\\x89HDF\\r\\n\\x1a\\n`` at the start of the file or of a user block) → ``spice_hdf5``;
* text whose first non-blank line is an atom count → ``extxyz``;
* anything else (or an empty file) → :class:`~equivrepro.data.DataError` saying which ``data=`` to use.

An explicit ``data.format`` that contradicts the file is an error naming both.
"""

from __future__ import annotations

from pathlib import Path

from equivrepro.data import DataError, check_choice

__all__ = ["FORMATS", "HDF5_SIGNATURE", "detect_format", "resolve_format"]

FORMATS = ("auto", "spice_hdf5", "extxyz")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CONFIG_FOR = {"spice_hdf5": "data=spice (SPICE HDF5)", "extxyz": "data=maceoff (MACE-OFF extended XYZ)"}
_USE = "use data=spice for a SPICE HDF5 file or data=maceoff for MACE-OFF extended XYZ"


def _has_hdf5_signature(path: Path, size: int) -> bool:
    """HDF5's signature at offset 0, 512, 1024, 2048, … (a user block shifts it by a power of two)."""
    offsets = [0] + [512 << k for k in range(24) if (512 << k) < size]
    with open(path, "rb") as fh:
        for off in offsets:
            fh.seek(off)
            if fh.read(8) == HDF5_SIGNATURE:
                return True
    return False


def detect_format(path: str | Path, key: str = "data.path") -> str:
    """``'spice_hdf5'`` or ``'extxyz'`` from the content of ``path`` (see the module docstring)."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{key}={p} is a directory, not a data file")
    size = p.stat().st_size
    if size == 0:
        raise DataError(f"no records in {p}: the file is empty (0 bytes)")
    if _has_hdf5_signature(p, size):
        return "spice_hdf5"
    with open(p, "rb") as fh:
        head = fh.read(4096)
    for line in head.splitlines():
        if not line.strip():
            continue
        try:
            if int(line) >= 1:
                return "extxyz"
        except ValueError:
            pass
        break
    if not head.strip():
        raise DataError(f"no records in {p}: the file holds only blank lines")
    raise DataError(f"{p} is neither an HDF5 file nor extended XYZ (it starts with {head[:24]!r}): {_USE}")


def resolve_format(path: str | Path, fmt: str, key: str = "data.path") -> str:
    """The reader for ``path``: the detected format for ``fmt='auto'``, else ``fmt`` if the file agrees."""
    check_choice(fmt, "data.format", FORMATS)
    found = detect_format(path, key)
    if fmt != "auto" and fmt != found:
        raise DataError(f"data.format={fmt} but {key}={path} is {'an HDF5 file' if found == 'spice_hdf5' else 'extended-XYZ text'}: "
                        f"set data.format={found} or data.format=auto ({_CONFIG_FOR[found]})")
    return found
