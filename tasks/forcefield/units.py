"""Unit conversions (CODATA 2018) and the isolated-atom reference energies of SPICE / MACE-OFF.

SPICE HDF5 stores positions in bohr, energies in hartree and gradients in hartree/bohr; everything the
force-field task hands to a model is in Å, eV and eV/Å.
"""

from __future__ import annotations

#: 1 hartree in eV.
HARTREE_TO_EV = 27.211386245988
#: 1 bohr in Å.
BOHR_TO_ANGSTROM = 0.529177210903
#: 1 hartree/bohr in eV/Å (≈ 51.422).
HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM = HARTREE_TO_EV / BOHR_TO_ANGSTROM
#: 1 kcal/mol in hartree (RDKit's MMFF94 reports kcal/mol and kcal/mol/Å).
KCAL_PER_MOL_TO_HARTREE = 1.0 / 627.5094740631

#: Isolated-atom energies (eV) at SPICE's level of theory, ωB97M-D3(BJ)/def2-TZVPPD, as used by the
#: MACE-OFF23 split and EScAIP's LMDB conversion: E_target = E_total − Σ_atoms E_atom(Z).
SPICE_ISOLATED_ATOM_ENERGIES_EV: dict[int, float] = {
    1: -13.571964772646918,
    6: -1030.5671648271828,
    7: -1486.3750255780376,
    8: -2043.933693071156,
    9: -2715.318528602957,
    15: -9287.407133426237,
    16: -10834.4844708122,
    17: -12522.649269035726,
    35: -70045.28385080204,
    53: -8102.524593409054,
}

#: The ten elements of SPICE's neutral MACE-OFF subset (H C N O F P S Cl Br I).
SPICE_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)

_SYMBOLS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf "
    "Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
#: Element symbol → atomic number (case-sensitive, as written in extended-XYZ files).
SYMBOL_TO_Z: dict[str, int] = {s: i for i, s in enumerate(_SYMBOLS) if i > 0}
#: Atomic number → element symbol.
Z_TO_SYMBOL: dict[int, str] = {i: s for s, i in SYMBOL_TO_Z.items()}
