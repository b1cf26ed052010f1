"""The embedded-data generator: reproducible from a seed, readable by the SPICE reader, consistent labels."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tasks.forcefield import generate as G
from tasks.forcefield.data import SpiceHDF5Dataset
from tasks.forcefield.units import BOHR_TO_ANGSTROM

TINY = dict(n_molecules=2, n_conformers=2, max_heavy_atoms=12)


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
    paths = {}
    for tag, seed, workers in (("a", 3, 1), ("b", 3, 2), ("c", 4, 1)):
        paths[tag] = d / f"{tag}.h5"
        G.generate(paths[tag], G.GeneratorConfig(seed=seed, workers=workers, **TINY))
    return paths


def test_same_seed_gives_identical_files_with_any_worker_count_and_another_seed_does_not(tiny_files):
    a, b, c = (_contents(tiny_files[t]) for t in "abc")
    assert a.keys() == b.keys()
    for key in a:
        if key == "attrs":
            assert a[key] == b[key]
        else:
            assert np.array_equal(a[key], b[key]), key
    assert a["attrs"]["n_molecules"] == 2 and a["attrs"]["n_conformers"] == 4
    assert "count_embed_failed" in a["attrs"]  # failures are reported even when there are none
    smiles = lambda d: sorted(v[0] for k, v in d.items() if k.endswith("/smiles"))  # noqa: E731
    assert smiles(a) != smiles(c)


def test_generated_file_is_readable_spice_data_with_nonzero_forces(tiny_files):
    ds = SpiceHDF5Dataset(tiny_files["a"], cache_index=False)
    assert len(ds) == 4 and "least-squares" in ds.references_source
    with h5py.File(tiny_files["a"], "r") as f:
        assert [m.decode() for m in f[ds.group_names[0]]["label_method"][()]] == ["GFN2-xTB", "GFN2-xTB"]
        assert "bohr" in f.attrs["units"] and "hartree" in f.attrs["units"]
    for i in range(len(ds)):
        item = ds[i]
        rms = float(item["forces"].pow(2).mean().sqrt())
        assert 0.1 < rms < 20.0  # eV/Å: off-equilibrium but physical
        assert abs(float(item["energy"])) < 50.0  # eV after the file's linear element references


def test_tblite_gradient_matches_finite_differences_of_its_energy(tiny_files):
    with h5py.File(tiny_files["a"], "r") as f:
        g = f[sorted(f.keys())[0]]
        z = g["atomic_numbers"][()].astype(np.int64)
        x = g["conformations"][0].astype(np.float64)
        grad = g["dft_total_gradient"][0].astype(np.float64)
    energy, fresh = G._gfn2(z, x)
    np.testing.assert_allclose(fresh, grad, atol=1e-6)  # stored labels are tblite's (float32 storage)
    h = 1e-3  # bohr
    for atom, axis in ((0, 0), (len(z) - 1, 2)):
        xp, xm = x.copy(), x.copy()
        xp[atom, axis] += h
        xm[atom, axis] -= h
        fd = (G._gfn2(z, xp)[0] - G._gfn2(z, xm)[0]) / (2 * h)
        assert abs(fd - grad[atom, axis]) < 2e-5, (atom, axis, fd, grad[atom, axis])


def test_mmff_fallback_is_in_hartree_and_hartree_per_bohr():
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    props = AllChem.MMFFGetMoleculeProperties(mol)
    x = mol.GetConformer().GetPositions() + np.random.default_rng(0).normal(0, 0.05, (mol.GetNumAtoms(), 3))
    _, grad = G._mmff(mol, props, x)
    h = 1e-4  # Å
    xp, xm = x.copy(), x.copy()
    xp[1, 1] += h
    xm[1, 1] -= h
    fd_per_bohr = (G._mmff(mol, props, xp)[0] - G._mmff(mol, props, xm)[0]) / (2 * h / BOHR_TO_ANGSTROM)
    assert abs(grad[1, 1]) > 1e-4 and abs(fd_per_bohr - grad[1, 1]) < 1e-6


def test_embedded_file_carries_the_default_path_and_generator_settings(tmp_path):
    target = G.embedded_file(str(tmp_path / "spice_embedded.h5"), seed=5, n_molecules=3)
    assert isinstance(target, G.EmbeddedFile) and target.path == str(tmp_path / "spice_embedded.h5")
    assert target.config == G.GeneratorConfig(seed=5, n_molecules=3) and not (tmp_path / "spice_embedded.h5").exists()
