"""Is a structure file complete? What the file itself says about how much there should be.

A PDB or mmCIF file cut at a line end parses as a valid, shorter structure; these checks use what the
file states about its own extent and raise :class:`~equivrepro.data.DataError` (naming the file) when it
disagrees with what is there:

* **PDB** — a ``MASTER`` record lists more coordinate (``ATOM``/``HETATM``) or ``TER`` records than the file
  has; a wwPDB entry (it has a ``HEADER`` record, and every archive entry ends with ``END``) that has no
  ``END`` and stops at a coordinate record; a file without ``END``/``ENDMDL`` whose last chain stops before
  the end of its ``SEQRES`` sequence.
* **mmCIF** — a file in the archive layout (an ``_entity_poly_seq`` category and ``#`` lines between
  categories) whose last line is not the ``#`` that closes the final loop; a file with
  ``_entity_poly_seq`` that does not end in ``#`` and whose last chain stops before the end of its
  entity's sequence.
* Either format — the last line has no line end and is a coordinate record / not the final ``#``
  (:func:`tasks.flowmatching.data.structures.read_structure`).

**What cannot be detected.** A file without ``HEADER``, ``MASTER`` and ``SEQRES`` (typical MD output and
hand-made files) or an mmCIF file without ``_entity_poly_seq`` (PyMOL's output, for one) that is cut
exactly at a line end cannot be told from a shorter file; neither can a cut that falls between whole
chains of a file that has no ``HEADER``. A wwPDB entry whose last chain is disordered at its C-terminus is
complete, so the ``SEQRES`` comparison is only made when the file also lacks its end record.
"""

from __future__ import annotations

from pathlib import Path

from equivrepro.data import DataError

__all__ = ["check_complete", "COORD_RECORDS"]

COORD_RECORDS = ("ATOM", "HETATM", "ANISOU")


def _truncated(path: Path, why: str) -> DataError:
    return DataError(f"{path}: the file looks truncated ({why})")


def _chain_stops_early(st, subchain: str | None = None, chain_name: str | None = None) -> tuple[str, int, int] | None:
    """``(chain, last observed position, sequence length)`` when the polymer of the given chain ends before
    the end of its entity's full sequence (SEQRES / ``_entity_poly_seq``), else None."""
    st.setup_entities()
    try:
        st.assign_label_seq_id(False)
    except RuntimeError:
        return None
    model = st[0]
    for chain in model:
        poly = chain.get_polymer()
        if not len(poly):
            continue
        if (subchain is not None and poly.subchain_id() != subchain) or (chain_name is not None and chain.name != chain_name):
            continue
        entity = st.get_entity_of(poly)
        if entity is None or not entity.full_sequence:
            return None
        last = poly[len(poly) - 1].label_seq
        if last is not None and 0 < last < len(entity.full_sequence):
            return chain.name, int(last), len(entity.full_sequence)
        return None
    return None


def _check_pdb(path: Path, text: str, st) -> None:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    records = [ln[:6].rstrip() for ln in lines]
    n_coord = sum(r in ("ATOM", "HETATM") for r in records)
    n_ter = sum(r == "TER" for r in records)
    master = next((ln for ln in lines if ln.startswith("MASTER")), None)
    if master is not None:
        try:
            m_coord, m_ter = int(master[50:55]), int(master[55:60])
        except ValueError:
            m_coord = m_ter = -1
        if m_coord > n_coord:
            raise _truncated(path, f"its MASTER record lists {m_coord} coordinate records, the file has {n_coord}")
        if m_ter > n_ter:
            raise _truncated(path, f"its MASTER record lists {m_ter} TER records, the file has {n_ter}")
    terminated = "END" in records or (records and records[-1] == "ENDMDL")
    if terminated:
        return
    if "HEADER" in records and records and records[-1] in COORD_RECORDS + ("TER",):
        raise _truncated(path, "a wwPDB entry (it has a HEADER record) ends with an END record; this one stops at a coordinate record")
    if "SEQRES" in records:
        last_atom = next((ln for ln in reversed(lines) if ln.startswith("ATOM")), None)
        short = _chain_stops_early(st, chain_name=last_atom[21].strip() or None) if last_atom else None
        if short:
            raise _truncated(path, f"no END record, and chain {short[0]} stops at residue {short[1]} of the {short[2]} its SEQRES lists")


def _check_mmcif(path: Path, text: str, st, block) -> None:
    stripped = text.rstrip()
    last = stripped.rsplit("\n", 1)[-1].strip()
    if last == "#" or "_entity_poly_seq." not in text:
        return
    if any(ln.strip() == "#" for ln in text.splitlines()[:200]):
        raise _truncated(path, f"an archive-layout mmCIF file closes its final loop with '#'; this one ends with {last[:60]!r}")
    asym = block.find_values("_atom_site.label_asym_id")
    short = _chain_stops_early(st, subchain=str(asym[len(asym) - 1])) if len(asym) else None
    if short:
        raise _truncated(path, f"no final '#', and chain {short[0]} stops at residue {short[1]} of the {short[2]} in _entity_poly_seq")


def check_complete(path: Path, text: str, st, block=None) -> None:
    """Raise :class:`~equivrepro.data.DataError` if ``text`` (the file's content, parsed into ``st``; ``block``
    the mmCIF block for mmCIF files) contradicts its own statements of its extent (module docstring)."""
    if block is not None:
        _check_mmcif(path, text, st, block)
    else:
        _check_pdb(path, text, st)
