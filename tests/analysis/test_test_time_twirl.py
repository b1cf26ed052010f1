"""Test-time twirling: MSE(K) = L_mean + L_equiv/K, and the twirled model's own equivariance error."""

from __future__ import annotations

import numpy as np
import torch

from equivrepro.analysis import twirl_mse_table, twirled_equivariance
from equivrepro.plots.analysis import twirl_cost
from equivrepro.rotations import haar_rotations, icosahedral_group
from equivrepro.testing.pointcloud import LinearPointModel, NonEquivariantMLP
from tests.analysis.toys import setup


def _linear(seed: int = 0) -> LinearPointModel:
    g = torch.Generator().manual_seed(seed)
    return LinearPointModel(2 * torch.eye(3, dtype=torch.float64) + 0.7 * torch.randn(3, 3, generator=g, dtype=torch.float64))


def test_mse_of_k_follows_mean_plus_equiv_over_k(tmp_path):
    task, batch, _ = setup(b=48, n=5)
    model = _linear()  # pct ≈ 1: the K-dependence dominates the table
    df = twirl_mse_table(
        model, task, batch, ks=(1, 2, 4, 8, 16), n_draws=8, reference_k=128, generator=torch.Generator().manual_seed(0), z=3.0
    )
    assert list(df["k"]) == [1, 2, 4, 8, 16]
    assert df["within_ci"].all(), df
    assert (df["rel_deviation"].abs() < 0.1).all(), df
    a = df.attrs
    assert a["pct"] > 0.99 and a["reference_k"] == 128 and a["quadratic"]
    assert np.allclose(df["predicted"], a["l_mean"] + a["l_equiv"] / df["k"], rtol=1e-12)
    assert df["mse"].iloc[-1] < df["mse"].iloc[0] / 8  # 1 − 1/K of the error removed
    assert (df["time_per_sample_s"] > 0).all() and df["relative_cost"].iloc[0] == 1.0
    data = twirl_cost(df, tmp_path / "twirl")
    assert len(data) == 5 and (tmp_path / "twirl.png").exists() and (tmp_path / "twirl.pdf").exists()


def test_mse_of_k_on_a_nonlinear_model_with_several_batches():
    task, batch, _ = setup(b=32, n=5)
    torch.manual_seed(0)
    model = NonEquivariantMLP(hidden=8).double()
    halves = [{k: v[:16] for k, v in batch.items()}, {k: v[16:] for k, v in batch.items()}]
    df = twirl_mse_table(model, task, halves, ks=(1, 4), n_draws=4, reference_k=64, generator=torch.Generator().manual_seed(1), z=3.0)
    assert df["within_ci"].all() and int(df["n_samples"].iloc[0]) == 32, df


def test_twirled_model_is_nearly_equivariant():
    task, batch, rot = setup(b=24, n=5, k=4)
    # a linear model twirled over the icosahedral group is exactly SO(3)-equivariant (Schur: irreducible 3-D rep)
    out = twirled_equivariance(_linear(), task, batch, rot, icosahedral_group())
    assert out["model"]["pct"] > 0.5 and out["k_twirl"] == 60
    assert abs(out["twirled"]["pct"]) < 1e-20
    # a nonlinear model twirled over K Haar rotations keeps ≈ 1/K of its equivariance error
    torch.manual_seed(0)
    mlp = NonEquivariantMLP(hidden=8).double()
    out = twirled_equivariance(mlp, task, batch, rot, haar_rotations(128, torch.Generator().manual_seed(1), dtype=torch.float64))
    assert out["model"]["pct"] > 1e-3
    assert out["twirled"]["pct"] < 0.05 * out["model"]["pct"]
