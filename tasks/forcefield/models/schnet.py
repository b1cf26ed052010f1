"""SchNet (torch-geometric) as an invariant-energy force field with forces by autograd, on padded molecules.

Uses :class:`torch_geometric.nn.models.SchNet` unchanged (Schütt et al., "SchNet – A deep learning
architecture for molecules and materials", J. Chem. Phys. 148, 241722 (2018)); only its neighbour graph
is replaced: PyG's default ``radius_graph`` needs pyg-lib / torch-cluster, which do not install here, so
SchNet gets an ``interaction_graph`` callable built on the plain-torch
:func:`~tasks.forcefield.graph.build_neighbor_graph`. Equations: :class:`SchNetForceField`.
"""

from __future__ import annotations

import torch
from torch import nn

from tasks.forcefield.graph import build_neighbor_graph

__all__ = ["SchNetForceField", "PaddedInteractionGraph"]


class PaddedInteractionGraph(nn.Module):
    """PyG ``interaction_graph``: ``(pos (A, 3) Å, batch (A,) sorted) → (edge_index (2, E), edge_weight (E,) Å)``.

    Re-pads the packed atoms by molecule and takes the neighbour list of
    :func:`~tasks.forcefield.graph.build_neighbor_graph` (the ``max_neighbors`` nearest within ``cutoff``;
    the singleton patch is dropped). ``edge_index[0]`` is the sender j, ``edge_index[1]`` the receiver i
    (PyG's source → target flow); ``edge_weight = |x_i − x_j|`` is differentiable in ``pos``.
    """

    def __init__(self, cutoff: float, max_neighbors: int):
        super().__init__()
        self.cutoff, self.max_neighbors = float(cutoff), int(max_neighbors)

    def forward(self, pos: torch.Tensor, batch: torch.Tensor):
        if pos.shape[0] == 0:
            return pos.new_zeros(2, 0, dtype=torch.long), pos.new_zeros(0)
        if (batch[1:] < batch[:-1]).any():
            raise ValueError("PaddedInteractionGraph needs atoms sorted by molecule (batch must be non-decreasing)")
        b = int(batch.max()) + 1
        counts = torch.bincount(batch, minlength=b)
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(pos.shape[0], device=pos.device) - start[batch]
        n = int(counts.max())
        padded = pos.new_zeros(b, n, 3).index_put((batch, slot), pos)
        mask = torch.zeros(b, n, dtype=torch.bool, device=pos.device).index_put((batch, slot), torch.ones_like(batch, dtype=torch.bool))
        graph = build_neighbor_graph(padded, mask, self.cutoff, self.max_neighbors)  # packed order = pos order
        own = torch.arange(graph.num_atoms, device=pos.device)[:, None]
        real = graph.neighbor_mask & (graph.neighbors != own)
        receiver, k = real.nonzero(as_tuple=True)
        sender = graph.neighbors[receiver, k]
        return torch.stack([sender, receiver]), graph.dist[receiver, k]


class SchNetForceField(nn.Module):
    r"""SchNet energy and conservative forces: ``forward(pos (B,N,3) Å, z (B,N), mask (B,N)) → {energy (B,), forces (B,N,3)}``.

    With h⁰_i = E(z_i), Gaussian distance features e_k(r) = exp(−γ(r − μ_k)²) on [0, r_c] and the cosine
    cutoff c(r) = ½(cos(πr/r_c) + 1), each of the T interaction blocks updates

    .. math::
        h_i \leftarrow h_i + W_3\,\mathrm{ssp}\Big(W_2 \sum_{j\in\mathcal N(i)} (W_1 h_j)\odot
        \big(\mathrm{MLP}(e(r_{ij}))\,c(r_{ij})\big)\Big),\qquad \mathrm{ssp}(x) = \ln(\tfrac12 e^x + \tfrac12)

    then ε_i = w₂ᵀ ssp(W₄ h_i) and E = reduce_i ε_i (``readout``: ``"mean"`` like EScAIP V1, or ``"add"``).
    Only distances enter, so E is exactly invariant and

    .. math::
        F_i = -s\,\partial E / \partial x_i

    exactly equivariant. The gradient is taken with ``create_graph`` whenever autograd is on at the call
    (training: the force loss back-propagates through a second derivative, roughly 2–3× the step cost of an
    energy-only pass); under ``no_grad`` the outputs are detached. s = ``gradient_scale``: the physically
    consistent value is ``energy_std / force_std`` of the task (Å), because the task scales E and F by separate
    normalisers; ``None`` learns s (initialised at 1). Outputs are in model units.

    Args:
        hidden_channels, num_filters, num_interactions, num_gaussians: SchNet's widths, T and the number of
            Gaussians (PyG defaults 128, 128, 6, 50). cutoff: r_c in Å. max_neighbors: neighbour-list width
            (keep it above any atom's neighbour count: the cap by distance rank is not smooth in the positions).
        readout: ``"mean"`` or ``"add"``. gradient_scale: s (``None``: learnable).
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_interactions: int = 6,
        num_gaussians: int = 50,
        cutoff: float = 5.0,
        max_neighbors: int = 64,
        readout: str = "mean",
        gradient_scale: float | None = 1.0,
    ):
        super().__init__()
        from torch_geometric.nn.models import SchNet

        if readout not in ("mean", "add"):
            raise ValueError(f"readout must be 'mean' or 'add', got {readout!r}")
        self.hparams = {k: v for k, v in locals().items() if k not in ("self", "__class__", "SchNet")}
        self.interaction_graph = PaddedInteractionGraph(cutoff, max_neighbors)
        self.schnet = SchNet(
            hidden_channels=hidden_channels,
            num_filters=num_filters,
            num_interactions=num_interactions,
            num_gaussians=num_gaussians,
            cutoff=cutoff,
            interaction_graph=self.interaction_graph,
            readout=readout,
        )
        if gradient_scale is None:
            self.gradient_scale = nn.Parameter(torch.tensor(1.0))
        else:
            self.register_buffer("gradient_scale", torch.tensor(float(gradient_scale)))

    def forward(self, pos: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pos (B, N, 3)`` Å, ``z (B, N)``, ``mask (B, N)`` → ``energy (B,)``, ``forces (B, N, 3)`` (0 on padding)."""
        b, n, _ = pos.shape
        mask = mask.bool()
        grad_on = torch.is_grad_enabled()
        with torch.enable_grad():
            x = pos if pos.requires_grad else pos.detach().requires_grad_(True)
            molecule = torch.arange(b, device=pos.device)[:, None].expand(b, n)[mask]
            out = self.schnet(z[mask].long(), x[mask], molecule).squeeze(-1)  # (molecules up to the last non-empty one,)
            energy = out.new_zeros(b)
            energy = energy.index_copy(0, torch.arange(out.shape[0], device=pos.device), out)
            (dedx,) = torch.autograd.grad(energy.sum(), x, create_graph=grad_on)
        forces = -self.gradient_scale.to(dedx.dtype) * dedx * mask[..., None].to(dedx.dtype)
        if not grad_on:
            energy, forces = energy.detach(), forces.detach()
        return {"energy": energy, "forces": forces}

    def extra_repr(self) -> str:
        h = self.hparams
        return f"cutoff={h['cutoff']} Å, max_neighbors={h['max_neighbors']}, readout={h['readout']}"
