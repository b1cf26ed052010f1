"""Rectified-flow pieces of Proteina's Cα model: noise, interpolant, time sampling, loss weight, sampler.

Conventions (Proteina, ``flow_matching/r3n_fm.py``): coordinates in **nm**; ``t = 0`` is noise and
``t = 1`` is data;

* noise ``x0 ~ N(0, I)`` per coordinate, masked and centred (zero centre of mass over real residues);
* interpolant ``x_t = (1 − t)·x0 + t·x1``, so the velocity is ``v = dx_t/dt = x1 − x0``;
* the network predicts ``v̂``; its clean-structure estimate is ``x̂1 = x_t + (1 − t)·v̂``;
* ``t ~ 0.98·Beta(1.9, 1) + 0.02·U(0, 1)`` (``mix_up02_beta``: skewed to the data end);
* per-sample loss ``‖x̂1 − x1‖² / ((1 − t)² + ε)`` averaged over real residues and xyz. Because
  ``x̂1 − x1 = (1 − t)(v̂ − v)`` exactly, this equals ``w(t)·‖v̂ − v‖²`` with
  ``w(t) = (1 − t)² / ((1 − t)² + ε) ∈ [0, 1)``: the velocity MSE up to ε (w = 0.999 at t = 0.9,
  0.909 at t = 0.99). :func:`weighted_velocity_loss` evaluates it in that velocity form, which is a
  non-negatively weighted squared error in ``v̂`` (the twirl decomposition's exact "quadratic" case).

Random draws take an explicit CPU :class:`torch.Generator` and happen in float64 before any cast, so a
seed gives the same noise and times on every device and dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.special import betaincinv

from equivrepro.atomic import atomic_write_text
from equivrepro.rotations import center_points

__all__ = [
    "centered_gaussian_noise",
    "sample_flow_times",
    "interpolate",
    "velocity_target",
    "x1_from_velocity",
    "loss_weight",
    "masked_mse",
    "weighted_velocity_loss",
    "time_grid",
    "euler_sample",
    "write_ca_pdb",
]

VelocityFn = Callable[..., torch.Tensor]


def centered_gaussian_noise(
    mask: torch.Tensor, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``x0 (B, N, 3)`` nm: standard normal per coordinate, zero on padding, centred over ``mask (B, N)``."""
    z = torch.randn(tuple(mask.shape) + (3,), generator=generator, dtype=torch.float64)
    return center_points(z, mask.cpu()).to(dtype=dtype, device=mask.device)


