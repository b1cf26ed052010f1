"""SDF files: grouping conformers by name, bad and flat records named."""

from __future__ import annotations

import pytest

from equivrepro.data import DataError
from tasks.voxels.data import VoxelStore, convert_to_store
from tests.tasks.voxels.data.helpers import KEPT, check_store
from tests.tasks.voxels.molecules import conformer_mols, standard_records, write_sdf


def test_sdf_round_trip_groups_conformers_by_name(tmp_path):
    records = standard_records()
    src = write_sdf(tmp_path / "mols.sdf", records)
    summary = convert_to_store(src, tmp_path / "sdf.h5")
    assert summary["dropped_by_element"] == {"I": 1, "P": 1}
    assert summary["skipped"] == {"extra_conformers": sum(max(0, n - 5) for _, n in KEPT)}  # beyond the first 5
    check_store(VoxelStore(tmp_path / "sdf.h5"), records, atol=1e-4)  # SDF keeps 4 decimals
    # one molecule per record
    summary = convert_to_store(src, tmp_path / "rec.h5", sdf_group_by="record")
    assert summary["molecules"] == summary["conformers"] == sum(n for _, n in KEPT)


def test_sdf_names_that_do_not_identify_molecules_are_an_error(tmp_path):
    records = [("X", conformer_mols("CCO", 1, 0)), ("X", conformer_mols("CCN", 1, 1))]
    w = write_sdf(tmp_path / "clash.sdf", [(smi, m) for smi, m in records])
    with pytest.raises(DataError, match="record 1.*different atoms"):
        convert_to_store(w, tmp_path / "x.h5")


def test_unparseable_sdf_record_is_named(tmp_path):
    sdf = tmp_path / "mols.sdf"
    write_sdf(sdf, [("CCO", conformer_mols("CCO", 2, 0))])
    text = sdf.read_text().split("$$$$\n")
    sdf.write_text(text[0] + "$$$$\n" + "garbage\n\n\n  3  2  0  0  0  0  0  0  0  0999 V2000\nnonsense\nM  END\n$$$$\n")
    with pytest.raises(DataError, match="SDF record 1"):
        convert_to_store(sdf, tmp_path / "s.h5")


def _flatten(molblock_text: str) -> str:
    """Every z coordinate of every atom line of an SDF text set to 0.0000 (a 2-D depiction)."""
    out = []
    for line in molblock_text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[3].isalpha() and all(p.replace(".", "").lstrip("-").isdigit() for p in parts[:3]):
            line = line[:20] + f"{0.0:10.4f}" + line[30:]  # V2000 atom line: x, y, z in 10-column fields
        out.append(line)
    return "\n".join(out) + "\n"


def test_a_flat_sdf_is_rejected_naming_the_record(tmp_path):
    sdf = write_sdf(tmp_path / "flat.sdf", [("CCO", conformer_mols("CCO", 1, 0)), ("CCN", conformer_mols("CCN", 1, 1))])
    records = sdf.read_text().split("$$$$\n")
    sdf.write_text(records[0] + "$$$$\n" + _flatten(records[1]) + "$$$$\n")
    with pytest.raises(DataError, match=r"flat\.sdf: SDF record 1 \('CCN'\): flat coordinates .*every z = 0"):
        convert_to_store(sdf, tmp_path / "f.h5")
    summary = convert_to_store(sdf, tmp_path / "fs.h5", bad_records="skip")
    assert summary["skipped"] == {"bad_record": 1} and summary["conformers"] == 1
