"""The degree spectrum of L_equiv (equivrepro.metrics.spectral): synthetic orbits of known content, unbiasedness,
an independent quadrature, the EScAIP l = 2 prediction, finite twirls, the angle curve and the per-element map.

Expected values come from Schur orthogonality (see tests/metrics/orbits.py); "within 4 SE" comparisons use the
estimator's own standard error over independent samples, so a biased estimator fails them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn import o3
from hydra.utils import instantiate
from omegaconf import OmegaConf

from equivrepro.metrics import TwirledPredictor, decompose_term, untwisted_predictions
from equivrepro.metrics.keys import SPECTRUM, degree_of, parse
from equivrepro.metrics.spectral import (
    DegreeSpectrum,
    NotQuadraticError,
    _centred_inner,
    _character_sums,
    angle_curve_measured,
    angle_curve_predicted,
    characters,
    degree_spectrum,
    degree_spectrum_of,
    equiv_map,
    invariant_degrees,
    relative_cosines,
    removed_degrees,
)
from equivrepro.rotations import haar_rotations, icosahedral_group, octahedral_group
from equivrepro.testing.pointcloud import NonEquivariantMLP, PointCloudTask, make_pointcloud_batch
from tasks.forcefield.task import ForceFieldTask
from tests.metrics.orbits import TOY_TERM, FrameModel, OrbitPart, direct_orbit, expected_degree_power, frame_batch, toy_inputs, wigner

POINTS = PointCloudTask()
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def _haar(b: int, k: int, seed: int) -> torch.Tensor:
    return haar_rotations(b * k, torch.Generator().manual_seed(seed), torch.float64).reshape(b, k, 3, 3)


def _part(deg: int, d: int, gen: torch.Generator, inverse: bool = False) -> OrbitPart:
    return OrbitPart(
        deg,
        torch.randn(d, 2 * deg + 1, generator=gen, dtype=torch.float64),
        torch.randn(2 * deg + 1, generator=gen, dtype=torch.float64),
        inverse,
    )


def _toy_spectrum(parts, const, w, rot, l_max=8, target=None):
    b = rot.shape[0]
    tgt, batch = toy_inputs(w, torch.zeros_like(w) if target is None else target, b)
    return degree_spectrum(direct_orbit(rot, parts, const), rot, TOY_TERM, tgt, batch, l_max)


def _within(est: torch.Tensor, se: torch.Tensor, expected, n_se: float = 4.0, floor: float = 1e-9) -> bool:
    return bool(((est - torch.as_tensor(expected, dtype=est.dtype)).abs() <= n_se * se + floor).all())


# --------------------------------------------------------------------------------------------------
# Characters and the centring algebra
# --------------------------------------------------------------------------------------------------
def test_characters_closed_form_limits_and_orthogonality():
    om = torch.linspace(0.05, math.pi - 0.05, 41, dtype=torch.float64)
    deg = torch.arange(9, dtype=torch.float64)
    chi = characters(torch.cos(om), 8)
    torch.testing.assert_close(chi, torch.sin((deg + 0.5) * om[:, None]) / torch.sin(om[:, None] / 2))
    torch.testing.assert_close(characters(torch.ones((), dtype=torch.float64), 8), 2 * deg + 1)  # χ_l(0) = 2l+1, no 0/0
    torch.testing.assert_close(characters(-torch.ones((), dtype=torch.float64), 8), (-1.0) ** deg)
    # Haar orthonormality through the Weyl density (1 − cos ω)/π on [0, π] (Gauss–Legendre, exact here)
    x, wq = np.polynomial.legendre.leggauss(40)
    omq = torch.as_tensor((x + 1) * math.pi / 2)
    dens = torch.as_tensor(wq) * math.pi / 2 * (1 - torch.cos(omq)) / math.pi
    c = characters(torch.cos(omq), 8)
    torch.testing.assert_close(c.T @ (dens[:, None] * c), torch.eye(9, dtype=torch.float64), atol=1e-12, rtol=0)


def test_centred_inner_is_the_leave_two_out_product_or_the_scaled_mean_centred_gram(gen):
    for k in (3, 6):
        z = torch.randn(2, k, 5, generator=gen, dtype=torch.float64)
        w = torch.rand(5, generator=gen, dtype=torch.float64)
        zc = z - z.mean(1, keepdim=True)
        gram = torch.einsum("bid,d,bjd->bij", zc, w, zc)
        inner = _centred_inner(gram, "leave-two-out")
        for b in range(2):
            for i in range(k):
                for j in range(k):
                    if i != j:
                        c = z[b, [m for m in range(k) if m not in (i, j)]].mean(0)
                        torch.testing.assert_close(inner[b, i, j], (w * (z[b, i] - c) * (z[b, j] - c)).sum())
        torch.testing.assert_close(_centred_inner(gram, "mean"), gram * k**2 / ((k - 1) ** 2 + 1))
    with pytest.raises(ValueError, match="K ≥ 3"):
        _centred_inner(torch.zeros(1, 2, 2), "leave-two-out")
    with pytest.raises(ValueError, match="centring must be"):
        _centred_inner(torch.zeros(1, 3, 3), "median")


# --------------------------------------------------------------------------------------------------
# Synthetic orbits of known content
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("deg, inverse", [(1, False), (2, False), (3, True), (5, False), (6, True)])
def test_a_degree_l_orbit_has_all_its_power_at_l(f64, deg, inverse):
    """z_g = D^l(g)·v (or D^l(g)ᵀ·v), w = 1: E_l = ‖v‖² exactly; every other degree 0 within the standard error."""
    gen = torch.Generator().manual_seed(deg)
    d = 2 * deg + 1
    part = OrbitPart(deg, torch.eye(d, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64), inverse)
    w = torch.ones(d, dtype=torch.float64)
    spec = _toy_spectrum([part], torch.zeros(d, dtype=torch.float64), w, _haar(300, 10, seed=10 + deg))
    expected = torch.zeros(9, dtype=torch.float64)
    expected[deg] = part.v.pow(2).sum()
    assert math.isclose(expected_degree_power(part, w), float(expected[deg]), rel_tol=1e-12)
    assert _within(spec.mean, spec.se, expected), (spec.mean, spec.se, expected)
    assert float(spec.se[deg]) < 0.1 * float(expected[deg])  # the test has power: a 10 % bias would fail
    assert _within(spec.remainder.mean()[None], spec.remainder.std()[None] / math.sqrt(300), [0.0])


def test_two_degrees_give_both_amplitudes_and_a_constant_changes_nothing(f64, gen):
    """A sum of a degree-2 and a degree-4 orbit (weighted, non-square A) plus a constant 100× larger: Ê_2, Ê_4 match
    ‖v‖² tr(AᵀWA)/(2l+1), Ê_0 matches ‖c‖²_W, and Ê_{l≥1} are unchanged by the constant to round-off (centring)."""
    p2, p4 = _part(2, 7, gen), _part(4, 7, gen)
    w = torch.rand(7, generator=gen, dtype=torch.float64) + 0.2
    const = 100 * torch.randn(7, generator=gen, dtype=torch.float64)
    rot = _haar(400, 12, seed=3)
    spec = _toy_spectrum([p2, p4], const, w, rot)
    flat = _toy_spectrum([p2, p4], torch.zeros(7, dtype=torch.float64), w, rot)
    expected = torch.zeros(9, dtype=torch.float64)
    expected[2], expected[4] = expected_degree_power(p2, w), expected_degree_power(p4, w)
    expected[0] = (w * const.pow(2)).sum()
    assert _within(spec.mean[1:], spec.se[1:], expected[1:]), (spec.mean, spec.se, expected)
    assert _within(spec.mean[:1], spec.se[:1], expected[:1])
    scale = float(expected[0])
    torch.testing.assert_close(spec.estimates[:, 1:], flat.estimates[:, 1:], atol=1e-9 * scale, rtol=0)
    # the equivariance error is the two orbits' power, and the sum rule closes (no degree above 4)
    assert _within(spec.equiv.mean()[None], spec.equiv.std()[None] / 20, [float(expected[1:].sum())])


@pytest.mark.parametrize(
    "k, draws, centring",
    [(2, 6000, "mean"), (4, 3000, "mean"), (4, 3000, "leave-two-out"), (10, 1000, "mean"), (10, 1000, "leave-two-out"), (50, 150, "mean")],
)
def test_unbiased_for_every_k_and_the_sum_rule(f64, k, draws, centring):
    """Content at l = 1, 2, 3 (nothing above) plus a constant: over many independent draws the mean of every Ê_l
    is its exact value within 4 SE for K = 2, 4, 10, 50 and both centrings, and the remainder averages to 0. The
    mean-centred sum without its factor K²/((K−1)² + 1) is biased, and this test has the power to see it."""
    gen = torch.Generator().manual_seed(100 + k)
    parts = [_part(1, 4, gen), _part(2, 4, gen), _part(3, 4, gen)]
    w = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    const = 3 * torch.randn(4, generator=gen, dtype=torch.float64)
    rot = _haar(draws, k, seed=200 + k)
    z = direct_orbit(rot, parts, const)
    tgt, batch = toy_inputs(w, const + torch.randn(4, generator=gen, dtype=torch.float64), draws)
    spec = degree_spectrum(z, rot, TOY_TERM, tgt, batch, 6, centring=centring)
    expected = torch.zeros(7, dtype=torch.float64)
    for p in parts:
        expected[p.degree] = expected_degree_power(p, w)
    expected[0] = (w * const.pow(2)).sum()
    assert spec.centring == centring
    assert _within(spec.mean, spec.se, expected), (k, spec.mean, spec.se, expected)
    rem = spec.remainder
    assert _within(rem.mean()[None], rem.std()[None] / math.sqrt(draws), [0.0])
    if k in (4, 10):
        plain = spec.estimates[:, 1:] * ((k - 1) ** 2 + 1) / k**2 if centring == "mean" else None
        if plain is not None:
            assert not _within(plain.mean(0), plain.std(0) / math.sqrt(draws), expected[1:])


def test_the_angle_is_that_of_the_relative_rotation(f64, gen):
    """ω(R_iᵀR_j) = ω(R_i R_jᵀ) (equal traces): passing Rᵀ, Q·R or R·Q instead of R changes nothing. Using the
    angle of R_i R_j (a forgotten transpose) is biased: for a degree-2 orbit it gives ‖v‖²/5 instead of ‖v‖²."""
    part = OrbitPart(2, torch.eye(5, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64))
    w = torch.ones(5, dtype=torch.float64)
    rot = _haar(400, 10, seed=5)
    q = haar_rotations(1, gen, torch.float64)[0]
    z = direct_orbit(rot, [part], torch.zeros(5, dtype=torch.float64))
    tgt, batch = toy_inputs(w, torch.zeros(5, dtype=torch.float64), 400)
    ref = degree_spectrum(z, rot, TOY_TERM, tgt, batch, 4).estimates
    for other in (rot.transpose(-1, -2), q @ rot, rot @ q):
        torch.testing.assert_close(degree_spectrum(z, other, TOY_TERM, tgt, batch, 4).estimates, ref, atol=1e-10, rtol=0)
    truth = float(part.v.pow(2).sum())
    good = DegreeSpectrum("toy", 10, 4, ref, ref.sum(1), ref.sum(1))
    assert _within(good.mean[2:3], good.se[2:3], [truth])
    # the same estimator with the angle of R_i R_j
    zc = z["y"] - z["y"].mean(1, keepdim=True)
    gram = zc @ zc.transpose(1, 2)
    inner = _centred_inner(gram, "mean")
    prod = torch.einsum("bixy,bjyz->bijxz", rot, rot)
    wrong = _character_sums(inner, (prod.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2, 4)
    se = wrong.std(0) / 20
    assert abs(float(wrong.mean(0)[2]) - truth) > 10 * float(se[2]), (wrong.mean(0), truth)
    assert abs(float(wrong.mean(0)[2]) - truth / 5) < 4 * float(se[2])  # E D(u²) = I/(2l+1): biased by 1/(2l+1)


# --------------------------------------------------------------------------------------------------
# An independent quadrature on a real (non-equivariant) network
# --------------------------------------------------------------------------------------------------
def _euler_quadrature(n_beta: int, n_angle: int):
    """e3nn's YXY Euler angles α, β, γ: Gauss–Legendre nodes in cos β, equispaced α, γ; Haar weights (sum 1)."""
    x, wb = np.polynomial.legendre.leggauss(n_beta)
    ang = torch.arange(n_angle, dtype=torch.float64) * (2 * math.pi / n_angle)
    return ang, torch.as_tensor(np.arccos(x)), torch.as_tensor(wb) / 2 / n_angle**2


