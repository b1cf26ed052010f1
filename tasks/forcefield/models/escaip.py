"""EScAIP (V1): an attention force field on rotation-invariant features with a direct, non-equivariant force head.

Re-implementation of the V1 model of Qu & Krishnapriyan, "The Importance of Being Scalable: Improving the
Speed and Accuracy of Neural Network Interatomic Potentials Across Chemical Domains" (NeurIPS 2024),
https://arxiv.org/abs/2410.24169, as trained on SPICE by Shen et al. (TMLR 2025). Written from the
paper and the architecture notes; no upstream code is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tasks.forcefield.graph import NeighborGraph, build_neighbor_graph

__all__ = ["EScAIP", "parameter_count"]


def _linear_act(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    """Linear → GELU (→ Dropout)."""
    layers: list[nn.Module] = [nn.Linear(d_in, d_out), nn.GELU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class FeedForward(nn.Sequential):
    """Linear(h → m·h) → GELU → Dropout → Linear(m·h → h) → Dropout."""

    def __init__(self, hidden: int, multiplier: int, dropout: float):
        layers: list[nn.Module] = [nn.Linear(hidden, hidden * multiplier), nn.GELU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden * multiplier, hidden))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class GaussianSmearing(nn.Module):
    """exp(−(d − μ_k)² / (2σ²)), μ_k evenly spaced on [0, cutoff], σ = width_scalar × spacing."""

    def __init__(self, cutoff: float, num: int, width_scalar: float = 2.0):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num), persistent=False)
        spacing = cutoff / max(num - 1, 1)
        self.coeff = -0.5 / (width_scalar * spacing) ** 2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coeff * (d[..., None] - self.centers.to(d.dtype)) ** 2)


def bond_orientational_order(direction: torch.Tensor, neighbor_mask: torch.Tensor, lmax: int) -> torch.Tensor:
    """Steinhardt BOO_l(i) = ‖ mean_j Y_l(r̂_ij) ‖ for l = 0..lmax: ``(A, lmax + 1)``, rotation-invariant.

    Y_l are e3nn's real spherical harmonics with ``normalization='norm'`` (‖Y_l(r̂)‖ = 1), so BOO_l ∈ [0, 1].
    """
    from e3nn import o3

    sh = o3.spherical_harmonics(list(range(lmax + 1)), direction, normalize=False, normalization="norm")  # (A, M, (L+1)²)
    w = neighbor_mask.to(sh.dtype)[..., None]
    mean = (sh * w).sum(1) / w.sum(1).clamp_min(1.0)
    l_of = torch.repeat_interleave(torch.arange(lmax + 1, device=sh.device), 2 * torch.arange(lmax + 1, device=sh.device) + 1)
    sq = torch.zeros(mean.shape[0], lmax + 1, dtype=sh.dtype, device=sh.device).index_add_(1, l_of, mean.pow(2))
    return sq.clamp_min(0).sqrt()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x (A, M, H)`` over the valid neighbour slots of ``mask (A, M)`` → ``(A, H)``."""
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class EdgeEmbedding(nn.Module):
    """Per-layer invariant edge features e_ij = [RBF-emb(d_ij), BOO-emb_s(j), Z-emb_s(j), BOO-emb_t(i), Z-emb_t(i)]."""

    def __init__(self, num_elements: int, atom_dim: int, rbf_num: int, rbf_dim: int, boo_num: int, boo_dim: int, dropout: float):
        super().__init__()
        self.source_atom = nn.Embedding(num_elements, atom_dim)
        self.target_atom = nn.Embedding(num_elements, atom_dim)
        self.source_direction = _linear_act(boo_num, boo_dim, dropout)
        self.target_direction = _linear_act(boo_num, boo_dim, dropout)
        self.distance = _linear_act(rbf_num, rbf_dim, dropout)
        self.out_dim = rbf_dim + 2 * boo_dim + 2 * atom_dim

    def forward(self, z: torch.Tensor, boo: torch.Tensor, rbf: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
        m = neighbors.shape[1]
        src_dir, tgt_dir = self.source_direction(boo), self.target_direction(boo)
        src_atom, tgt_atom = self.source_atom(z), self.target_atom(z)
        expand = lambda t: t[:, None, :].expand(-1, m, -1)  # noqa: E731  receiver i
        dist = self.distance(rbf)
        return torch.cat(
            [
                dist,
                src_dir[neighbors].to(dist.dtype),
                src_atom[neighbors].to(dist.dtype),
                expand(tgt_dir).to(dist.dtype),
                expand(tgt_atom).to(dist.dtype),
            ],
            dim=-1,
        )


class NeighborAttention(nn.Module):
    """Multi-head self-attention across the M neighbour tokens of each atom, with an additive bias."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        a, m, h = x.shape
        q, k, v = self.qkv(x).view(a, m, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0)
        return self.proj(o.transpose(1, 2).reshape(a, m, h))


class InputBlock(nn.Module):
    """e⁰_ij = W e_ij;  e⁰ ← e⁰ + FFN(RMSNorm(e⁰));  h⁰_i = mean_j e⁰_ij;  then RMSNorm on both."""

    def __init__(self, embed: EdgeEmbedding, hidden: int, dropout: float):
        super().__init__()
        self.embed = embed
        self.edge_linear = _linear_act(embed.out_dim, hidden, dropout)
        self.edge_norm = nn.RMSNorm(hidden)
        self.edge_ffn = FeedForward(hidden, 1, dropout)
        self.out_node_norm, self.out_edge_norm = nn.RMSNorm(hidden), nn.RMSNorm(hidden)

    def forward(self, z, boo, rbf, graph: NeighborGraph):
        edge = self.edge_linear(self.embed(z, boo, rbf, graph.neighbors))
        edge = edge + self.edge_ffn(self.edge_norm(edge))
        node = _masked_mean(edge, graph.neighbor_mask)
        return self.out_node_norm(node), self.out_edge_norm(edge)


class GraphAttentionBlock(nn.Module):
    """One EScAIP layer (pre-norm, residual on node and edge streams); equations in :class:`EScAIP`."""

    def __init__(self, embed: EdgeEmbedding, hidden: int, heads: int, ffn_multiplier: int, attn_dropout: float, dropout: float):
        super().__init__()
        self.embed = embed
        self.edge_linear = _linear_act(embed.out_dim, hidden, dropout)
        self.node_linear = _linear_act(2 * hidden, hidden, dropout)
        self.message_linear = _linear_act(2 * hidden, hidden, 0.0)
        self.attention = NeighborAttention(hidden, heads, attn_dropout)
        self.angle_scale = nn.Parameter(torch.tensor(1.0))
        self.attn_norm = nn.RMSNorm(hidden)
        self.ffn_node_norm, self.ffn_edge_norm = nn.RMSNorm(hidden), nn.RMSNorm(hidden)
        self.ffn_node = FeedForward(hidden, ffn_multiplier, dropout)
        self.ffn_edge = FeedForward(hidden, ffn_multiplier, dropout)

    def forward(self, node, edge, z, boo, rbf, key_bias, cos_angle, graph: NeighborGraph):
        h = self.attn_norm(node)
        m = graph.neighbors.shape[1]
        pair = self.node_linear(torch.cat([h[graph.neighbors], h[:, None, :].expand(-1, m, -1)], dim=-1))
        edge_attr = self.edge_linear(self.embed(z, boo, rbf, graph.neighbors))
        message = self.message_linear(torch.cat([edge_attr.to(pair.dtype), pair], dim=-1))
        bias = (key_bias + self.angle_scale * cos_angle)[:, None]  # (A, 1, M, M), broadcast over heads
        edge_out = self.attention(message, bias)
        node = node + _masked_mean(edge_out, graph.neighbor_mask)
        edge = edge + edge_out
        node = node + self.ffn_node(self.ffn_node_norm(node))
        edge = edge + self.ffn_edge(self.ffn_edge_norm(edge))
        return node, edge


class Readout(nn.Module):
    """r_i = h_i + FFN(RMSNorm(h_i)),  r_ij = e_ij + FFN(RMSNorm(e_ij))."""

    def __init__(self, hidden: int, multiplier: int, dropout: float):
        super().__init__()
        self.node_norm, self.edge_norm = nn.RMSNorm(hidden), nn.RMSNorm(hidden)
        self.node_ffn = FeedForward(hidden, multiplier, dropout)
        self.edge_ffn = FeedForward(hidden, multiplier, dropout)

    def forward(self, node, edge):
        return node + self.node_ffn(self.node_norm(node)), edge + self.edge_ffn(self.edge_norm(edge))


class OutputProjection(nn.Module):
    """Concatenate the L+1 readouts, RMSNorm, Linear+GELU back to H, RMSNorm (nodes and edges separately)."""

    def __init__(self, hidden: int, num_readouts: int):
        super().__init__()
        width = hidden * num_readouts
        self.node_in_norm, self.edge_in_norm = nn.RMSNorm(width), nn.RMSNorm(width)
        self.node_proj = _linear_act(width, hidden, 0.0)
        self.edge_proj = _linear_act(width, hidden, 0.0)
        self.node_out_norm, self.edge_out_norm = nn.RMSNorm(hidden), nn.RMSNorm(hidden)

    def forward(self, nodes: list[torch.Tensor], edges: list[torch.Tensor]):
        node = self.node_out_norm(self.node_proj(self.node_in_norm(torch.cat(nodes, dim=-1))))
        edge = self.edge_out_norm(self.edge_proj(self.edge_in_norm(torch.cat(edges, dim=-1))))
        return node, edge


class ScalarHead(nn.Module):
    """y = out(x + FFN(x)) with ``out = Linear(H → 1, no bias)``."""

    def __init__(self, hidden: int, multiplier: int, dropout: float):
        super().__init__()
        self.ffn = FeedForward(hidden, multiplier, dropout)
        self.out = nn.Linear(hidden, 1, bias=False)

    def forward(self, x):
        return self.out(x + self.ffn(x))


class DirectForceHead(nn.Module):
    """F_i = m(h_i) · Σ_j (W φ(e_ij) + b) ⊙ r̂_ij — the only part of EScAIP that is not equivariant.

    ``out`` is the ``nn.Linear(H, 3)`` holding W (3 × H) and b (3,); the head is rotation-equivariant iff
    the three rows of W are equal and b₁ = b₂ = b₃ (then W φ + b is a scalar times (1, 1, 1)).
    With ``tied=True`` the rows are tied by construction: ``out`` is ``nn.Linear(H, 1)``, w_ij = w·φ(e_ij) + b
    broadcast over x, y, z, so F_i = m(h_i) Σ_j w_ij r̂_ij is exactly equivariant at the same cost.
    """

    def __init__(self, hidden: int, multiplier: int, dropout: float, tied: bool = False):
        super().__init__()
        self.ffn = FeedForward(hidden, multiplier, dropout)
        self.out = nn.Linear(hidden, 1 if tied else 3)
        self.magnitude = ScalarHead(hidden, multiplier, dropout)

    def forward(self, node, edge, graph: NeighborGraph):
        phi = edge + self.ffn(edge)  # (A, M, H)
        w = self.out(phi)  # (A, M, 3), or (A, M, 1) broadcast over x, y, z when tied
        direction = (w * graph.direction.to(w.dtype) * graph.neighbor_mask.to(w.dtype)[..., None]).sum(1)  # (A, 3)
        return direction * self.magnitude(node)


class EScAIP(nn.Module):
    r"""EScAIP V1 on padded molecules: ``forward(pos (B,N,3) Å, z (B,N), mask (B,N)) → {energy (B,), forces (B,N,3)}``.

    Graph: every atom i attends over its k = ``max_neighbors`` nearest atoms j within ``cutoff`` Å
    (:func:`~tasks.forcefield.graph.build_neighbor_graph`), bond vectors r_ij = x_i − x_j, r̂_ij = r_ij/d_ij.

    **Invariant inputs** (rebuilt with fresh weights in the input block and in every layer ℓ):

    .. math::
        \mathrm{RBF}_k(d) = \exp\big(-(d-\mu_k)^2 / 2\sigma^2\big),\quad \mu_k = k\,\tfrac{r_c}{K-1},\ \sigma = 2\,\tfrac{r_c}{K-1}

        \mathrm{BOO}_l(i) = \big\lVert \tfrac{1}{|\mathcal N_i|}\textstyle\sum_{j\in\mathcal N_i} Y_l(\hat r_{ij})\big\rVert,\quad l = 0..L_{\mathrm{BOO}}

        e^{(\ell)}_{ij} = \big[\mathrm{GELU}(W_d \mathrm{RBF}(d_{ij})),\ \mathrm{GELU}(W_s \mathrm{BOO}(j)),\ E_s(z_j),\
                         \mathrm{GELU}(W_t \mathrm{BOO}(i)),\ E_t(z_i)\big]

    **Input block**: :math:`m_{ij} = \mathrm{GELU}(W e^{(0)}_{ij});\ m \mathrel{+}= \mathrm{FFN}(\mathrm{RMSNorm}(m));\
    h_i = \mathrm{mean}_j m_{ij}`, then RMSNorm on h and m.

    **Layer ℓ** (pre-norm, residual on both streams), with :math:`\tilde h = \mathrm{RMSNorm}(h)`:

    .. math::
        u_{ij} = \mathrm{GELU}\big(W_u[\mathrm{GELU}(W_e e^{(\ell)}_{ij}),\ \mathrm{GELU}(W_n[\tilde h_j, \tilde h_i])]\big)

        o_{i\cdot} = \mathrm{MHA}\big(u_{i\cdot};\ \mathrm{bias}_{jk} = s_\ell\,\hat r_{ij}\!\cdot\!\hat r_{ik} - \infty\,[k\ \mathrm{padded}]\big)
        \quad\text{(attention across the neighbours of atom } i)

        h_i \mathrel{+}= \mathrm{mean}_j\,o_{ij},\quad m_{ij} \mathrel{+}= o_{ij},\quad
        h \mathrel{+}= \mathrm{FFN}(\mathrm{RMSNorm}(h)),\quad m \mathrel{+}= \mathrm{FFN}(\mathrm{RMSNorm}(m))

    **Readouts** after the input block and after every layer: :math:`r = x + \mathrm{FFN}(\mathrm{RMSNorm}(x))` for
    nodes and edges; the L+1 readouts are concatenated, RMSNormed and projected back to H
    (Linear + GELU + RMSNorm), giving :math:`h^{\mathrm{out}}_i, m^{\mathrm{out}}_{ij}`.

    **Heads**:

    .. math::
        E = \operatorname{reduce}_{i}\ w_E^\top\big(h^{\mathrm{out}}_i + \mathrm{FFN}(h^{\mathrm{out}}_i)\big)
        \quad(\text{reduce} = \text{mean (V1 default) or sum over the molecule's atoms})

        F_i = m(h^{\mathrm{out}}_i)\ \sum_j \big(W \phi(m^{\mathrm{out}}_{ij}) + b\big) \odot \hat r_{ij},
        \quad \phi(x) = x + \mathrm{FFN}(x),\ W \in \mathbb R^{3\times H}

    Everything up to the heads sees only invariants (distances, BOO, angle cosines, Z), so E is exactly
    rotation-invariant; the component-wise product in the force head (``force_head.out`` = W, b) is the
    only symmetry-breaking operation. ``force_head_tied=True`` ties the three rows of W (and of b), which
    makes F exactly equivariant at no extra cost (2H + 2 parameters fewer):
    :math:`F_i = m(h^{\mathrm{out}}_i) \sum_j (w^\top \phi(m^{\mathrm{out}}_{ij}) + b)\,\hat r_{ij}`.
    Outputs are in the model's own units; the task scales them (``energy_std · E + energy_mean`` eV,
    ``force_std · F`` eV/Å).

    Args:
        hidden_size, num_layers, num_heads: H, L and attention heads (6M: 128, 6, 8).
        atom_embedding_size: element embedding width (128). ``max_num_elements``: embedding rows (110).
        edge_distance_expansion_size / edge_distance_embedding_size: RBF count (600) and its embedding (512).
        node_direction_expansion_size / node_direction_embedding_size: L_BOO + 1 (10) and its embedding (64).
        cutoff: neighbour cutoff in Å (12). max_neighbors: k (20).
        ffn_multiplier / readout_multiplier / output_multiplier: FFN widths ×H in layers, readouts, heads (2).
        attn_dropout (0.1), mlp_dropout (0.05): dropout rates (off in ``eval()``).
        energy_reduce: ``"mean"`` (EScAIP V1) or ``"sum"``.
        energy_head_gain: xavier gain of the energy-head linears (0.01: energies start near the mean).
        force_head_gain: xavier gain of the force head's direction linear ``force_head.out`` (1: plain
            xavier; < 1 starts the forces small while the magnitude MLP stays O(1), so training does not
            begin by collapsing both factors of F = direction · magnitude towards the zero-force saddle).
        force_head_tied: tie the three rows of the force head's direction linear (exactly equivariant forces).
    """

    def __init__(
        self,
        hidden_size: int = 128,
        num_layers: int = 6,
        num_heads: int = 8,
        atom_embedding_size: int = 128,
        edge_distance_expansion_size: int = 600,
        edge_distance_embedding_size: int = 512,
        node_direction_expansion_size: int = 10,
        node_direction_embedding_size: int = 64,
        cutoff: float = 12.0,
        max_neighbors: int = 20,
        max_num_elements: int = 110,
        ffn_multiplier: int = 2,
        readout_multiplier: int = 2,
        output_multiplier: int = 2,
        attn_dropout: float = 0.1,
        mlp_dropout: float = 0.05,
        energy_reduce: str = "mean",
        energy_head_gain: float = 0.01,
        force_head_gain: float = 1.0,
        force_head_tied: bool = False,
    ):
        super().__init__()
        if energy_reduce not in ("mean", "sum"):
            raise ValueError(f"energy_reduce must be 'mean' or 'sum', got {energy_reduce!r}")
        self.cutoff, self.max_neighbors = float(cutoff), int(max_neighbors)
        self.boo_lmax = int(node_direction_expansion_size) - 1
        self.energy_reduce = energy_reduce
        self.hparams = {k: v for k, v in locals().items() if k not in ("self", "__class__")}

        def embedding() -> EdgeEmbedding:
            return EdgeEmbedding(
                max_num_elements,
                atom_embedding_size,
                edge_distance_expansion_size,
                edge_distance_embedding_size,
                node_direction_expansion_size,
                node_direction_embedding_size,
                mlp_dropout,
            )

        self.rbf = GaussianSmearing(cutoff, edge_distance_expansion_size)
        self.input_block = InputBlock(embedding(), hidden_size, mlp_dropout)
        self.blocks = nn.ModuleList(
            GraphAttentionBlock(embedding(), hidden_size, num_heads, ffn_multiplier, attn_dropout, mlp_dropout) for _ in range(num_layers)
        )
        self.readouts = nn.ModuleList(Readout(hidden_size, readout_multiplier, mlp_dropout) for _ in range(num_layers + 1))
        self.output_projection = OutputProjection(hidden_size, num_layers + 1)
        self.energy_head = ScalarHead(hidden_size, output_multiplier, mlp_dropout)
        self.force_head = DirectForceHead(hidden_size, output_multiplier, mlp_dropout, tied=bool(force_head_tied))
        self.reset_parameters(energy_head_gain, force_head_gain)

    def reset_parameters(self, energy_head_gain: float = 0.01, force_head_gain: float = 1.0) -> None:
        """Xavier-uniform linears with zero biases (gain ``energy_head_gain`` in the energy head and
        ``force_head_gain`` in ``force_head.out``),
        element embeddings U(−0.001, 0.001), angle-bias scales 1."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.uniform_(module.weight, -0.001, 0.001)
            elif isinstance(module, nn.RMSNorm):
                module.reset_parameters()
        for module in self.energy_head.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, gain=energy_head_gain)
        nn.init.xavier_uniform_(self.force_head.out.weight, gain=force_head_gain)
        for block in self.blocks:
            nn.init.ones_(block.angle_scale)

    def forward(self, pos: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pos (B, N, 3)`` Å, ``z (B, N)`` atomic numbers, ``mask (B, N)`` real atoms →
        ``energy (B,)`` and ``forces (B, N, 3)`` (0 on padding), in model units."""
        b, n, _ = pos.shape
        graph = build_neighbor_graph(pos, mask, self.cutoff, self.max_neighbors)
        zp = z.reshape(-1)[graph.atom_index].long()
        rbf = self.rbf(graph.dist)
        boo = bond_orientational_order(graph.direction, graph.neighbor_mask, self.boo_lmax)
        cos_angle = graph.direction @ graph.direction.transpose(1, 2)  # (A, M, M): r̂_ij · r̂_ik
        key_bias = torch.zeros_like(graph.dist).masked_fill(~graph.neighbor_mask, float("-inf"))[:, None, :]  # (A, 1, M)

        node, edge = self.input_block(zp, boo, rbf, graph)
        node_readouts, edge_readouts = [], []
        r_node, r_edge = self.readouts[0](node, edge)
        node_readouts.append(r_node)
        edge_readouts.append(r_edge)
        for block, readout in zip(self.blocks, self.readouts[1:]):
            node, edge = block(node, edge, zp, boo, rbf, key_bias, cos_angle, graph)
            r_node, r_edge = readout(node, edge)
            node_readouts.append(r_node)
            edge_readouts.append(r_edge)
        node, edge = self.output_projection(node_readouts, edge_readouts)
        with torch.autocast(device_type=pos.device.type, enabled=False):  # heads and reductions in full precision
            return self._heads(node.to(pos.dtype), edge.to(pos.dtype), graph, b, n)

    def _heads(self, node: torch.Tensor, edge: torch.Tensor, graph: NeighborGraph, b: int, n: int) -> dict[str, torch.Tensor]:
        device = node.device
        atom_energy = self.energy_head(node).squeeze(-1)  # (A,)
        energy = torch.zeros(b, dtype=atom_energy.dtype, device=device).index_add_(0, graph.molecule, atom_energy)
        if self.energy_reduce == "mean":
            counts = torch.zeros(b, dtype=atom_energy.dtype, device=device).index_add_(0, graph.molecule, torch.ones_like(atom_energy))
            energy = energy / counts.clamp_min(1.0)
        atom_forces = self.force_head(node, edge, graph)  # (A, 3)
        forces = atom_forces.new_zeros(b * n, 3).index_copy_(0, graph.atom_index, atom_forces).reshape(b, n, 3)
        return {"energy": energy, "forces": forces}

    def extra_repr(self) -> str:
        h = self.hparams
        return (
            f"hidden={h['hidden_size']}, layers={h['num_layers']}, heads={h['num_heads']}, cutoff={h['cutoff']} Å, "
            f"k={h['max_neighbors']}, energy_reduce={h['energy_reduce']}, force_head_tied={h['force_head_tied']}"
        )


def parameter_count(**kwargs) -> int:
    """Number of parameters of ``EScAIP(**kwargs)``, counted on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = EScAIP(**kwargs)
    return sum(p.numel() for p in model.parameters())
