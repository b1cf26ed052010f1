"""A small steerable 3-D CNN denoiser on voxel grids, from e3nn's voxel convolution and gates.

Built on :class:`e3nn.nn.models.v2104.voxel_convolution.Convolution` (Weiler et al. 2018's steerable
kernels in e3nn's form) and :class:`e3nn.nn.Gate`. Equations: :class:`SteerableCNN`.
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import Gate
from e3nn.nn.models.v2104.voxel_convolution import Convolution
from e3nn.o3 import FullyConnectedTensorProduct
from torch import nn

__all__ = ["SteerableCNN"]


def _convolution(irreps_in, irreps_out, irreps_sh, diameter: float, num_radial_basis: int) -> Convolution:
    """e3nn's voxel convolution (unit voxel steps) with its tensor product rebuilt with ``left_right`` compiled too:
    e3nn builds it with ``compile_left_right=False``, and such a module cannot be deep-copied (the EMA copy of
    the training loop fails re-tracing the stub). Same paths, same weight layout, same kernels."""
    conv = Convolution(irreps_in, irreps_out, irreps_sh, diameter, num_radial_basis)
    conv.tp = FullyConnectedTensorProduct(conv.irreps_in, conv.irreps_sh, conv.irreps_out, shared_weights=False, compile_right=True)
    if conv.tp.weight_numel != conv.weight.shape[1]:  # pragma: no cover - e3nn changed its construction
        raise RuntimeError("e3nn's voxel convolution changed its tensor product; cannot rebuild it")
    return conv


class SteerableCNN(nn.Module):
    r"""Steerable CNN denoiser: ``forward(y (B, C, L, L, L)) → x̂`` (same shape), C element channels as scalars.

    Features are fields of irreps ``channels × (0e + 1o + 2e + …)`` up to ``lmax`` on the voxel grid.
    A steerable convolution maps irreps ``ρ_in`` to ``ρ_out`` with a kernel built from the lattice
    offsets q ∈ {−s … s}³ (s = ⌊diameter/2⌋ voxels):

    .. math::
        K(q) = \frac{1}{(2s+1)^3}\sum_{k} \varphi_k(|q|)\ \big[\textstyle\sum_{\text{paths}} W_{k,\text{path}}\,
        C^{\text{path}}\, Y(\hat q)\big],\qquad (K \star h)(p) = \sum_q K(q)\,h(p + q) + W_{sc}\,h(p)

    (φ_k: e3nn's ``smooth_finite`` radial basis on [0, diameter/2]; C: Clebsch–Gordan paths of the fully
    connected tensor product ρ_in ⊗ Y → ρ_out; W_sc: an equivariant linear self-connection). Because
    K(gq) = D_out(g) K(q) D_in(g)⁻¹ for every rotation g that maps the lattice to itself, every layer —
    and the network, with zero padding — is exactly equivariant under the 24 cube rotations (to round-off),
    and approximately under all rotations (discretisation).

    Precision: e3nn tabulates the kernel basis (Y and φ on the lattice) and the Clebsch–Gordan coefficients
    at construction in the default dtype, so a float64 check needs the model *built* in float64
    (``torch.set_default_dtype(torch.float64)``); one built in float32 and cast keeps float32-rounded tables
    and is cube-equivariant only to ~1e-8.

    Network (no down-sampling, no normalisation):

    .. math::
        h^{(0)} = y,\qquad h^{(\ell+1)} = \mathrm{Gate}\big(K_\ell \star h^{(\ell)}\big),\qquad \hat x = K_{\mathrm{out}} \star h^{(L)}

    with the gate (SiLU on scalars; each l > 0 irrep times σ of one extra scalar) applied per voxel, and
    ``K_out`` onto ``C × 0e``. Receptive field: (L + 1)·s voxels in each direction (the U-Net's is the
    whole box). Cost per layer: a dense 3-D convolution with ``dim(ρ_out) × dim(ρ_in) × (2s+1)³`` weights
    per voxel — ~(lmax + 1)² times the channels of a plain CNN with the same multiplicity.

    Args:
        n_elements: input and output channels C. channels: multiplicity of every irrep. lmax: highest degree.
        num_layers: L. diameter: kernel diameter in voxels (5 → 5³ offsets). num_radial_basis: φ_k count.
        head_gain: factor on the output convolution's initial weights (< 1 starts x̂ near the empty grid,
            as the tiny U-Net preset does).
    """

    def __init__(
        self,
        n_elements: int = 8,
        channels: int = 8,
        lmax: int = 2,
        num_layers: int = 3,
        diameter: float = 5.0,
        num_radial_basis: int = 3,
        head_gain: float = 1.0,
    ):
        super().__init__()
        if num_layers < 1 or lmax < 1:
            raise ValueError(f"SteerableCNN needs num_layers >= 1 and lmax >= 1 (got {num_layers}, {lmax})")
        self.n_elements = int(n_elements)
        irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        hidden = o3.Irreps([(int(channels), (deg, (-1) ** deg)) for deg in range(int(lmax) + 1)])
        scalars = o3.Irreps([(m, ir) for m, ir in hidden if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in hidden if ir.l > 0])
        irreps = o3.Irreps(f"{self.n_elements}x0e")
        self.convs, self.gates = nn.ModuleList(), nn.ModuleList()
        for _ in range(num_layers):
            gate = Gate(scalars, [nn.functional.silu], o3.Irreps(f"{gated.num_irreps}x0e"), [torch.sigmoid], gated)
            self.convs.append(_convolution(irreps, gate.irreps_in, irreps_sh, diameter, num_radial_basis))
            self.gates.append(gate)
            irreps = gate.irreps_out
        self.head = _convolution(irreps, f"{self.n_elements}x0e", irreps_sh, diameter, num_radial_basis)
        with torch.no_grad():
            self.head.weight.mul_(float(head_gain))
            for p in self.head.sc.parameters():
                p.mul_(float(head_gain))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() != 5 or y.shape[1] != self.n_elements:
            raise ValueError(f"expected a grid (B, {self.n_elements}, L, L, L), got {tuple(y.shape)}")
        h = y
        for conv, gate in zip(self.convs, self.gates):
            h = gate(conv(h).movedim(1, -1)).movedim(-1, 1)
        return self.head(h)
