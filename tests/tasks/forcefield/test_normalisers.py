"""Normalisers come from the data actually used: a user's own file with another energy scale trains at the loss
scale of its own statistics, and explicitly pinned normalisers that disagree with the data are reported."""

from __future__ import annotations

import math

import numpy as np

from equivrepro.runs import RunDir
from equivrepro.train.app import compose_config
from equivrepro.train.loggers import read_results
from equivrepro.train.loop import train
from tests.tasks.forcefield.files import METHANOL_Z, WATER_Z, molecule, write_spice
from tests.tasks.forcefield.models.test_escaip import TINY


def _groups(energy_spread_ha: float):
    """Water / methanol conformers whose energies spread by ``energy_spread_ha`` hartree around their means."""
    out = {}
    for i in range(8):
        z, e = (WATER_Z, -76.4) if i % 2 == 0 else (METHANOL_Z, -115.7)
        g = molecule(z, 3, seed=i, energy_ha=e)
        g["dft_total_energy"] = e + energy_spread_ha * np.random.default_rng(100 + i).normal(size=3)
        out[f"mol{i:02d}"] = g
    return out


def _run(tmp_path, name: str, spread: float, *extra: str):
    path = write_spice(tmp_path / f"{name}.h5", _groups(spread))
    cfg = compose_config(
        [
            "experiment=forcefield_smoke",
            "data=spice",
            f"data.path={path}",
            "data.heldout_size=2",
            "data.neutral_only=false",
            "logger=none",
            f"paths.runs_dir={tmp_path / name}",
            "trainer.max_steps=2",
            "trainer.batch_size=4",
            "trainer.log_every=1",
            "trainer.progress_bar=false",
            "equivariance.every=0",
            "equivariance.log_points=0",
            "equivariance.num_samples=2",
            "equivariance.baseline_samples=4",
            "equivariance.k=3",
            "equivariance.grad_norms=false",
            *[f"model.{k}={v}" for k, v in TINY.items()],
            *extra,
        ]
    )
    out = train(cfg)
    rows = read_results(RunDir(out["run_dir"]).metrics_path)
    return out, {m: v for s, m, v in rows if s == 1}


def test_a_file_with_a_thousandfold_energy_scale_trains_at_its_own_normalisers(tmp_path):
    _, small = _run(tmp_path, "small", 0.01)
    out, large = _run(tmp_path, "large", 10.0)
    status = RunDir(out["run_dir"]).read_status()
    assert status["bound"]["from_data"] == ["energy_mean", "energy_std", "force_std"]
    # the energy term is |ΔE| / σ_E: with σ_E from the data it is O(1) at initialisation for either scale
    assert 0.05 < small["train/loss_energy"] < 20 and 0.05 < large["train/loss_energy"] < 20
    assert math.isclose(status["bound"]["normalisers"]["energy_std"] / 27.211386, 10.0, rel_tol=0.6)  # eV from Ha, ~10 Ha spread


def test_pinned_normalisers_far_from_the_data_are_reported(tmp_path):
    out, large = _run(tmp_path, "pinned", 10.0, "task.energy_mean=0.06", "task.energy_std=1.3", "task.force_std=2.47")
    status = RunDir(out["run_dir"]).read_status()
    assert set(status["bound"]["mismatch"]) >= {"energy_std"} and status["bound"]["from_data"] == []
    assert status["bound"]["mismatch"]["energy_std"]["config"] == 1.3
    assert large["train/loss_energy"] > 20  # what the mismatch costs: the energy term dwarfs the force term