def test_agrees_with_an_independent_quadrature_on_a_network(f64):
    """E_l of an MLP's untwisted predictions on one point cloud, computed two ways: the estimator (400 independent
    draws of K = 10 Haar rotations) and an Euler-angle quadrature (Gauss–Legendre in cos β × equispaced α, γ,
    exact for band-limited integrands) of (2l+1) Σ_mn ‖∫ h D^l_mn‖²_W with e3nn's Wigner matrices — no characters.
    The quadrature is checked complete (Σ_{l≤10} E_l = ∫‖h‖²)."""
    torch.manual_seed(0)
    model = NonEquivariantMLP(hidden=16)
    x = make_pointcloud_batch(1, 4, torch.Generator().manual_seed(1))
    ang, beta, wb = _euler_quadrature(16, 32)
    na, nb = ang.numel(), beta.numel()
    a, b, g = (t.reshape(-1) for t in torch.meshgrid(ang, beta, ang, indexing="ij"))
    rq = o3.angles_to_matrix(a, b, g)
    with torch.no_grad():
        h = untwisted_predictions(model, POINTS, x, rq)["vec"][0].reshape(na, nb, na, -1)  # (α, β, γ, N·3)
    wvec = torch.full((h.shape[-1],), 1 / 4, dtype=torch.float64)  # mean over 4 points of ‖·‖²
    lq = 10
    quad = torch.zeros(lq + 1, dtype=torch.float64)
    for deg in range(lq + 1):
        # D(α, β, γ) = D(α, 0, 0) D(0, β, 0) D(0, 0, γ): e3nn's D is a homomorphism (checked on a few nodes)
        zero_a, zero_b = torch.zeros_like(ang), torch.zeros_like(beta)
        da, db, dg = o3.wigner_D(deg, ang, zero_a, zero_a), o3.wigner_D(deg, zero_b, beta, zero_b), o3.wigner_D(deg, zero_a, zero_a, ang)
        i = torch.tensor([0, 123, 4567])
        torch.testing.assert_close(o3.wigner_D(deg, a[i], b[i], g[i]), da[i // (nb * na)] @ db[(i // na) % nb] @ dg[i % na])
        coeff = torch.einsum("b,amp,bpq,gqn,abgj->mnj", wb, da, db, dg, h)
        quad[deg] = (2 * deg + 1) * (coeff.pow(2) * wvec).sum()
    norm = float((wb[None, :, None, None] * h.pow(2) * wvec).sum())
    assert abs(float(quad.sum()) - norm) < 1e-6 * norm  # the quadrature resolves everything up to l = 10

    n = 400
    batch = {k: v.expand(n, *v.shape[1:]).clone() for k, v in x.items()}
    spec = degree_spectrum_of(model, POINTS, batch, _haar(n, 10, seed=7), l_max=6)["mse"]
    assert _within(spec.mean, spec.se, quad[:7], floor=1e-6 * norm), (spec.mean, spec.se, quad[:7])
    assert float(quad[1:].sum()) > 0.05 * norm and float(spec.se[1]) < 0.1 * float(quad[1])
    assert _within(spec.remainder.mean()[None], spec.remainder.std()[None] / 20, [float(quad[7:].sum())])


# --------------------------------------------------------------------------------------------------
# The EScAIP prediction
# --------------------------------------------------------------------------------------------------
def _model_config(name: str) -> dict:
    """configs/model/<name>.yaml with its ``defaults`` chain resolved (``_target_`` included)."""
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    base: dict = {}
    for d in cfg.get("defaults", []):
        if d != "_self_":
            base.update(_model_config(d))
    return base | {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "defaults"}


def _molecules(gen: torch.Generator, sizes=(5, 8, 6)) -> dict[str, torch.Tensor]:
    n = max(sizes)
    mask = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
    pos = torch.randn(len(sizes), n, 3, generator=gen, dtype=torch.float64) * 1.6 * mask[..., None]
    z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (len(sizes), n), generator=gen)] * mask
    forces = torch.randn(len(sizes), n, 3, generator=gen, dtype=torch.float64) * mask[..., None]
    return {"pos": pos, "z": z, "mask": mask, "energy": torch.randn(len(sizes), generator=gen, dtype=torch.float64), "forces": forces}