def sample_flow_times(
    n: int,
    generator: torch.Generator | None = None,
    beta: Sequence[float] = (1.9, 1.0),
    uniform_fraction: float = 0.02,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``t (n,)`` from ``(1 − p)·Beta(a, b) + p·U(0, 1)`` with ``p = uniform_fraction`` (Proteina: 0.02, (1.9, 1)).

    Beta draws use the inverse CDF of uniform draws (exact, generator-driven).
    """
    a, b = float(beta[0]), float(beta[1])
    u = torch.rand(3, n, generator=generator, dtype=torch.float64)
    t_beta = torch.from_numpy(np.asarray(betaincinv(a, b, u[0].numpy()), dtype=np.float64))
    t = torch.where(u[2] < uniform_fraction, u[1], t_beta)
    return t.to(dtype=dtype, device=device)


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(x.dtype).reshape(t.shape + (1,) * (x.dim() - t.dim()))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 − t)·x0 + t·x1`` for ``x0, x1 (B, N, 3)`` and ``t (B,)``."""
    tb = _bcast(t, x1)
    return (1 - tb) * x0 + tb * x1


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """``v = x1 − x0`` (nm per unit time)."""
    return x1 - x0


def x1_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Clean-structure estimate ``x̂1 = x_t + (1 − t)·v̂``."""
    return x_t + (1 - _bcast(t, x_t)) * v


def loss_weight(t: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Proteina's weight of the x1-space error, ``1 / ((1 − t)² + ε)``, shape of ``t``."""
    return 1.0 / ((1 - t) ** 2 + eps)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of the squared error over real residues and xyz: ``(B,)``."""
    m = mask.to(pred.dtype)
    se = ((pred - target) ** 2).sum(-1) * m
    return se.sum(-1) / (3 * m.sum(-1)).clamp_min(1.0)


def weighted_velocity_loss(v_pred: torch.Tensor, v: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample ``‖x̂1 − x1‖² / ((1 − t)² + ε)`` (mean over residues, xyz), evaluated as ``w(t)·MSE(v̂, v)``.

    ``w(t) = (1 − t)²·loss_weight(t)``; see the module docstring for the identity. Returns ``(B,)``.
    """
    tt = t.to(v_pred.dtype)
    w = (1 - tt) ** 2 * loss_weight(tt, eps)
    return w * masked_mse(v_pred, v, mask)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------
def time_grid(steps: int, schedule: str = "log", p: float = 2.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``steps + 1`` times from 0 to 1: ``"uniform"``, or ``"log"`` (Proteina: steps shrink towards t = 1;
    ``t_i ∝ 1 − 10^{−p·i/steps}`` rescaled to [0, 1])."""
    if steps < 1:
        raise ValueError(f"need at least one step, got {steps}")
    if schedule == "uniform":
        return torch.linspace(0.0, 1.0, steps + 1, dtype=dtype)
    if schedule == "log":
        t = 1.0 - torch.logspace(0.0, -float(p), steps + 1, dtype=torch.float64)
        t = (t - t[0]) / (t[-1] - t[0])
        return t.to(dtype)
    raise ValueError(f"unknown time schedule {schedule!r}: use 'uniform' or 'log'")


@torch.no_grad()
def euler_sample(
    velocity_fn: VelocityFn,
    mask: torch.Tensor,
    residue_index: torch.Tensor | None = None,
    chain_break: torch.Tensor | None = None,
    *,
    steps: int = 400,
    schedule: str = "log",
    log_p: float = 2.0,
    self_conditioning: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Integrate ``dx/dt = v̂(x, t)`` from centred noise at t = 0 to t = 1 with Euler steps (an ODE).

    ``velocity_fn(x_t, t, x_sc, residue_index, chain_break, mask)`` is the model's forward
    (``x_sc`` is ``None`` without self-conditioning, else the previous step's ``x̂1``). The state is
    re-centred after every step. Returns ``x (B, N, 3)`` in nm, zero on padding.
    """
    b, n = mask.shape
    device = mask.device
    if residue_index is None:
        residue_index = torch.arange(1, n + 1, device=device).expand(b, n)
    if chain_break is None:
        chain_break = torch.zeros(b, n, device=device)
    x = centered_gaussian_noise(mask, generator, dtype=dtype)
    ts = time_grid(steps, schedule, log_p)
    x_sc = None
    for i in range(steps):
        t = torch.full((b,), float(ts[i]), dtype=dtype, device=device)
        v = velocity_fn(x, t, x_sc, residue_index, chain_break, mask).to(dtype)
        if self_conditioning:
            x_sc = x1_from_velocity(x, v, t)
        x = center_points(x + float(ts[i + 1] - ts[i]) * v, mask)
    return x


def write_ca_pdb(
    path: str | Path, ca_nm: torch.Tensor, mask: torch.Tensor | None = None, chain: str = "A", residue_name: str = "ALA"
) -> Path:
    """Write a Cα-only backbone ``ca_nm (N, 3)`` (nm) as a PDB file in Å, atomically.

    Masked-out rows are skipped; residues are numbered 1.. in order, with CONECT-free ATOM records
    (viewers draw the trace from consecutive Cα).
    """
    path = Path(path)
    xyz = (ca_nm.detach().double().cpu() * 10.0).numpy()  # nm → Å
    keep = np.ones(len(xyz), dtype=bool) if mask is None else mask.detach().cpu().numpy().astype(bool)
    xyz = xyz[keep]
    if not np.isfinite(xyz).all():
        raise ValueError(f"{path}: non-finite coordinates in the backbone to write")
    if np.abs(xyz).max(initial=0.0) >= 9999.0:
        raise ValueError(f"{path}: coordinates beyond ±9999 Å do not fit the PDB format")
    lines = ["REMARK   1 CA-ONLY BACKBONE GENERATED BY EQUIVREPRO (COORDINATES IN ANGSTROM)"]
    for i, (x, y, z) in enumerate(xyz, start=1):
        lines.append(f"ATOM  {i:5d}  CA  {residue_name:>3s} {chain:1s}{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C  ")
    lines += ["TER", "END", ""]
    return atomic_write_text(path, "\n".join(lines))
