"""Per-element reference energies subtracted from total energies: ``E = E_total − Σ_atoms e_ref(Z)`` (eV)."""

from __future__ import annotations

from collections.abc import Mapping

from equivrepro.data import DataConfigError, DataError
from tasks.forcefield.units import SPICE_ISOLATED_ATOM_ENERGIES_EV

__all__ = ["resolve_references", "REFERENCE_CHOICES"]

REFERENCE_CHOICES = ("auto", "file", "spice_isolated_atoms", "none")


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
            raise DataError("data.element_references='file' but the data file stores no element_reference_Z/_energy_eV attributes")
        return dict(file_refs), "the file's own least-squares element references (attrs element_reference_*)"
    if spec == "spice_isolated_atoms":
        return dict(SPICE_ISOLATED_ATOM_ENERGIES_EV), "SPICE isolated-atom energies, ωB97M-D3(BJ)/def2-TZVPPD (MACE-OFF / EScAIP)"
    if spec == "none":
        return {}, "none (total energies)"
    raise DataConfigError(f"data.element_references must be one of {', '.join(REFERENCE_CHOICES)} or a {{Z: eV}} mapping, got {spec!r}")
