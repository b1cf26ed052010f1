"""Unit conversions of the dipole task (CODATA 2018): tblite reports bohr and e·bohr; the data is in Å and Debye."""

from __future__ import annotations

#: 1 bohr in Å.
BOHR_TO_ANGSTROM = 0.529177210903
#: 1 e·bohr in Debye (1 D = 10⁻²¹/c C·m = 3.33564e-30 C·m; 1 e·bohr = 8.4783536255e-30 C·m).
E_BOHR_TO_DEBYE = 2.541746473
#: 1 e·Å in Debye.
E_ANGSTROM_TO_DEBYE = E_BOHR_TO_DEBYE / BOHR_TO_ANGSTROM

#: The elements the embedded data keeps (drug-like organic chemistry).
DIPOLE_ELEMENTS = (1, 6, 7, 8, 9, 15, 16, 17, 35)

__all__ = ["BOHR_TO_ANGSTROM", "E_BOHR_TO_DEBYE", "E_ANGSTROM_TO_DEBYE", "DIPOLE_ELEMENTS"]