def test_escaip_equivariance_error_lies_at_degree_two(gen):
    """Every EScAIP feature before the force head is invariant and the head multiplies r̂_ij component-wise, so
    z_g = Σ_j m_i gᵀ diag(w_ij) g r̂_ij: degrees 0 and 2 only (gᵀDg is symmetric, so no l = 1). The randomly
    initialised tiny preset (untied head: the three rows of W differ) must put ≥ 90 % of L_equiv at l = 2."""
    torch.manual_seed(0)
    model = instantiate(_model_config("escaip_tiny")).double().eval()
    w = model.force_head.out.weight
    assert (w - w.mean(0)).abs().max() > 1e-3  # untied
    task, batch = ForceFieldTask(), _molecules(gen, sizes=(5, 8, 6, 7, 4, 9))
    rot = _haar(6, 30, seed=11)
    spec = degree_spectrum_of(model, task, batch, rot, l_max=6)
    assert set(spec) == {"forces", "energy"}  # forces_l2mae is not quadratic: not decomposable, left out
    f = spec["forces"]
    share2 = float(f.equiv_share[2])
    assert math.isclose(share2, float(f.mean[2] / f.equiv.mean()), rel_tol=1e-12)
    assert f.equiv.mean() > 0 and share2 >= 0.9, (f.mean, f.equiv.mean())
    others = torch.tensor([1, 3, 4, 5, 6])
    assert _within(f.mean[others], f.se[others], torch.zeros(5))
    # per molecule too (the spread over molecules is large, the estimator's own noise is not)
    per = f.estimates[:, 2] / f.equiv
    assert float(per.min()) > 0.75 and float(per.mean()) > 0.9, per
    assert float(spec["energy"].equiv.abs().max()) < 1e-20  # the energy is exactly invariant
    # the per-atom map: zero on padding, sums to the U-statistic
    with torch.no_grad():
        z = untwisted_predictions(model, task, batch, rot)
    emap = equiv_map(z, task.terms[0], task.targets(batch), batch)
    per_atom = emap["forces"].sum(-1)
    assert float(per_atom[~batch["mask"]].abs().max()) == 0.0
    torch.testing.assert_close(per_atom.sum(-1) + emap["energy"], f.equiv)


