"""Interpolant, time distribution, loss weighting, centred noise, the Euler sampler and the PDB writer."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest
import torch
from scipy import stats

from tasks.flowmatching.flow import (
    centered_gaussian_noise,
    euler_sample,
    interpolate,
    loss_weight,
    masked_mse,
    sample_flow_times,
    time_grid,
    velocity_target,
    weighted_velocity_loss,
    write_ca_pdb,
    x1_from_velocity,
)


def _mask(lengths, n):
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def test_interpolant_and_velocity(gen):
    x0, x1 = torch.randn(3, 7, 3, generator=gen, dtype=torch.float64), torch.randn(3, 7, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    xt = interpolate(x0, x1, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], x1[2])
    torch.testing.assert_close(xt[1], 0.7 * x0[1] + 0.3 * x1[1])
    v = velocity_target(x0, x1)
    torch.testing.assert_close(v, x1 - x0)
    # the velocity is d x_t / dt, and x̂1 from the exact velocity is x1 at every t
    h = 1e-6
    torch.testing.assert_close((interpolate(x0, x1, t + h) - interpolate(x0, x1, t - h)) / (2 * h), v, atol=1e-8, rtol=0)
    torch.testing.assert_close(x1_from_velocity(xt, v, t), x1)


def test_time_distribution_matches_beta_mixture(gen):
    t = sample_flow_times(20000, gen, beta=(1.9, 1.0), uniform_fraction=0.02, dtype=torch.float64).numpy()
    assert t.min() >= 0 and t.max() <= 1
    cdf = lambda x: 0.98 * stats.beta.cdf(x, 1.9, 1.0) + 0.02 * x  # noqa: E731
    assert stats.kstest(t, cdf).pvalue > 1e-3
    mean = 0.98 * 1.9 / 2.9 + 0.02 * 0.5
    assert abs(t.mean() - mean) < 4 * t.std() / np.sqrt(len(t))
    # the test can fail: plain Beta(1.9, 1) without the uniform part, or U(0, 1), are rejected
    assert stats.kstest(t, lambda x: x).pvalue < 1e-6
    # a general Beta(a, b) goes through the same inverse-CDF path
    t2 = sample_flow_times(20000, gen, beta=(2.0, 5.0), uniform_fraction=0.0, dtype=torch.float64).numpy()
    assert stats.kstest(t2, stats.beta(2.0, 5.0).cdf).pvalue > 1e-3
    # the draw is a function of the generator's seed only
    a = sample_flow_times(5, torch.Generator().manual_seed(3))
    b = sample_flow_times(5, torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(a.double(), b, atol=1e-7, rtol=0)


def test_loss_weighting_matches_x1_space_formula(gen):
    b, n = 5, 9
    mask = _mask([9, 6, 4, 9, 2], n)
    x0 = centered_gaussian_noise(mask, gen, dtype=torch.float64)
    x1 = centered_gaussian_noise(mask, gen, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 0.9, 0.99, 0.999], dtype=torch.float64)
    v_hat = torch.randn(b, n, 3, generator=gen, dtype=torch.float64) * mask[..., None]
    eps = 1e-5
    xt = interpolate(x0, x1, t)
    x1_hat = x1_from_velocity(xt, v_hat, t)
    m = mask.double()
    x1_err = ((x1_hat - x1) ** 2).sum(-1).mul(m).sum(-1) / (3 * m.sum(-1))
    expected = x1_err / ((1 - t) ** 2 + eps)  # Proteina: ‖x1 − x̂1‖² / ((1 − t)² + ε), mean over residues and xyz
    got = weighted_velocity_loss(v_hat, velocity_target(x0, x1), t, mask, eps)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss_weight(t, eps), 1 / ((1 - t) ** 2 + eps))
    # ≈ velocity MSE except very close to t = 1
    mse = masked_mse(v_hat, velocity_target(x0, x1), mask)
    ratio = got / mse
    assert torch.all(ratio <= 1) and ratio[0] > 0.99999 and ratio[2] > 0.999 and ratio[4] < 0.1


def test_noise_is_centred_masked_and_unit_variance(gen):
    mask = _mask([50, 20, 3], 50)
    x0 = centered_gaussian_noise(mask, gen, dtype=torch.float64)
    com = (x0 * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert com.abs().max() < 1e-12
    assert torch.all(x0[~mask] == 0)
    big = centered_gaussian_noise(torch.ones(200, 100, dtype=torch.bool), gen, dtype=torch.float64)
    assert abs(float(big.var()) - 0.99) < 0.02  # (n − 1)/n of N(0, 1 nm²) after centring


def test_time_grid():
    for schedule in ("uniform", "log"):
        g = time_grid(50, schedule)
        assert g[0] == 0 and g[-1] == 1 and torch.all(g[1:] > g[:-1])
    g = time_grid(50, "log")
    assert (g[-1] - g[-2]) < (g[1] - g[0]) / 10  # steps shrink towards the data end
    with pytest.raises(ValueError):
        time_grid(10, "cosine")


def test_euler_reaches_the_data_point_with_the_exact_field(gen):
    """For a single data point x1 the conditional field (x1 − x)/(1 − t) makes Euler land on x1 exactly."""
    mask = _mask([12, 8], 12)
    x1 = centered_gaussian_noise(mask, gen, dtype=torch.float64)

    def field(x, t, x_sc, ri, cb, m):
        return (x1 - x) / (1 - t)[:, None, None]

    out = euler_sample(field, mask, steps=7, schedule="log", generator=gen, dtype=torch.float64)
    torch.testing.assert_close(out, x1, atol=1e-10, rtol=0)


def test_sampler_writes_a_readable_ca_pdb(tmp_path, gen):
    from tasks.flowmatching.models.proteina import ProteinaTransformer

    torch.manual_seed(0)
    model = ProteinaTransformer(
        dim=32, depth=1, heads=2, pair_dim=8, dim_cond=16, time_emb_dim=16, index_emb_dim=16, num_registers=2
    ).eval()
    mask = _mask([30, 22], 30)
    x = euler_sample(model, mask, steps=4, self_conditioning=True, generator=gen)
    assert x.shape == (2, 30, 3) and torch.isfinite(x).all() and torch.all(x[~mask] == 0)
    path = write_ca_pdb(tmp_path / "s.pdb", x[1], mask[1])
    st = gemmi.read_structure(str(path))
    cas = [a for r in st[0][0] for a in r if a.name == "CA"]
    assert len(cas) == 22 and len(st[0][0]) == 22
    np.testing.assert_allclose([cas[5].pos.x, cas[5].pos.y, cas[5].pos.z], (x[1, 5] * 10).numpy(), atol=1e-3)  # nm → Å
    with pytest.raises(ValueError, match="non-finite"):
        write_ca_pdb(tmp_path / "bad.pdb", torch.full((3, 3), float("nan")))
