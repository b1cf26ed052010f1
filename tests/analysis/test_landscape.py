"""Loss landscapes: the centre is the checkpoint's loss, quadratic losses give R² = 1 with curvature λ/2,
files round-trip, the figures are written, and the redrawn landscape shows the evaluation noise."""

from __future__ import annotations

import pytest
import torch

from equivrepro.analysis import (
    Landscape,
    SubsetLosses,
    grid_coordinates,
    hessian_spectrum,
    loss_landscape,
    quadratic_fit,
    redrawn_landscape,
    smoothness,
)
from equivrepro.metrics import twirl_decomposition
from equivrepro.plots.analysis import landscape_frozen_redrawn, landscape_surfaces
from equivrepro.rotations import haar_rotations
from equivrepro.testing.pointcloud import LinearPointModel, NonEquivariantMLP, PointCloudTask, make_pointcloud_batch
from tests.analysis.toys import setup


def _linear():
    task, batch, rot = setup(b=16)
    model = LinearPointModel(torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    return model, task, batch, rot


def test_grid_is_the_papers_linspace():
    c = grid_coordinates(20, 0.00164)
    assert torch.allclose(c, torch.linspace(-0.0164, 0.0164, 20, dtype=torch.float64), rtol=0, atol=1e-15)
    assert float(grid_coordinates(7, 0.05)[3]) == 0.0


def test_centre_equals_the_checkpoint_losses_exactly():
    task, batch, rot = setup(b=6)
    torch.manual_seed(0)
    model = NonEquivariantMLP(hidden=6).double()
    losses = SubsetLosses(model, task, batch, rot, "net.4")
    land = loss_landscape(losses, n=5, step=0.01)
    with torch.no_grad():
        dec = twirl_decomposition(model.eval(), task, batch, rot)["mse"]
    assert land.centre["mean"] == float(dec.mean_unbiased.mean())
    assert land.centre["equiv"] == float(dec.equiv_unbiased.mean())
    assert land.centre["total"] == float(dec.total.mean())
    # for odd n the middle grid point is θ0 itself, for both direction sources and all losses
    for src in ("mean", "equiv"):
        for loss in ("mean", "equiv", "total"):
            assert float(land.surfaces[src][loss][2, 2]) == land.centre[loss]


def test_quadratic_losses_fit_with_r2_one_and_curvature_half_the_eigenvalue(tmp_path):
    model, task, batch, rot = _linear()
    losses = SubsetLosses(model, task, batch, rot, "a")
    spectra = {w: hessian_spectrum(losses, w) for w in ("mean", "equiv")}
    land = loss_landscape(losses, n=9, step=0.05, spectra=spectra)
    for loss in ("mean", "equiv"):
        st = land.stats[loss][loss]
        assert st["r2"] > 1 - 1e-10
        ext = spectra[loss].extreme_vectors()
        # L(θ0 + x d_min + y d_max) = L0 + g·(…) + ½λ⁺min x² + ½λmax y²: exact for a quadratic loss
        assert st["c_xx"] == pytest.approx(ext["lambda_min_pos"] / 2, rel=1e-6)
        assert st["c_yy"] == pytest.approx(ext["lambda_max"] / 2, rel=1e-8)
        assert abs(st["c_xy"]) < 1e-8 * ext["lambda_max"]
        assert land.eigenvalues[loss]["max"] == ext["lambda_max"]
    s = land.summary()
    assert s["equiv"]["r2"] > 1 - 1e-10 and s["equiv"]["centre"] == land.centre["equiv"]
    # the L_equiv bowl is flat along nothing here (well conditioned), a smooth surface
    assert land.stats["equiv"]["equiv"]["smoothness"] < 0.2

    path = land.save(tmp_path / "landscape.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["landscape.pt"]  # no temp file left behind
    back = Landscape.load(path)
    assert torch.equal(back.own("equiv"), land.own("equiv")) and back.config["n"] == 9
    assert back.config["hessian"]["equiv"]["method"] == "exact"

    data = landscape_surfaces(land, tmp_path / "fig" / "landscape")
    for ext in ("png", "pdf", "csv"):
        assert (tmp_path / "fig" / f"landscape.{ext}").stat().st_size > 0
    assert len(data) == 2 * 81


def test_fit_and_smoothness_tell_a_bowl_from_noise():
    x = torch.linspace(-1, 1, 20, dtype=torch.float64)
    bowl = 3 * x[:, None] ** 2 + 0.5 * x[None, :] ** 2 + 0.1 * x[:, None] * x[None, :] + 2
    fit = quadratic_fit(x, x, bowl)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12) and fit["c_xx"] == pytest.approx(3.0) and fit["c_xy"] == pytest.approx(0.1)
    noise = torch.randn(20, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert quadratic_fit(x, x, noise)["r2"] < 0.2
    assert smoothness(bowl) < 0.05 and smoothness(noise) > 0.2  # white noise ≈ 0.32 (paper: L_mean 0.33)


def test_redrawn_landscape_shows_the_evaluation_noise_the_frozen_one_hides(tmp_path):
    """A per-point MLP on 4 point clouds: the frozen surface is a smooth bowl at this scale (R² ≈ 1), but with new
    samples and rotations at every point the loss an optimiser sees is dominated by the sampling noise."""

    torch.manual_seed(0)
    model = NonEquivariantMLP(hidden=6).double()
    task = PointCloudTask()

    def draw(i: int) -> SubsetLosses:
        g = torch.Generator().manual_seed(100 + i)
        batch = make_pointcloud_batch(4, 5, g)
        return SubsetLosses(
            model, task, batch, haar_rotations(4 * 3, g, dtype=torch.float64).reshape(4, 3, 3, 3), "net.4", estimator="plugin"
        )

    frozen_losses = draw(-100)
    spectra = {w: hessian_spectrum(frozen_losses, w) for w in ("mean", "equiv")}
    frozen = loss_landscape(frozen_losses, n=9, step=0.01, spectra=spectra)
    redrawn = redrawn_landscape(draw, frozen, n=7, centre_draws=6)
    assert redrawn.config["redrawn"] and not frozen.config["redrawn"] and redrawn.config["draws"] == 6 + 2 * 49
    assert torch.allclose(redrawn.coords[[0, -1]], frozen.coords[[0, -1]])  # the same span
    for loss in ("mean", "equiv"):
        f, r = frozen.stats[loss][loss], redrawn.stats[loss][loss]
        assert f["r2"] > 0.99 and r["r2"] < f["r2"] - 0.3, (loss, f["r2"], r["r2"])
        assert r["smoothness"] > 3 * f["smoothness"]
        # the redrawn surface is "quadratic + noise": its residual SD is of the order of the noise at the centre
        noise = redrawn.config["noise"][loss]
        assert noise > 0 and 0.3 < r["residual_sd"] / noise < 3
    data = landscape_frozen_redrawn(frozen, redrawn, tmp_path / "lfr")
    assert set(data["kind"]) == {"frozen", "redrawn"} and (tmp_path / "lfr.png").stat().st_size > 0