# --------------------------------------------------------------------------------------------------
# Finite subgroups
# --------------------------------------------------------------------------------------------------
def test_invariant_degrees_of_the_cube_and_icosahedral_groups(f64):
    cube, ico = octahedral_group(), icosahedral_group()
    assert invariant_degrees(cube, 12).tolist() == [1, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 0, 2]
    assert invariant_degrees(ico, 12).tolist() == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1]
    assert removed_degrees(cube, 8) == (1, 2, 3, 5, 7)
    assert removed_degrees(ico, 8) == (1, 2, 3, 4, 5, 7, 8)
    for deg, group in ((4, cube), (6, cube), (6, ico)):  # the count is the rank of the group-averaged Wigner matrix
        assert int(torch.linalg.matrix_rank(wigner(deg, group).mean(0), atol=1e-8)) == int(invariant_degrees(group, deg)[deg])
    with pytest.raises(ValueError, match="do not form a group"):
        invariant_degrees(haar_rotations(24, torch.Generator().manual_seed(0), torch.float64), 6)


@pytest.mark.parametrize("group_name, deg, kept", [("ico", 2, False), ("ico", 6, True), ("cube", 2, False), ("cube", 4, True)])
def test_a_finite_twirl_removes_exactly_the_degrees_without_invariants(f64, group_name, deg, kept):
    """A model with an equivariant part plus a degree-l error, twirled over the group (TwirledPredictor), measured
    with Haar rotations: degrees without G-invariants vanish (icosahedral l = 2, cube l = 2); the others keep
    ‖v‖² Σ_n tr(A_nᵀA_n P_G)/(3(2l+1)), P_G the group average of D^l (icosahedral l = 6, cube l = 4)."""
    gen = torch.Generator().manual_seed(deg)
    group = icosahedral_group() if group_name == "ico" else octahedral_group()
    part = OrbitPart(deg, torch.randn(3, 3, 2 * deg + 1, generator=gen), torch.randn(2 * deg + 1, generator=gen))
    model = FrameModel([part], const=torch.randn(3, 3, generator=gen))
    batch = frame_batch(haar_rotations(12, gen, torch.float64))
    rot = _haar(12, 40, seed=21)  # the estimator's noise falls as 1/K per sample, so few samples and many rotations
    before = degree_spectrum_of(model, POINTS, batch, rot, l_max=8)["mse"]
    after = degree_spectrum_of(TwirledPredictor(model, POINTS, group), POINTS, batch, rot, l_max=8)["mse"]
    full = float(part.v.pow(2).sum() * part.a.pow(2).sum() / (3 * (2 * deg + 1)))
    assert _within(before.mean[deg : deg + 1], before.se[deg : deg + 1], [full])
    p = wigner(deg, group).mean(0)
    kept_power = float(part.v.pow(2).sum() * torch.einsum("nij,nik,kj->", part.a, part.a, p) / (3 * (2 * deg + 1)))
    if kept:
        assert kept_power > 0.02 * full
        assert _within(after.mean[deg : deg + 1], after.se[deg : deg + 1], [kept_power])
        assert float(after.mean[deg]) > 4 * float(after.se[deg])
    else:
        assert abs(kept_power) < 1e-12 * full
        assert float(after.equiv.abs().max()) < 1e-20 * full and float(after.estimates[:, 1:].abs().max()) < 1e-20 * full


