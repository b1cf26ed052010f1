"""The embedded-data generator: reproducible from a seed, readable, and its labels are tblite's GFN2-xTB dipoles in Debye."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from equivrepro.rotations import haar_rotations
from tasks.dipoles import generate as G
from tasks.dipoles.data import DipoleHDF5Dataset

TINY = dict(n_molecules=2, n_conformers=2, max_heavy_atoms=10)


def _contents(path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}
        for name, g in f.items():
            for key, ds in g.items():
                out[f"{name}/{key}"] = ds[()]
    return out


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    paths = {tag: d / f"{tag}.h5" for tag in "abc"}
    for tag, seed in (("a", 3), ("b", 3), ("c", 4)):
        G.generate(paths[tag], G.GeneratorConfig(seed=seed, **TINY))
    return paths


def test_same_seed_gives_identical_files_and_another_seed_other_molecules(tiny_files):
    a, b, c = (_contents(tiny_files[t]) for t in "abc")
    assert a.keys() == b.keys() and a["attrs"] == b["attrs"]
    for key in a:
        if key != "attrs":
            assert np.array_equal(a[key], b[key]), key
    assert a["attrs"]["n_molecules"] == 2 and a["attrs"]["n_conformers"] == 4 and a["attrs"]["count_xtb_failed"] == 0
    smiles = lambda d: sorted(v[0] for k, v in d.items() if k.endswith("/smiles"))  # noqa: E731
    assert smiles(a) != smiles(c)


def test_molecules_are_neutral_closed_shell_and_the_file_reads_back(tiny_files):
    from rdkit import Chem

    ds = DipoleHDF5Dataset(tiny_files["a"])
    assert len(ds) == 4 and "Debye" in ds.attrs["units"] and "GFN2-xTB" in ds.attrs["level_of_theory"]
    with h5py.File(tiny_files["a"], "r") as f:
        for g in f.values():
            mol = Chem.MolFromSmiles(g["smiles"][0].decode())
            assert Chem.GetFormalCharge(mol) == 0 and not any(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
            assert int(g["atomic_numbers"][()].sum()) % 2 == 0  # an even electron count at charge 0
            assert Chem.AddHs(mol).GetNumAtoms() == g["atomic_numbers"].shape[0]
    norms = ds.dipoles.norm(dim=1)
    assert (norms > 0.0).all() and (norms < 20.0).all()  # Debye: drug-like molecules


def test_stored_dipole_is_a_direct_tblite_call_converted_to_debye(tiny_files):
    from tblite.interface import Calculator

    with h5py.File(tiny_files["a"], "r") as f:
        g = f[sorted(f.keys())[1]]
        z, x, stored = g["atomic_numbers"][()].astype(np.int64), g["positions"][1], g["dipole"][1]
    calc = Calculator("GFN2-xTB", z, x / 0.529177210903, charge=0.0, uhf=0)
    calc.set("verbosity", 0)
    direct = np.asarray(calc.singlepoint().get("dipole"))  # e·bohr
    np.testing.assert_allclose(stored, direct * 2.541746, rtol=1e-6, atol=1e-8)


def test_the_label_is_a_vector_it_rotates_with_the_molecule(tiny_files):
    with h5py.File(tiny_files["a"], "r") as f:
        g = f[sorted(f.keys())[0]]
        z, x, stored = g["atomic_numbers"][()], g["positions"][0], g["dipole"][0]
    r = haar_rotations(1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[0].numpy()
    shifted = x @ r.T + np.array([1.0, -2.0, 0.5])  # a neutral molecule's dipole does not depend on the origin
    np.testing.assert_allclose(G.xtb_dipole(z, shifted), stored @ r.T, atol=1e-5)


def test_make_data_and_generation_on_first_use_build_the_same_file():
    from dataclasses import asdict
    from pathlib import Path

    from equivrepro import catalog
    from equivrepro.train.app import compose_config

    cfg = compose_config(["task=dipoles", "logger=none"])
    (entry,) = catalog.card("dipoles").embedded_data
    assert entry.module == "tasks.dipoles.generate" and Path(cfg.data.embedded_path).name == entry.path
    assert cfg.data.path == cfg.data.embedded_path
    # `make data` runs the CLI, which fills every setting it is not given from GeneratorConfig's defaults
    defaults = asdict(G.GeneratorConfig(seed=int(entry.args[entry.args.index("--seed") + 1])))
    assert {k: defaults[k] for k in cfg.data.generate} == dict(cfg.data.generate)
