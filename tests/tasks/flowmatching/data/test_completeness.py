"""Files cut at a line end: caught where the file says how much there should be (MASTER, END, SEQRES,
``_entity_poly_seq``, the final ``#``), and left alone where it says nothing."""

from __future__ import annotations

import gzip

import pytest

from equivrepro.data import DataError
from tasks.flowmatching.data import parse_structure_file, read_structure


def _lines(data_dir, name: str) -> list[str]:
    return gzip.open(data_dir / "mmcif" / name, "rt").read().splitlines()


def _cut_inside_chain(lines: list[str], chain: str, keep: int) -> list[str]:
    """The lines up to the ``keep``-th ATOM record of ``chain`` (a cut at a line end inside that chain)."""
    seen = 0
    for i, line in enumerate(lines):
        if line.startswith("ATOM") and line[21] == chain:
            seen += 1
            if seen == keep:
                return lines[: i + 1]
    raise AssertionError("chain too short")


def test_a_wwpdb_entry_cut_at_a_line_end_is_truncated(tmp_path, data_dir):
    lines = _lines(data_dir, "1BD2.pdb.gz")
    assert lines[0].startswith("HEADER") and any(ln.startswith("MASTER") for ln in lines)
    complete = tmp_path / "1bd2.pdb"
    complete.write_text("\n".join(lines) + "\n")
    assert len(read_structure(complete)[0]) >= 5
    cut = tmp_path / "1bd2_cut.pdb"
    cut.write_text("\n".join(_cut_inside_chain(lines, "E", 300)) + "\n")  # chain E (244 residues) cut after ≈40 residues
    with pytest.raises(DataError) as err:
        read_structure(cut)
    assert str(cut) in str(err.value) and "truncated" in str(err.value) and "END record" in str(err.value)


def test_seqres_tells_a_short_last_chain_when_the_end_record_is_missing(tmp_path, data_dir):
    lines = [ln for ln in _lines(data_dir, "1BD2.pdb.gz") if not ln.startswith(("HEADER", "MASTER", "END"))]
    cut = tmp_path / "seqres_cut.pdb"
    cut.write_text("\n".join(_cut_inside_chain(lines, "E", 300)) + "\n")
    message = r"seqres_cut\.pdb: the file looks truncated \(no END record, and chain E stops at residue \d+ of the 244"
    with pytest.raises(DataError, match=message):
        read_structure(cut)
    whole = tmp_path / "seqres_whole.pdb"  # the same file, complete but without HEADER / MASTER / END
    whole.write_text("\n".join(lines) + "\n")
    assert {c["chain"] for c in parse_structure_file(whole)["chains"]} >= {"A", "B", "D", "E"}


def test_master_record_counts(tmp_path, data_dir):
    lines = _lines(data_dir, "1BD2.pdb.gz")
    dropped = [ln for i, ln in enumerate(lines) if not (ln.startswith("ATOM") and i % 50 == 0)]  # lines lost in the middle
    path = tmp_path / "holes.pdb"
    path.write_text("\n".join(dropped) + "\n")
    with pytest.raises(DataError, match=r"holes\.pdb: the file looks truncated \(its MASTER record lists 6378 coordinate records"):
        read_structure(path)


def test_mmcif_cut_at_a_line_end_misses_its_final_loop_terminator(tmp_path, data_dir):
    lines = _lines(data_dir, "1BD2.cif.gz")
    atoms = [i for i, ln in enumerate(lines) if ln.startswith("ATOM")]
    cut = tmp_path / "1bd2_cut.cif"
    cut.write_text("\n".join(lines[: atoms[len(atoms) // 2] + 1]) + "\n")
    message = r"1bd2_cut\.cif: the file looks truncated \(an archive-layout mmCIF file closes its final loop with '#'"
    with pytest.raises(DataError, match=message):
        read_structure(cut)
    # without the '#' layout, _entity_poly_seq still tells that the last chain stops early
    flat = [ln for ln in lines[: atoms[len(atoms) // 2] + 1] if ln.strip() != "#"]
    no_hash = tmp_path / "nohash_cut.cif"
    no_hash.write_text("\n".join(flat) + "\n")
    message = r"nohash_cut\.cif: .*no final '#', and chain \w stops at residue \d+ of the \d+ in _entity_poly_seq"
    with pytest.raises(DataError, match=message):
        read_structure(no_hash)


def test_files_that_state_nothing_about_their_extent_are_accepted_when_cut(tmp_path, ahs_lines):
    """What cannot be detected: MD-style files without HEADER / MASTER / SEQRES cut at a line end."""
    cut = tmp_path / "md_cut.pdb"
    cut.write_text("\n".join(ahs_lines[: len(ahs_lines) // 2]) + "\n")
    (chain,) = parse_structure_file(cut)["chains"]
    assert 0 < len(chain["sequence"]) < 126