# --------------------------------------------------------------------------------------------------
# The error against rotation angle
# --------------------------------------------------------------------------------------------------
def test_angle_curve_predicted_matches_measured_for_a_haar_axis_on_either_side(f64):
    """Degrees 1, 2, 3 in a FrameModel with every sample in the same frame: the measured E‖h(g) − h(g r_ω)‖² (and
    ‖h(g) − h(r_ω g)‖²) agree with 2 Σ E_l (1 − χ_l(ω)/(2l+1)) from the estimated spectrum and from the exact one.
    Rotating about a fixed axis (z) instead does not: the formula needs the Haar-random axis."""
    gen = torch.Generator().manual_seed(0)
    parts = [OrbitPart(deg, torch.randn(3, 3, 2 * deg + 1, generator=gen), torch.randn(2 * deg + 1, generator=gen)) for deg in (1, 2, 3)]
    model = FrameModel(parts, const=torch.randn(3, 3, generator=gen))
    batch = frame_batch(torch.eye(3).expand(200, 3, 3))
    omegas = torch.tensor([0.3, 1.0, 2.0, math.pi])
    spec = degree_spectrum_of(model, POINTS, batch, _haar(200, 10, seed=1), l_max=6)["mse"]
    pred = angle_curve_predicted(spec, omegas)
    exact_e = torch.zeros(7)
    for p in parts:
        exact_e[p.degree] = p.v.pow(2).sum() * p.a.pow(2).sum() / (3 * (2 * p.degree + 1))
    exact = DegreeSpectrum("mse", 2, 6, exact_e[None].expand(2, 7), exact_e[1:].sum().expand(2), exact_e[1:].sum().expand(2))
    truth = angle_curve_predicted(exact, omegas).mean
    assert _within(pred.mean, pred.se, truth)
    assert bool((pred.upper >= pred.mean).all()) and len(pred.rows()) == 4
    fixed = None
    for side in ("right", "left"):
        meas = angle_curve_measured(model, POINTS, batch, omegas, 6, torch.Generator().manual_seed(2), side=side)
        assert _within(meas.mean, meas.se, truth), (side, meas.mean, meas.se, truth)
        assert _within(meas.mean, torch.sqrt(meas.se**2 + pred.se**2), pred.mean)
        fixed = angle_curve_measured(
            model, POINTS, batch, omegas, 6, torch.Generator().manual_seed(3), side=side, axis=torch.tensor([0.0, 0.0, 1.0])
        )
        assert not _within(fixed.mean, fixed.se, truth), (side, fixed.mean, truth)


