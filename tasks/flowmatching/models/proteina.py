"""Proteina's Cα transformer (``ProteinTransformerAF3``, Geffner et al., ICLR 2025), re-implemented.

One file, plain torch; the class docstring of :class:`ProteinaTransformer` holds the equations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ProteinaTransformer",
    "time_embedding",
    "index_embedding",
    "AdaptiveLayerNorm",
    "AdaLNZeroScale",
    "SwiGLUTransition",
    "PairBiasAttention",
    "TriangleMultiplication",
    "PairTransition",
    "PairUpdate",
]


# --------------------------------------------------------------------------------------------------
# Sinusoidal embeddings
# --------------------------------------------------------------------------------------------------
def time_embedding(t: torch.Tensor, dim: int, max_positions: float = 2000.0) -> torch.Tensor:
    """``t (B,)`` in [0, 1] → ``(B, dim)``: ``[sin(s·ω_k), cos(s·ω_k)]`` with ``s = max_positions·t``,
    ``ω_k = max_positions^{−k/(dim/2 − 1)}`` (the DDPM / Proteina time embedding)."""
    half = dim // 2
    freq = torch.exp(-math.log(max_positions) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    arg = (t.float() * max_positions)[:, None] * freq[None, :]
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


def index_embedding(index: torch.Tensor, dim: int, max_len: float = 2056.0) -> torch.Tensor:
    """Residue numbers ``(B, N)`` → ``(B, N, dim)``: ``[sin(π i / L^{2k/dim}), cos(π i / L^{2k/dim})]``,
    ``L = max_len``, ``k = 0 … dim/2 − 1``."""
    k = torch.arange(dim // 2, device=index.device, dtype=torch.float32)
    arg = index.float()[..., None] * math.pi / (max_len ** (2 * k / dim))
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


# --------------------------------------------------------------------------------------------------
# Building blocks (AF3-style adaptive normalisation and transitions)
# --------------------------------------------------------------------------------------------------
class AdaptiveLayerNorm(nn.Module):
    """``AdaLN(x, c) = LN(x)·σ(W_γ LN_c(c) + b_γ) + W_β LN_c(c)`` (AF3 Alg. 26); no affine in ``LN(x)``."""

    def __init__(self, dim: int, dim_cond: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm_cond = nn.LayerNorm(dim_cond)
        self.to_gamma = nn.Linear(dim_cond, dim)
        self.to_beta = nn.Linear(dim_cond, dim, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.norm_cond(cond)
        return self.norm(x) * torch.sigmoid(self.to_gamma(c)) + self.to_beta(c)


class AdaLNZeroScale(nn.Module):
    """adaLN-zero output gate ``x·σ(W c + b)`` with ``W = 0``, ``b = −2`` at init (σ(−2) ≈ 0.12)."""

    def __init__(self, dim: int, dim_cond: int, bias_init: float = -2.0):
        super().__init__()
        self.to_scale = nn.Linear(dim_cond, dim)
        nn.init.zeros_(self.to_scale.weight)
        nn.init.constant_(self.to_scale.bias, bias_init)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.to_scale(cond))


class SwiGLUTransition(nn.Module):
    """``W_out (silu(W_g x) ⊙ W_a x)`` with inner width ``expansion·dim``, no biases (AF3 Alg. 11)."""

    def __init__(self, dim: int, expansion: float = 4.0):
        super().__init__()
        inner = int(dim * expansion)
        self.proj_in = nn.Linear(dim, 2 * inner, bias=False)
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(F.silu(gate) * a)


class PairBiasAttention(nn.Module):
    """Gated multi-head self-attention with a pair bias and QK-LayerNorm.

    ``h = LN(x)``; ``q, k, v = W_qkv h + b`` (``q, k`` LayerNormed over all heads);
    ``a_hij = softmax_j(q_hi·k_hj/√d_h + W_b LN(z_ij))_h`` over unmasked ``j``;
    ``out = W_o (σ(W_g h + b_g) ⊙ Σ_j a_hij v_hj) + b_o``.
    """

    def __init__(self, dim: int, heads: int, pair_dim: int, qk_layernorm: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"token dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.node_norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim) if qk_layernorm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim) if qk_layernorm else nn.Identity()
        self.to_gate = nn.Linear(dim, dim)
        self.pair_norm = nn.LayerNorm(pair_dim)
        self.to_bias = nn.Linear(pair_dim, heads, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def pair_bias(self, pair_normalized: torch.Tensor) -> torch.Tensor:
        """``W_b LN(z)`` from ``ẑ = (z − mean)/std`` (LN without its affine part): ``(W_b diag γ) ẑ + W_b β``.

        The trunk normalises the pair representation once and every layer applies its own affine part
        and projection here, which equals running each layer's ``LayerNorm`` on ``z`` (``z`` only
        changes at pair updates) at a fraction of the memory traffic.
        """
        w = self.to_bias.weight
        return F.linear(pair_normalized, w * self.pair_norm.weight, w @ self.pair_norm.bias)

    def forward(self, x: torch.Tensor, pair_normalized: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, N, dim)``, ``pair_normalized (B, N, N, pair_dim)`` (see :meth:`pair_bias`), ``mask (B, N)``."""
        b, n, d = x.shape
        h = self.node_norm(x)
        q, k, v = self.to_qkv(h).chunk(3, dim=-1)
        dtype = v.dtype  # autocast: LayerNorm runs in float32, the projections in the low precision
        q, k = self.q_norm(q).to(dtype), self.k_norm(k).to(dtype)
        split = lambda y: y.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        bias = self.pair_bias(pair_normalized).permute(0, 3, 1, 2).to(dtype)  # (B, H, N, N)
        bias = bias.masked_fill(~mask[:, None, None, :], torch.finfo(dtype).min)
        attn = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias)
        attn = attn.transpose(1, 2).reshape(b, n, d)
        return self.to_out(torch.sigmoid(self.to_gate(h)) * attn)


