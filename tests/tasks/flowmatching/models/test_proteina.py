"""The Proteina-style transformer: parameter counts of the presets, masking, features, pair updates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from tasks.flowmatching.models.proteina import PairBiasAttention, ProteinaTransformer, TriangleMultiplication, time_embedding

CONFIGS = Path(__file__).resolve().parents[4] / "configs" / "model"
TINY = dict(dim=32, depth=2, heads=4, pair_dim=16, dim_cond=16, time_emb_dim=16, index_emb_dim=16, num_registers=3)


def _count(cfg_or_kwargs) -> int:
    with torch.device("meta"):
        model = instantiate(cfg_or_kwargs, _convert_="all") if not isinstance(cfg_or_kwargs, dict) else ProteinaTransformer(**cfg_or_kwargs)
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_of_the_presets():
    tiny = _count(OmegaConf.load(CONFIGS / "proteina_tiny.yaml"))
    m60 = _count(OmegaConf.load(CONFIGS / "proteina_60m.yaml"))
    m400 = _count(OmegaConf.load(CONFIGS / "proteina_400m.yaml"))
    assert 100_000 <= tiny <= 300_000 and tiny == 262_208
    assert abs(m60 - 60e6) <= 0.05 * 60e6 and m60 == 62_674_432
    assert abs(m400 - 400e6) <= 0.05 * 400e6 and m400 == 396_763_328
    # the upstream-identical 60M (conditioning transitions ×2) matches the count of upstream's
    # ca_af3_60M_notri (64.6M) minus its unused CATH fold conditioning (≈0.39M)
    kwargs = OmegaConf.to_container(OmegaConf.load(CONFIGS / "proteina_60m.yaml"))
    kwargs.pop("_target_")
    assert _count(dict(kwargs, cond_transition_expansion=2.0)) == 64_247_296


def test_trunk_layer_size_matches_the_upstream_arithmetic():
    # 60M: each trunk layer 6.04M (research notes); the 400M's four pair updates hold 14.54M
    a = _count(dict(depth=1, cond_transition_expansion=2.0))
    b = _count(dict(depth=2, cond_transition_expansion=2.0))
    assert b - a == 6_041_600
    big = dict(dim=1024, depth=18, heads=16, pair_dim=512)
    assert _count(dict(big, pair_update_every=5)) - _count(big) == pytest.approx(14.54e6, rel=0.005)


def _inputs(b=2, n=11, gen=None, dtype=torch.float64):
    gen = gen or torch.Generator().manual_seed(0)
    x = torch.randn(b, n, 3, generator=gen, dtype=dtype)
    t = torch.rand(b, generator=gen, dtype=dtype)
    ri = torch.arange(1, n + 1).expand(b, n).clone()
    cb = torch.zeros(b, n, dtype=dtype)
    return x, t, ri, cb


def test_output_head_and_shapes():
    torch.manual_seed(0)
    model = ProteinaTransformer(**TINY).double()
    assert isinstance(model.coords_out, nn.Linear) and model.coords_out.bias is None and model.coords_out.out_features == 3
    assert isinstance(model.coords_in, nn.Linear) and model.coords_in.bias is None and model.coords_in.in_features == 3
    x, t, ri, cb = _inputs()
    mask = torch.ones(2, 11, dtype=torch.bool)
    v = model(x, t, x.clone(), ri, cb, mask)
    assert v.shape == (2, 11, 3) and v.dtype == torch.float64 and torch.isfinite(v).all()


@pytest.mark.parametrize("pair_update_every", [None, 1])
def test_padding_does_not_change_real_residues(pair_update_every):
    """Appending padded residues (any values) leaves the prediction on the real ones unchanged."""
    torch.manual_seed(0)
    model = ProteinaTransformer(**TINY, pair_update_every=pair_update_every).double().eval()
    x, t, ri, cb = _inputs(b=2, n=9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    ref = model(x, t, x * 0.5, ri, cb, mask)
    junk = torch.randn(2, 4, 3, dtype=torch.float64) * 7
    xp = torch.cat([x, junk], 1)
    rip = torch.cat([ri, torch.full((2, 4), 999)], 1)
    cbp = torch.cat([cb, torch.ones(2, 4, dtype=torch.float64)], 1)
    maskp = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    out = model(xp, t, xp * 0.5, rip, cbp, maskp)
    torch.testing.assert_close(out[:, :9] * mask[..., None], ref * mask[..., None], atol=1e-10, rtol=1e-9)
    assert torch.all(out[~maskp] == 0)
    # and the second chain equals itself computed alone, unpadded
    alone = model(x[1:, :6], t[1:], x[1:, :6] * 0.5, ri[1:, :6], cb[1:, :6], torch.ones(1, 6, dtype=torch.bool))
    torch.testing.assert_close(out[1, :6], alone[0], atol=1e-10, rtol=1e-9)


def test_pair_features_equal_linear_on_concatenated_one_hots():
    torch.manual_seed(0)
    model = ProteinaTransformer(**TINY).double()
    x, t, ri, _ = _inputs(b=2, n=10)
    ri = ri.clone()
    ri[:, 5:] += 100  # a long sequence gap: separations beyond ±63 clip to the edge bins
    mask = torch.ones(2, 10, dtype=torch.bool)
    x_sc = x + 0.3
    z = model.pair_features(x, x_sc, ri, t, mask)
    sep = F.one_hot((ri[:, :, None] - ri[:, None, :]).clamp(-63, 63) + 63, 127)
    edges_xt = torch.linspace(0.1, 3.0, 63, dtype=torch.float64)
    edges_sc = torch.linspace(0.1, 3.0, 127, dtype=torch.float64)
    d_xt = F.one_hot(torch.bucketize(torch.cdist(x, x), edges_xt), 64)
    d_sc = F.one_hot(torch.bucketize(torch.cdist(x_sc, x_sc), edges_sc), 128)
    feats = torch.cat([sep, d_xt, d_sc], -1).double()
    ref = model.pair_in_norm(model.pair_in(feats))
    pc = model.pair_cond_norm(model.pair_cond_in(time_embedding(t, 16).double()))
    ref = model.pair_adaln(ref, pc[:, None, None, :])
    torch.testing.assert_close(z, ref, atol=1e-10, rtol=1e-9)


def test_shared_pair_normalisation_equals_per_layer_layernorm():
    torch.manual_seed(0)
    attn = PairBiasAttention(16, 4, 8).double()
    with torch.no_grad():
        attn.pair_norm.weight.uniform_(0.5, 1.5)
        attn.pair_norm.bias.uniform_(-0.5, 0.5)
    z = torch.randn(2, 5, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(attn.pair_bias(F.layer_norm(z, (8,))), attn.to_bias(attn.pair_norm(z)))


def test_triangle_multiplication_matches_its_definition():
    torch.manual_seed(0)
    for outgoing in (True, False):
        tri = TriangleMultiplication(6, 4, outgoing=outgoing).double()
        z = torch.randn(1, 5, 5, 6, dtype=torch.float64)
        pm = torch.ones(1, 5, 5, dtype=torch.bool)
        pm[0, 4, :] = pm[0, :, 4] = False
        out = tri(z, pm)
        zn = tri.norm_in(z)
        m = pm[..., None].double()
        a = torch.sigmoid(tri.a_gate(zn)) * tri.a_proj(zn) * m
        b = torch.sigmoid(tri.b_gate(zn)) * tri.b_proj(zn) * m
        u = torch.zeros(1, 5, 5, 4, dtype=torch.float64)
        for i in range(5):
            for j in range(5):
                for k in range(5):
                    u[0, i, j] += a[0, i, k] * b[0, j, k] if outgoing else a[0, k, i] * b[0, k, j]
        ref = torch.sigmoid(tri.gate(zn)) * tri.proj_out(tri.norm_out(u))
        torch.testing.assert_close(out, ref)


def test_tri_model_trains_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = ProteinaTransformer(**TINY, pair_update_every=1, checkpoint_pair_updates=True).double()
    assert list(model.pair_updates.keys()) == ["0"]  # after every layer but the last
    x, t, ri, cb = _inputs()
    mask = torch.ones(2, 11, dtype=torch.bool)
    model(x, t, x * 0.9, ri, cb, mask).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    # adaLN-zero gates start at σ(−2) with zero weights
    gate = model.layers[0].attn_scale.to_scale
    assert torch.all(gate.bias == -2) and torch.all(gate.weight == 0)


def test_not_rotation_equivariant():
    """The linear coordinate embedding breaks the symmetry: v(Rx) ≠ R v(x) at initialisation."""
    from equivrepro.rotations import haar_rotations, rotate_points

    torch.manual_seed(0)
    model = ProteinaTransformer(**TINY).double()
    x, t, ri, cb = _inputs(b=1, n=12)
    mask = torch.ones(1, 12, dtype=torch.bool)
    r = haar_rotations(1, torch.Generator().manual_seed(1), dtype=torch.float64)
    v = model(x, t, None, ri, cb, mask)
    v_rot = model(rotate_points(x, r), t, None, ri, cb, mask)
    err = (v_rot - rotate_points(v, r)).norm() / v.norm()
    assert err > 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast check runs on a GPU")
def test_bf16_autocast_on_gpu():  # pragma: no cover - GPU only
    model = ProteinaTransformer(**TINY).cuda()
    x, t, ri, cb = _inputs(dtype=torch.float32)
    mask = torch.ones(2, 11, dtype=torch.bool, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        v = model(x.cuda(), t.cuda(), x.cuda(), ri.cuda(), cb.cuda(), mask)
    assert torch.isfinite(v.float()).all()