def test_angle_curve_of_a_network_and_its_small_angle_limit(f64):
    """On the MLP: predicted (l ≤ 8, with the remainder bound) and measured curves agree within their standard
    errors; at ω → 0 the measured curve is (ω²/3) Σ l(l+1) E_l, the Lie-derivative sum."""
    torch.manual_seed(0)
    model = NonEquivariantMLP(hidden=16)
    batch = make_pointcloud_batch(128, 4, torch.Generator().manual_seed(1))
    spec = degree_spectrum_of(model, POINTS, batch, _haar(128, 16, seed=2), l_max=8)["mse"]
    omegas = torch.tensor([0.5, 1.5, math.pi])
    pred = angle_curve_predicted(spec, omegas)
    meas = angle_curve_measured(model, POINTS, batch, omegas, 8, torch.Generator().manual_seed(3), term="mse")
    tol = 4 * torch.sqrt(meas.se**2 + pred.se**2)
    assert bool(((meas.mean - pred.mean).abs() <= tol + (pred.upper - pred.mean)).all()), (meas.mean, pred.mean, pred.upper)
    eps = 1e-3
    small = angle_curve_measured(model, POINTS, batch, [eps], 8, torch.Generator().manual_seed(4))
    lie_measured = small.per_sample[:, 0] * 3 / eps**2
    n = lie_measured.shape[0]
    assert _within(spec.lie.mean()[None], torch.sqrt(spec.lie.var() / n + lie_measured.var() / n)[None], [float(lie_measured.mean())])
    assert float(spec.lie.mean()) > 0