class TrunkLayer(nn.Module):
    """``x ← x + S_a(c) ⊙ Attn(AdaLN_a(x, c), z)``; ``x ← x + S_t(c) ⊙ SwiGLU(AdaLN_t(x, c))`` (masked)."""

    def __init__(self, dim: int, heads: int, pair_dim: int, dim_cond: int, expansion: float = 4.0, qk_layernorm: bool = True):
        super().__init__()
        self.attn_norm = AdaptiveLayerNorm(dim, dim_cond)
        self.attn = PairBiasAttention(dim, heads, pair_dim, qk_layernorm)
        self.attn_scale = AdaLNZeroScale(dim, dim_cond)
        self.transition_norm = AdaptiveLayerNorm(dim, dim_cond)
        self.transition = SwiGLUTransition(dim, expansion)
        self.transition_scale = AdaLNZeroScale(dim, dim_cond)

    def forward(self, x: torch.Tensor, pair_normalized: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(x.dtype)
        x = x * m
        x = (x + self.attn_scale(self.attn(self.attn_norm(x, cond) * m, pair_normalized, mask), cond) * m) * m
        x = (x + self.transition_scale(self.transition(self.transition_norm(x, cond) * m), cond) * m) * m
        return x


# --------------------------------------------------------------------------------------------------
# Pair updates (the "tri" models)
# --------------------------------------------------------------------------------------------------
class TriangleMultiplication(nn.Module):
    """Triangle multiplicative update (AF2 Alg. 11 outgoing / Alg. 12 incoming).

    ``z̃ = LN(z)``; ``a = σ(W_ag z̃) ⊙ W_ap z̃``, ``b = σ(W_bg z̃) ⊙ W_bp z̃`` (masked);
    outgoing ``u_ij = Σ_k a_ik ⊙ b_jk``, incoming ``u_ij = Σ_k a_ki ⊙ b_kj``;
    ``Δz_ij = σ(W_g z̃_ij) ⊙ W_z LN(u_ij)``.
    """

    def __init__(self, pair_dim: int, hidden: int, outgoing: bool):
        super().__init__()
        self.outgoing = outgoing
        self.norm_in = nn.LayerNorm(pair_dim)
        self.a_proj, self.a_gate = nn.Linear(pair_dim, hidden), nn.Linear(pair_dim, hidden)
        self.b_proj, self.b_gate = nn.Linear(pair_dim, hidden), nn.Linear(pair_dim, hidden)
        self.gate = nn.Linear(pair_dim, pair_dim)
        self.norm_out = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, pair_dim)

    def forward(self, z: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        zn = self.norm_in(z)
        m = pair_mask[..., None].to(zn.dtype)
        a = torch.sigmoid(self.a_gate(zn)) * self.a_proj(zn) * m
        b = torch.sigmoid(self.b_gate(zn)) * self.b_proj(zn) * m
        if self.outgoing:
            u = torch.einsum("bikc,bjkc->bijc", a, b)
        else:
            u = torch.einsum("bkic,bkjc->bijc", a, b)
        return torch.sigmoid(self.gate(zn)) * self.proj_out(self.norm_out(u))


class PairTransition(nn.Module):
    """``Δz = W_2 relu(W_1 LN(z) + b_1) + b_2`` with inner width ``expansion·pair_dim`` (AF2 Alg. 15)."""

    def __init__(self, pair_dim: int, expansion: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(pair_dim)
        self.lin1 = nn.Linear(pair_dim, expansion * pair_dim)
        self.lin2 = nn.Linear(expansion * pair_dim, pair_dim)

    def forward(self, z: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(self.norm(z)))) * pair_mask[..., None].to(z.dtype)


class PairUpdate(nn.Module):
    """``z_ij ← z_ij + p1_j + p2_i`` with ``[p1, p2] = W LN(x)``, then (optionally) triangle
    multiplication outgoing and incoming, then a pair transition; each a masked residual update."""

    def __init__(self, dim: int, pair_dim: int, tri_mult: bool = True, tri_hidden: int = 196, use_checkpoint: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.to_pair = nn.Linear(dim, 2 * pair_dim, bias=False)
        hidden = min(pair_dim, tri_hidden)
        self.tri_out = TriangleMultiplication(pair_dim, hidden, outgoing=True) if tri_mult else None
        self.tri_in = TriangleMultiplication(pair_dim, hidden, outgoing=False) if tri_mult else None
        self.transition = PairTransition(pair_dim, 2)
        self.use_checkpoint = use_checkpoint

    def _run(self, module: nn.Module, z: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(module, z, pair_mask, use_reentrant=False)
        return module(z, pair_mask)

    def forward(self, x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pm = mask[:, :, None] & mask[:, None, :]
        m = pm[..., None].to(z.dtype)
        p1, p2 = self.to_pair(self.norm(x * mask[..., None].to(x.dtype))).chunk(2, dim=-1)
        z = (z + p1[:, None, :, :] + p2[:, :, None, :]) * m
        for module in (self.tri_out, self.tri_in, self.transition):
            if module is not None:
                z = (z + self._run(module, z, pm)) * m
        return z


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class ProteinaTransformer(nn.Module):
    r"""Non-equivariant Cα velocity network of Proteina (``ProteinTransformerAF3``, ``target_pred: v``).

    Inputs (``B`` chains padded to ``N`` residues, coordinates in **nm**): ``x_t (B, N, 3)``,
    ``t (B,)``, ``x_sc (B, N, 3)`` or ``None`` (self-conditioning input), ``residue_index (B, N)``
    (PDB numbers re-based to 1), ``chain_break (B, N)``, ``mask (B, N)``. Output: velocity
    ``v̂ (B, N, 3)`` (zero on padding). With ``m`` the mask:

    **Conditioning** (the same vector for every residue of a chain)

    .. math::
        c = T_2(T_1(W_c\,\mathrm{temb}(t))),\qquad T(y) = W_o(\mathrm{silu}(W_g y)\odot W_a y)

    (two SwiGLU transitions without residual, expansion ``cond_transition_expansion``).

    **Tokens** — the coordinate embedding is a plain linear map, which is where rotation symmetry is
    broken (the model learns it from augmentation):

    .. math::
        x^{(0)}_i = m_i\big(W_x\,x_{t,i} + W_s[\mathrm{iemb}(r_i)\,\|\,b_i\,\|\,x_{sc,i}]\big)

    (``W_x = coords_in``: ``Linear(3, d, bias=False)``; ``x_sc = 0`` when absent).

    **Pair representation** (rotation-invariant): one-hot relative separation ``clip(r_i − r_j, ±63)``
    (127 bins), ``x_t`` distance bins (64 bins, edges ``linspace(0.1, 3, 63)`` nm) and ``x_sc``
    distance bins (128 bins; all-zero when there is no ``x_sc``):

    .. math::
        z^{(0)}_{ij} = \mathrm{AdaLN}\big(\mathrm{LN}(W_z[\mathrm{sep}_{ij}\|\mathrm{d}^{x_t}_{ij}\|\mathrm{d}^{x_{sc}}_{ij}]),\ \mathrm{LN}(W_{zc}\,\mathrm{temb}(t))\big)

    ``R`` learned register tokens are prepended (conditioning 0, pair entries 0, always unmasked) and
    removed before the output.

    **Trunk** (``L`` layers, each :class:`TrunkLayer`):

    .. math::
        x \leftarrow x + \sigma(W_a c + b_a)\odot \mathrm{PairBiasAttn}(\mathrm{AdaLN}(x, c), z), \quad
        x \leftarrow x + \sigma(W_t c + b_t)\odot \mathrm{SwiGLU}_{4d}(\mathrm{AdaLN}(x, c))

    (adaLN-zero gates with bias −2 at init). Each layer's pair bias ``W_b LN_ℓ(z)`` is computed from
    one shared normalisation of ``z`` (:meth:`PairBiasAttention.pair_bias`; identical to running each
    layer's LayerNorm). With ``pair_update_every = n``, after layer ``ℓ`` with
    ``ℓ mod n = 0`` and ``ℓ < L − 1`` the pair representation is updated by :class:`PairUpdate`
    (outer sum of token projections, triangle multiplication out/in, pair transition).

    **Output**: ``v̂_i = m_i W_o LN(x_i)`` with ``W_o = coords_out``: ``Linear(d, 3, bias=False)``.

    Sizes: the paper's 60M has ``dim 512, depth 10, heads 8, pair_dim 256`` and no pair updates; its
    400M has ``dim 1024, depth 18, heads 16, pair_dim 512`` with triangle updates every 5 layers
    (``configs/model/proteina_*.yaml`` give the counts). Not included: CATH fold conditioning (the
    runs are unconditional) and the tri models' auxiliary distogram head.
    """

    def __init__(
        self,
        dim: int = 512,
        depth: int = 10,
        heads: int = 8,
        pair_dim: int = 256,
        dim_cond: int = 512,
        time_emb_dim: int = 256,
        index_emb_dim: int = 128,
        num_registers: int = 10,
        transition_expansion: float = 4.0,
        cond_transition_expansion: float = 2.0,
        qk_layernorm: bool = True,
        seq_sep_bins: int = 127,
        xt_dist_bins: int = 64,
        xsc_dist_bins: int = 128,
        dist_min_nm: float = 0.1,
        dist_max_nm: float = 3.0,
        pair_update_every: int | None = None,
        tri_mult: bool = True,
        tri_hidden: int = 196,
        checkpoint_pair_updates: bool = False,
    ):
        super().__init__()
        if seq_sep_bins % 2 != 1:
            raise ValueError(f"seq_sep_bins must be odd, got {seq_sep_bins}")
        self.dim, self.pair_dim, self.depth = dim, pair_dim, depth
        self.time_emb_dim, self.index_emb_dim = time_emb_dim, index_emb_dim
        self.seq_sep_bins, self.xt_dist_bins, self.xsc_dist_bins = seq_sep_bins, xt_dist_bins, xsc_dist_bins
        self.dist_min_nm, self.dist_max_nm = float(dist_min_nm), float(dist_max_nm)
        self.num_registers = int(num_registers)
        # conditioning
        self.cond_in = nn.Linear(time_emb_dim, dim_cond, bias=False)
        self.cond_transition_1 = SwiGLUTransition(dim_cond, cond_transition_expansion)
        self.cond_transition_2 = SwiGLUTransition(dim_cond, cond_transition_expansion)
        # tokens
        self.coords_in = nn.Linear(3, dim, bias=False)
        self.seq_in = nn.Linear(index_emb_dim + 1 + 3, dim, bias=False)
        self.registers = nn.Parameter(torch.randn(self.num_registers, dim) / 20.0) if self.num_registers > 0 else None
        # pair representation
        self.pair_in = nn.Linear(seq_sep_bins + xt_dist_bins + xsc_dist_bins, pair_dim, bias=False)
        self.pair_in_norm = nn.LayerNorm(pair_dim)
        self.pair_cond_in = nn.Linear(time_emb_dim, dim_cond, bias=False)
        self.pair_cond_norm = nn.LayerNorm(dim_cond)
        self.pair_adaln = AdaptiveLayerNorm(pair_dim, dim_cond)
        # trunk
        self.layers = nn.ModuleList(TrunkLayer(dim, heads, pair_dim, dim_cond, transition_expansion, qk_layernorm) for _ in range(depth))
        self.pair_update_every = pair_update_every
        self.pair_updates = nn.ModuleDict()
        if pair_update_every:
            for layer in range(depth - 1):
                if layer % int(pair_update_every) == 0:
                    self.pair_updates[str(layer)] = PairUpdate(dim, pair_dim, tri_mult, tri_hidden, checkpoint_pair_updates)
        # output
        self.out_norm = nn.LayerNorm(dim)
        self.coords_out = nn.Linear(dim, 3, bias=False)

    # ---- features ---------------------------------------------------------------------------------
    def _dist_bins(self, x: torch.Tensor, bins: int) -> torch.Tensor:
        x = x.float() if x.dtype not in (torch.float32, torch.float64) else x
        d = (x[:, :, None, :] - x[:, None, :, :]).norm(dim=-1)  # exact for permuted / sign-flipped inputs
        edges = torch.linspace(self.dist_min_nm, self.dist_max_nm, bins - 1, device=x.device, dtype=x.dtype)
        return torch.bucketize(d, edges)

    def pair_features(self, x_t, x_sc, residue_index, t, mask) -> torch.Tensor:
        """Initial pair representation ``(B, N, N, pair_dim)``, zero on padded pairs.

        ``W_z`` applied to the concatenated one-hot features is a sum of gathered columns of ``W_z``;
        the separation and ``x_t``-distance columns are gathered together from their pairwise sums
        (a ``127·64``-row table), which is the same sum with one gather instead of two.
        """
        pm = (mask[:, :, None] & mask[:, None, :])[..., None]
        w = self.pair_in.weight.t()  # (F, pair_dim)
        half = self.seq_sep_bins // 2
        sep = (residue_index[:, :, None] - residue_index[:, None, :]).clamp(-half, half) + half
        o = self.seq_sep_bins
        table = (w[:o, None, :] + w[None, o : o + self.xt_dist_bins, :]).reshape(-1, w.shape[1])
        z = F.embedding(sep * self.xt_dist_bins + self._dist_bins(x_t, self.xt_dist_bins), table)
        o += self.xt_dist_bins
        if x_sc is not None:
            z = z + F.embedding(self._dist_bins(x_sc, self.xsc_dist_bins), w[o : o + self.xsc_dist_bins])
        z = self.pair_in_norm(z)  # per-pair: padded pairs need no masking before it
        pc = self.pair_cond_norm(self.pair_cond_in(time_embedding(t, self.time_emb_dim).to(w.dtype)))  # (B, dim_cond)
        return self.pair_adaln(z, pc[:, None, None, :]) * pm

    # ---- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        x_sc: torch.Tensor | None = None,
        residue_index: torch.Tensor | None = None,
        chain_break: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, _ = x_t.shape
        device = x_t.device
        mask = torch.ones(b, n, dtype=torch.bool, device=device) if mask is None else mask.bool()
        if residue_index is None:
            residue_index = torch.arange(1, n + 1, device=device).expand(b, n)
        if chain_break is None:
            chain_break = torch.zeros(b, n, device=device)
        m = mask[..., None].to(x_t.dtype)
        wdt = self.coords_in.weight.dtype
        # conditioning (one vector per chain, broadcast over residues)
        c = self.cond_transition_2(self.cond_transition_1(self.cond_in(time_embedding(t, self.time_emb_dim).to(wdt))))
        c = c[:, None, :].expand(b, n, c.shape[-1]) * m
        # tokens
        x_t = x_t * m
        sc = torch.zeros_like(x_t) if x_sc is None else x_sc * m
        seq = (
            torch.cat([index_embedding(residue_index, self.index_emb_dim).to(x_t.dtype), chain_break[..., None].to(x_t.dtype), sc], dim=-1)
            * m
        )
        x = (self.coords_in(x_t) + self.seq_in(seq)) * m
        z = self.pair_features(x_t, None if x_sc is None else sc, residue_index, t, mask)
        # registers
        r = self.num_registers
        if r:
            x = torch.cat([self.registers[None].expand(b, r, self.dim).to(x.dtype), x], dim=1)
            mask = torch.cat([torch.ones(b, r, dtype=torch.bool, device=device), mask], dim=1)
            c = torch.cat([c.new_zeros(b, r, c.shape[-1]), c], dim=1)
            z = F.pad(z, (0, 0, r, 0, r, 0))
        z_normalized = F.layer_norm(z, (self.pair_dim,))  # shared by the layers' pair-bias LayerNorms
        for i, layer in enumerate(self.layers):
            x = layer(x, z_normalized, c, mask)
            if str(i) in self.pair_updates:
                z = self.pair_updates[str(i)](x, z, mask)
                z_normalized = F.layer_norm(z, (self.pair_dim,))
        x = x[:, r:]
        return self.coords_out(self.out_norm(x)) * m
