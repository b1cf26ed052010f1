"""Force-field data: streaming readers for SPICE HDF5 and MACE-OFF extended XYZ, and the data module.

Every item is ``{"pos": (N, 3) Å, "z": (N,) long, "energy": () eV, "forces": (N, 3) eV/Å}`` (float32)
where ``energy = E_total − Σ_atoms e_ref(Z)`` (per-element reference energies, :mod:`.references`).
Batches are padded by :func:`equivrepro.data.pad_collate` and carry ``mask (B, N)``.

One concept per module:

* :mod:`.references` — per-element reference energies;
* :mod:`.index` — the validated one-pass index both readers keep (cached next to the file), the record
  checks (elements, finite values, physical plausibility) and the per-record energies/forces that give the
  statistics;
* :mod:`.spice` — the SPICE HDF5 reader (bohr / hartree → Å / eV);
* :mod:`.extxyz` — the extended-XYZ reader (MACE-OFF);
* :mod:`.formats` — which reader a file needs (``data.format=auto``: HDF5 signature or XYZ text);
* :mod:`.module` — :class:`ForceFieldDataModule` (splits, subsets, ``statistics()``, embedded data).

**Streaming.** Neither reader loads a file into memory: at setup each walks it once, keeping only an
index; ``__getitem__`` reads one conformer (HDF5 handles are opened lazily, once per worker process) or
seeks to one frame.

**Bad input** raises :class:`~equivrepro.data.DataError` naming the file and the group/frame; bad
settings raise :class:`~equivrepro.data.DataConfigError` naming the key (``data.<key>``) at construction.
"""

from tasks.forcefield.data.extxyz import ExtXYZDataset, parse_extxyz_header
from tasks.forcefield.data.formats import detect_format, resolve_format
from tasks.forcefield.data.index import IndexedReader
from tasks.forcefield.data.module import ForceFieldDataModule
from tasks.forcefield.data.references import resolve_references
from tasks.forcefield.data.spice import SpiceHDF5Dataset

__all__ = ["SpiceHDF5Dataset", "ExtXYZDataset", "ForceFieldDataModule", "IndexedReader", "resolve_references", "parse_extxyz_header",
           "detect_format", "resolve_format"]
