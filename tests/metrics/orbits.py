"""Functions on SO(3) with known degree content, for the tests of :mod:`equivrepro.metrics.spectral`.

Through e3nn's real Wigner matrices D^l (orthogonal, (2l+1)×(2l+1)). Schur orthogonality,
∫ D^l(g) v vᵀ D^l(g)ᵀ dg = ‖v‖²/(2l+1) · I, gives every expected value below:

* a *direct orbit* ``z_g = Σ_parts A D^l(g) v + c`` (one flat output of size D, loss weights w) has
  E_l = ‖v‖² tr(Aᵀ diag(w) A)/(2l+1) per part, all of it at degree l, and E_0 = ‖c‖²_w (for A = I, w = 1:
  E_l = ‖v‖²); the same holds for D^l(g)ᵀ = D^l(g⁻¹);
* :class:`FrameModel` on a :class:`~equivrepro.testing.pointcloud.PointCloudTask` batch of frames puts the
  same content into a real model's untwisted predictions (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3
from torch import nn

from equivrepro.task import Batch, LossTerm, Prediction

__all__ = ["wigner", "OrbitPart", "direct_orbit", "expected_degree_power", "TOY_TERM", "toy_inputs", "FrameModel", "frame_batch"]


def wigner(deg: int, r: torch.Tensor) -> torch.Tensor:
    """Real Wigner matrix D^l(R) ``(..., 2l+1, 2l+1)`` of rotations ``(..., 3, 3)`` in e3nn's basis (D^1(R) = R).

    From e3nn's real spherical harmonics, Y_l(R x) = D^l(R) Y_l(x): on 2(2l+1) fixed generic unit vectors x_p,
    Dᵀ = pinv([Y_l(x_p)]) [Y_l(R x_p)] (exact, fast for large batches; e3nn's own ``D_from_matrix`` goes through
    Euler angles and matrix exponentials). e3nn evaluates in torch's default dtype: use float64 (the ``f64``
    fixture) for round-off at 1e-15 rather than 1e-7."""
    x = torch.randn(2 * (2 * deg + 1), 3, generator=torch.Generator().manual_seed(deg), dtype=torch.float64).to(r.dtype)
    x = x / x.norm(dim=-1, keepdim=True)
    y = o3.spherical_harmonics(deg, x, normalize=False)  # (P, 2l+1)
    yr = o3.spherical_harmonics(deg, x @ r.transpose(-1, -2), normalize=False)  # (..., P, 2l+1)
    return (torch.linalg.pinv(y) @ yr).transpose(-1, -2)


class OrbitPart:
    """One degree-l summand ``A D^l(g) v`` (or ``A D^l(g)ᵀ v`` with ``inverse=True``)."""

    def __init__(self, deg: int, a: torch.Tensor, v: torch.Tensor, inverse: bool = False):
        if a.shape[-1] != 2 * deg + 1 or v.shape != (2 * deg + 1,):
            raise ValueError(f"degree {deg} needs A (D, {2 * deg + 1}) and v ({2 * deg + 1},)")
        self.degree, self.a, self.v, self.inverse = deg, a, v, inverse

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        d = wigner(self.degree, r)
        if self.inverse:
            d = d.transpose(-1, -2)
        return (self.a @ (d @ self.v)[..., None])[..., 0]


def direct_orbit(rotations: torch.Tensor, parts: Sequence[OrbitPart], const: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"y": (B, K, D)}`` = Σ_parts A D^l(R_bk) v + c for rotations ``(B, K, 3, 3)``."""
    z = const.expand(rotations.shape[:2] + const.shape).clone()
    for p in parts:
        z = z + p(rotations)
    return {"y": z}


def expected_degree_power(part: OrbitPart, w: torch.Tensor) -> float:
    """E_l of ``part`` under weights ``w (D,)``: ‖v‖² tr(Aᵀ diag(w) A)/(2l+1)."""
    return float(part.v.pow(2).sum() * (w[:, None] * part.a.pow(2)).sum() / (2 * part.degree + 1))


def _toy_fn(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
    return (batch["w"] * (pred["y"] - target["y"]).pow(2)).sum(-1)


#: A weighted squared error on a flat output ``y (B, D)`` with weights ``batch["w"] (B, D)``.
TOY_TERM = LossTerm("toy", _toy_fn, quadratic=True)


def toy_inputs(w: torch.Tensor, target: torch.Tensor, b: int) -> tuple[Prediction, Batch]:
    """Target and batch for :data:`TOY_TERM`: ``w (D,)`` and ``target (D,)`` repeated for ``b`` samples."""
    return {"y": target.expand(b, -1).clone()}, {"w": w.expand(b, -1).clone(), "y": target.expand(b, -1).clone()}


class FrameModel(nn.Module):
    """A "model" that reads its input frame and outputs per-point vectors with known degree content.

    Input: ``pos (B, 3, 3)`` whose rows are the columns of a rotation, ``pos = Rᵀ`` (after the task rotates
    the batch by g, ``pos = (g Q)ᵀ`` for the sample's frame Q). Output row n: ``R (c_n + Σ_parts A_n D^l(R) v)``.
    Its untwisted prediction is h_n(g) = Q (c_n + Σ A_n D^l(g Q) v): a constant (the equivariant part) plus,
    per part, degree-l content E_l = ‖v‖² Σ_n ‖A_n‖²_F / (3 (2l+1)) under the task's mean-over-points MSE.
    ``parts[i].a`` is ``(3 points, 3, 2l+1)``; ``const (3, 3)``."""

    def __init__(self, parts: Sequence[OrbitPart], const: torch.Tensor):
        super().__init__()
        self.parts = list(parts)
        self.register_buffer("const", const)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        r = pos.transpose(-1, -2)
        u = self.const.expand(pos.shape[:-2] + self.const.shape).clone()  # (B, 3, 3): rows c_n
        for p in self.parts:
            d = wigner(p.degree, r)  # (B, 2l+1, 2l+1)
            u = u + torch.einsum("nij,bjk,k->bni", p.a, d, p.v)
        return u @ r.transpose(-1, -2)  # row n: (R u_n)ᵀ


def frame_batch(frames: torch.Tensor) -> Batch:
    """A :class:`~equivrepro.testing.pointcloud.PointCloudTask` batch of frames ``(B, 3, 3)`` (pos = Qᵀ)."""
    pos = frames.transpose(-1, -2).contiguous()
    return {"pos": pos, "target": 2 * pos}