# --------------------------------------------------------------------------------------------------
# The result object, the map and refusals
# --------------------------------------------------------------------------------------------------
def test_spectrum_agrees_with_the_decomposition_pools_and_names_its_metrics(f64):
    torch.manual_seed(0)
    model = NonEquivariantMLP(hidden=8)
    batch = make_pointcloud_batch(10, 5, torch.Generator().manual_seed(1))
    rot = _haar(10, 7, seed=3)
    with torch.no_grad():
        z = untwisted_predictions(model, POINTS, batch, rot)
    target, term = POINTS.targets(batch), POINTS.terms[0]
    spec = degree_spectrum(z, rot, term, target, batch, l_max=5)
    dec = decompose_term(term, z, target, batch)
    torch.testing.assert_close(spec.equiv, dec.equiv_unbiased)
    torch.testing.assert_close(spec.total, dec.total)
    emap = equiv_map(z, term, target, batch)
    assert emap["vec"].shape == batch["pos"].shape
    torch.testing.assert_close(emap["vec"].flatten(1).sum(1), dec.equiv_unbiased)
    # the loss shares add up: L_mean + Σ_{1≤l≤l_max} E_l + remainder = L_total
    assert math.isclose(float(spec.mean_share + spec.share[1:].sum() + spec.remainder_share), 1.0, rel_tol=1e-12)
    # pooling chunks equals computing on the whole batch
    halves = [
        degree_spectrum(
            {k: v[s] for k, v in z.items()},
            rot[s],
            term,
            {k: v[s] for k, v in target.items()},
            {k: v[s] for k, v in batch.items()},
            l_max=5,
        )
        for s in (slice(0, 4), slice(4, 10))
    ]
    pooled = DegreeSpectrum.concat(halves)
    torch.testing.assert_close(pooled.estimates, spec.estimates)
    assert pooled.summary() == pytest.approx(spec.summary())
    metrics = spec.metrics("t=0.4")
    degrees = sorted(d for d in (degree_of(k) for k in metrics) if d is not None)
    assert degrees == list(range(6))
    assert all(parse(k).family == SPECTRUM and parse(k).suffix == "t=0.4" and parse(k).term == "mse" for k in metrics)
    s = spec.summary()
    assert s["l=2"] == pytest.approx(float(spec.mean[2])) and s["lie"] == pytest.approx(float(spec.lie.mean()))
    assert s["remainder"] == pytest.approx(float(spec.remainder.mean()))
    # the relative-rotation cosines are those of R_iᵀR_j
    cos = relative_cosines(rot)
    torch.testing.assert_close(cos[0, 1, 2], (torch.trace(rot[0, 1].T @ rot[0, 2]) - 1) / 2)


def test_non_quadratic_terms_and_finite_groups_are_refused(f64):
    batch = make_pointcloud_batch(3, 4, torch.Generator().manual_seed(0))
    rot = _haar(3, 5, seed=1)
    torch.manual_seed(0)
    with torch.no_grad():
        z = untwisted_predictions(NonEquivariantMLP(hidden=8), POINTS, batch, rot)
    target = POINTS.targets(batch)
    with pytest.raises(NotQuadraticError, match="l2mae"):
        degree_spectrum(z, rot, POINTS.terms[1], target, batch)
    with pytest.raises(NotQuadraticError):
        equiv_map(z, POINTS.terms[1], target, batch)
    with pytest.raises(ValueError, match="alias"):
        degree_spectrum(z, rot, POINTS.terms[0], target, batch, exact_group=True)
    with pytest.raises(ValueError, match="rotations given"):
        degree_spectrum(z, rot[:, :4], POINTS.terms[0], target, batch)
    with pytest.raises(NotQuadraticError):
        angle_curve_measured(NonEquivariantMLP(hidden=8), POINTS, batch, [1.0], 2, torch.Generator(), term="l2mae")
