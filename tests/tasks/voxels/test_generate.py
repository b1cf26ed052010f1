"""Embedded-data generator: real molecules, MiDi pickle / SDF / store outputs, counts, reproducibility."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
from rdkit import Chem

from tasks.voxels.data import VoxelStore
from tasks.voxels.generate import GeneratorConfig, generate


def test_generates_a_midi_pickle_and_its_store(tmp_path):
    cfg = GeneratorConfig(seed=3, n_molecules=6, n_conformers=3)
    summary = generate(tmp_path / "emb.h5", cfg)
    assert summary["molecules"] == 6 and summary["conformers"] <= 18
    assert summary["candidates_tried"] == 6 + sum(summary["failures"].values())
    with open(tmp_path / "emb.pkl", "rb") as fh:
        data = pickle.load(fh)
    assert len(data) == 6
    for smiles, confs in data:
        assert Chem.MolFromSmiles(smiles) is not None and 1 <= len(confs) <= 3
        for m in confs:
            assert m.GetNumConformers() == 1
            assert any(a.GetSymbol() == "H" for a in m.GetAtoms())  # explicit hydrogens
            x = m.GetConformer().GetPositions()
            assert np.linalg.norm(x - x.mean(0), axis=1).max() <= cfg.max_radius + 1e-9
            assert 4 <= m.GetNumHeavyAtoms() <= 9
    store = VoxelStore(tmp_path / "emb.h5")
    assert len(store) + summary["store"]["dropped_conformers"] == summary["conformers"]
    assert store.attrs["generator"]["seed"] == 3 and store.attrs["counts"]["molecules_read"] == 6
    assert float(store.radius.max()) <= cfg.max_radius + 1e-5


def test_same_seed_same_data_and_sdf_output(tmp_path):
    cfg = GeneratorConfig(seed=1, n_molecules=4, n_conformers=2)
    generate(tmp_path / "a.h5", cfg)
    generate(tmp_path / "b.h5", cfg)
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        for key in ("coords", "elements", "offsets", "molecule_id"):
            assert np.array_equal(fa[key][...], fb[key][...]), key
    summary = generate(tmp_path / "c.sdf", cfg)
    records = [m for m in Chem.SDMolSupplier(str(tmp_path / "c.sdf"), removeHs=False)]
    assert len(records) == summary["conformers"] and all(m.HasProp("smiles") for m in records)
    other = generate(tmp_path / "d.pkl", GeneratorConfig(seed=2, n_molecules=4, n_conformers=2))
    with open(tmp_path / "d.pkl", "rb") as fh:
        assert len(pickle.load(fh)) == other["molecules"] == 4


def test_embedded_file_generates_its_own_path(tmp_path):
    from tasks.voxels.generate import EmbeddedFile, embedded_file

    target = embedded_file(str(tmp_path / "geom_embedded.h5"), seed=2, n_molecules=2, n_conformers=1)
    assert isinstance(target, EmbeddedFile) and target.config == GeneratorConfig(seed=2, n_molecules=2, n_conformers=1)
    summary = target()
    assert summary["molecules"] == 2 and len(VoxelStore(target.path)) >= 1


def test_the_data_package_does_not_import_the_generator():
    """The import circle is broken: generate → data.convert, never data → generate."""
    import subprocess
    import sys

    code = "import sys, tasks.voxels.data; print('tasks.voxels.generate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
