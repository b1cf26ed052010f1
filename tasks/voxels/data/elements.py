"""Element channels of the voxel task: GEOM-drugs' eight elements and symbol ↔ atomic-number lookups."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["GEOM_DRUGS_ELEMENTS", "atomic_number", "symbol", "channel_table"]

#: VoxMol's GEOM-drugs channels, in channel order.
GEOM_DRUGS_ELEMENTS = ("C", "H", "O", "N", "F", "S", "Cl", "Br")

#: the value of :func:`channel_table` for elements that have no channel
NO_CHANNEL = 255


def atomic_number(symbol: str) -> int:
    from rdkit import Chem

    try:
        return int(Chem.GetPeriodicTable().GetAtomicNumber(symbol))
    except RuntimeError:
        raise ValueError(f"unknown element symbol {symbol!r}") from None


def symbol(z: int) -> str:
    from rdkit import Chem

    return str(Chem.GetPeriodicTable().GetElementSymbol(int(z)))


def channel_table(elements: Sequence[str]) -> np.ndarray:
    """``(256,)`` int64: channel index of atomic number Z, :data:`NO_CHANNEL` for elements without one."""
    table = np.full(256, NO_CHANNEL, dtype=np.int64)
    for i, sym in enumerate(elements):
        table[atomic_number(sym)] = i
    return table
