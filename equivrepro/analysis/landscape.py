"""2-D loss landscapes of L_mean and L_equiv along Hessian eigenvectors (paper §6.1).

For a direction *source* s ∈ {mean, equiv}, take the unit eigenvectors of ∇²L_s at θ_S of the
smallest positive eigenvalue (``d_min``, λ⁺_min as in :mod:`equivrepro.analysis.hessian`) and of the
largest eigenvalue (``d_max``), and evaluate **both** losses on the grid

    θ_S(i, j) = θ_S⁰ + a_i · d_min + a_j · d_max,   a = linspace(−step·n/2, +step·n/2, n)

(axis 0 = min-positive eigenvector, axis 1 = max eigenvector; the paper: n = 20, step = 0.00164 for
the force field and 0.002 for flow matching at step 500). The paper's figures show each loss along its
*own* Hessian's eigenvectors — :meth:`Landscape.own` — and the other pairings come for free from the
same forward passes (``surfaces[source][loss]``). For even n the grid does not contain a = 0; the
losses at θ_S⁰ are stored separately as ``centre`` (they are computed with exactly the checkpoint's
values). Eigenvectors are normalised to unit length with the sign that makes their largest-magnitude
entry positive.

Each surface gets a least-squares quadratic fit
``z ≈ c + c_x x + c_y y + c_xx x² + c_xy x y + c_yy y²`` (its R², and the curvatures c_xx, c_yy, ≈ λ/2
along an eigenvector) and a smoothness ratio: the mean absolute second difference along both axes
divided by the surface's range: 4/(n−1)² (0.011 at n = 20) for a noiseless bowl a x² + b y² centred on
the grid, ≈ 0.3 for white noise.

Frozen and redrawn. The surfaces above are **frozen**: every grid point sees the same held-out samples, task
randomness and rotations, so L is a deterministic function of θ_S (for a linear head an exact quadratic: R² = 1
by construction). :func:`redrawn_landscape` evaluates the same grid with all three **redrawn at every grid point**
(a fresh :func:`~equivrepro.analysis.heldout.freeze_heldout` draw per point): the stochastic objective an optimiser
sees. Its ``noise`` — the standard deviation of the losses over ``centre_draws`` independent draws at θ_S⁰ —
tells evaluation noise from curvature: a frozen surface whose range is below that noise is curvature the
optimiser cannot see at this scale, and a redrawn surface whose quadratic-fit residual SD matches the noise is
"quadratic plus noise".

Cost. Each grid point is one evaluation of the losses (a K-rotation forward pass of the held-out
batches). With ``points_per_call = m > 1`` the frozen grid is evaluated m points at a time under
:func:`torch.func.vmap`: everything that does not depend on θ_S (for an output-head subset: the whole
trunk) is computed once per call instead of once per point, which makes a 20×20 landscape of a head
cost about as much as a few evaluations. Memory grows with m for subsets deep in the network. Models
whose forward pass vmap cannot trace fall back to one point at a time (with a warning). A redrawn point
cannot share anything with another, so a redrawn grid costs one full forward pass per point.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from equivrepro.analysis.hessian import DEFAULT_REL_THRESHOLD, Spectrum, hessian_spectrum
from equivrepro.analysis.subset import LOSS_NAMES, SubsetLosses
from equivrepro.atomic import atomic_write

__all__ = [
    "Landscape",
    "loss_landscape",
    "redrawn_landscape",
    "evaluate_points",
    "grid_coordinates",
    "quadratic_fit",
    "smoothness",
    "Directions",
]

#: ``{source: {'min_pos': (P,), 'max': (P,), 'lambda_min_pos': float, 'lambda_max': float}}``
Directions = Mapping[str, Mapping[str, object]]


def grid_coordinates(n: int = 20, step: float = 0.002, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``linspace(−step·n/2, +step·n/2, n)`` — the paper's grid (spacing step·n/(n−1)).

    Computed as ``(i − (n−1)/2) · step·n/(n−1)`` so that it is exactly symmetric and, for odd n, exactly 0
    at the middle index (``torch.linspace`` leaves a ~1e-18 residue there).
    """
    if n < 2:
        raise ValueError(f"a landscape grid needs n ≥ 2 points per axis, got {n}")
    spacing = step * n / (n - 1)
    return (torch.arange(n, dtype=torch.float64) - (n - 1) / 2).mul(spacing).to(dtype)


def quadratic_fit(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, z: np.ndarray | torch.Tensor) -> dict:
    """Least-squares quadratic surface through ``z (n_x, n_y)`` on the grid ``x (n_x,) × y (n_y,)``.

    Returns ``{'r2', 'residual_sd', 'c', 'c_x', 'c_y', 'c_xx', 'c_xy', 'c_yy'}``; R² = 1 − SS_res / SS_tot (1.0 for a
    constant surface fitted exactly); ``residual_sd`` = √(SS_res / (n_x n_y − 6)).
    """
    x, y, z = (np.asarray(torch.as_tensor(v).detach().cpu().double()) for v in (x, y, z))
    xx, yy = np.meshgrid(x, y, indexing="ij")
    design = np.stack([np.ones_like(xx), xx, yy, xx**2, xx * yy, yy**2], axis=-1).reshape(-1, 6)
    target = z.reshape(-1)
    # scale columns for conditioning (grid coordinates are ~1e-2), then undo
    col_scale = np.abs(design).max(axis=0)
    col_scale[col_scale == 0] = 1.0
    coef, *_ = np.linalg.lstsq(design / col_scale, target, rcond=None)
    coef = coef / col_scale
    resid = target - design @ coef
    ss_tot = float(((target - target.mean()) ** 2).sum())
    ss_res = float((resid**2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else float("nan"))
    names = ("c", "c_x", "c_y", "c_xx", "c_xy", "c_yy")
    dof = max(target.size - design.shape[1], 1)
    return {"r2": r2, "residual_sd": (ss_res / dof) ** 0.5, **{k: float(v) for k, v in zip(names, coef)}}


def smoothness(z: np.ndarray | torch.Tensor) -> float:
    """Mean |second difference| over both grid axes, divided by the surface's range (max − min)."""
    z = np.asarray(torch.as_tensor(z).detach().cpu().double())
    d2 = np.concatenate([np.abs(np.diff(z, 2, axis=0)).ravel(), np.abs(np.diff(z, 2, axis=1)).ravel()])
    rng = float(z.max() - z.min())
    return float(d2.mean() / rng) if rng > 0 else 0.0


def _loss_vector(losses: SubsetLosses, theta: torch.Tensor) -> torch.Tensor:
    vals = losses.evaluate(theta)
    return torch.stack([vals[name] for name in LOSS_NAMES])


def evaluate_points(losses: SubsetLosses, thetas: torch.Tensor, points_per_call: int = 1) -> tuple[torch.Tensor, int]:
    """(L_mean, L_equiv, L_total) at each row of ``thetas (M, P)``, without grad.

    Returns ``(values (M, 3) float64 on the CPU, points_per_call actually used)``. ``points_per_call`` > 1
    evaluates that many rows per :func:`torch.func.vmap` call; if the model cannot be vmapped, warns and
    evaluates one row at a time (same numbers) and reports 1.
    """
    m = max(1, int(points_per_call))
    with torch.no_grad():
        if m > 1 and thetas.shape[0] > 1:
            try:
                parts = [torch.func.vmap(lambda t: _loss_vector(losses, t))(thetas[i : i + m]) for i in range(0, thetas.shape[0], m)]
                return torch.cat(parts).detach().to("cpu", torch.float64), m
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                warnings.warn(
                    f"vmap over landscape points failed ({type(exc).__name__}: {exc}); evaluating one point at a time", stacklevel=2
                )
        return torch.stack([_loss_vector(losses, t) for t in thetas]).detach().to("cpu", torch.float64), 1


@dataclass
class Landscape:
    """Surfaces ``surfaces[source][loss] (n, n)`` on ``coords (n,)`` × ``coords``; see the module docstring."""

    coords: torch.Tensor
    surfaces: dict[str, dict[str, torch.Tensor]]
    directions: dict[str, dict[str, torch.Tensor]]
    eigenvalues: dict[str, dict[str, float]]
    centre: dict[str, float]
    config: dict
    stats: dict[str, dict[str, dict]] = field(default_factory=dict)

    def own(self, loss: str) -> torch.Tensor:
        """The surface of ``loss`` along its own Hessian's eigenvectors (what the paper plots)."""
        return self.surfaces[loss][loss]

    def summary(self) -> dict:
        """Per own-surface numbers: min, max, centre, R², curvatures, smoothness, and the eigenvalues."""
        out = {}
        for loss in self.surfaces:
            if loss not in self.surfaces[loss]:
                continue
            s, st = self.own(loss), self.stats[loss][loss]
            out[loss] = {
                "min": float(s.min()),
                "max": float(s.max()),
                "centre": self.centre[loss],
                "r2": st["r2"],
                "c_xx_min_axis": st["c_xx"],
                "c_yy_max_axis": st["c_yy"],
                "smoothness": st["smoothness"],
                "lambda_min_pos": self.eigenvalues[loss]["min_pos"],
                "lambda_max": self.eigenvalues[loss]["max"],
            }
        return out

    def to_dict(self) -> dict:
        cpu = lambda t: t.detach().cpu()  # noqa: E731
        return {
            "coords": cpu(self.coords),
            "surfaces": {s: {loss: cpu(v) for loss, v in d.items()} for s, d in self.surfaces.items()},
            "directions": {s: {k: cpu(v) for k, v in d.items()} for s, d in self.directions.items()},
            "eigenvalues": self.eigenvalues,
            "centre": self.centre,
            "config": self.config,
            "stats": self.stats,
            "format": "equivrepro.landscape/1",
        }

    def save(self, path: str | Path) -> Path:
        """Write a ``.pt`` (plain dict of tensors / numbers, see :meth:`to_dict`) atomically."""
        state = self.to_dict()
        return atomic_write(path, lambda f: torch.save(state, f))

    @classmethod
    def load(cls, path: str | Path) -> Landscape:
        try:
            d = torch.load(path, map_location="cpu", weights_only=False)
            return cls(d["coords"], d["surfaces"], d["directions"], d["eigenvalues"], d["centre"], d["config"], d.get("stats", {}))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not an equivrepro landscape file ({exc})") from exc


def loss_landscape(
    losses: SubsetLosses,
    *,
    n: int = 20,
    step: float = 0.002,
    sources: Sequence[str] = ("mean", "equiv"),
    spectra: Mapping[str, Spectrum] | None = None,
    directions: Directions | None = None,
    rel_threshold: float = DEFAULT_REL_THRESHOLD,
    resolved_tol: float = 1e-6,
    points_per_call: int = 1,
    **spectrum_kw,
) -> Landscape:
    """Evaluate L_mean, L_equiv (and L_total) on the n×n grid along each source's extreme eigenvectors.

    ``directions`` may give the two directions of a source (and their eigenvalues) directly; else ``spectra``
    may carry precomputed :class:`Spectrum` objects per source; missing ones are computed with
    :func:`~equivrepro.analysis.hessian.hessian_spectrum` (``spectrum_kw``: method, k, generator, …).
    Cost: ``len(sources)·n²`` evaluations of the losses (each a K-rotation forward pass of the held-out
    batches), under ``torch.no_grad``; ``points_per_call`` > 1 batches them with vmap (module docstring).
    """
    theta0 = losses.theta0
    coords = grid_coordinates(n, step).to(dtype=theta0.dtype)
    coords_dev = coords.to(theta0.device)
    spectra = dict(spectra or {})
    with torch.no_grad():
        centre = {k: float(v) for k, v in losses.evaluate().items()}
    given = dict(directions or {})
    surfaces, directions, eigenvalues, stats = {}, {}, {}, {}
    for src in sources:
        if src not in ("mean", "equiv", "total"):
            raise KeyError(f"unknown direction source {src!r}")
        if src in given:
            ext = given[src]
        else:
            if src not in spectra:
                spectra[src] = hessian_spectrum(losses, src, **spectrum_kw)
            ext = spectra[src].extreme_vectors(rel_threshold, resolved_tol)
        d_min = ext["min_pos"].to(theta0) / ext["min_pos"].norm()
        d_max = ext["max"].to(theta0) / ext["max"].norm()
        directions[src] = {"min_pos": d_min, "max": d_max}
        eigenvalues[src] = {"min_pos": ext["lambda_min_pos"], "max": ext["lambda_max"]}
        # row-major over (i, j): point p = i·n + j is θ⁰ + a_i d_min + a_j d_max; built one call's worth at a time
        blocks, per_call = [], max(1, int(points_per_call))
        for first in range(0, n * n, per_call):
            p = torch.arange(first, min(first + per_call, n * n), device=coords_dev.device)
            thetas = theta0 + coords_dev[p // n, None] * d_min + coords_dev[p % n, None] * d_max
            block, per_call = evaluate_points(losses, thetas, per_call)
            blocks.append(block)
        values = torch.cat(blocks)  # (n², 3)
        grid = {name: values[:, c].reshape(n, n).clone() for c, name in enumerate(LOSS_NAMES)}
        surfaces[src] = grid
        stats[src] = {}
        for name, z in grid.items():
            stats[src][name] = _surface_stats(coords, z)
    config = {
        "n": n,
        "step": step,
        "sources": list(sources),
        "points_per_call": points_per_call,
        "rel_threshold": rel_threshold,
        "resolved_tol": resolved_tol,
        "axis0": "min-positive eigenvector",
        "axis1": "max eigenvector",
        "redrawn": False,
        "hessian": {s: {"method": spectra[s].method, **spectra[s].condition(rel_threshold, resolved_tol)} for s in sources if s in spectra},
        **losses.describe(),
    }
    return Landscape(coords, surfaces, directions, eigenvalues, centre, config, stats)


def _surface_stats(coords: torch.Tensor, z: torch.Tensor) -> dict:
    fit = quadratic_fit(coords, coords, z)
    return {**fit, "smoothness": smoothness(z), "min": float(z.min()), "max": float(z.max())}


def redrawn_landscape(
    draw: Callable[[int], SubsetLosses],
    frozen: Landscape,
    *,
    n: int | None = None,
    centre_draws: int = 8,
) -> Landscape:
    """The grid of ``frozen`` (its directions; ``n`` points per axis over the same span, default frozen's n) with the
    held-out samples, task randomness and rotations redrawn at every point: point p uses ``draw(centre_draws + p)``,
    a :class:`SubsetLosses` on a fresh draw (the same subset, model and estimator). ``draw(0 … centre_draws−1)`` give
    the evaluation noise at θ_S⁰: ``config['noise'][loss]`` (SD over draws) and ``centre`` (their mean). Each source's
    grid uses its own draws (indices continue across sources)."""
    n = int(n or frozen.config["n"])
    coords = grid_coordinates(n, frozen.config["step"] * frozen.config["n"] / n).to(frozen.coords.dtype)
    if centre_draws < 2:
        raise ValueError(f"the evaluation noise needs centre_draws ≥ 2, got {centre_draws}")
    at_centre = []
    with torch.no_grad():
        for i in range(centre_draws):
            losses = draw(i)
            v = losses.evaluate()
            at_centre.append([float(v[name]) for name in LOSS_NAMES])
    at_centre = torch.tensor(at_centre, dtype=torch.float64)
    noise = {name: float(at_centre[:, c].std(unbiased=True)) for c, name in enumerate(LOSS_NAMES)}
    centre = {name: float(at_centre[:, c].mean()) for c, name in enumerate(LOSS_NAMES)}
    surfaces, stats, index = {}, {}, centre_draws
    for src, dirs in frozen.directions.items():
        values = torch.zeros(n * n, len(LOSS_NAMES), dtype=torch.float64)
        with torch.no_grad():
            for p in range(n * n):
                losses = draw(index)
                index += 1
                theta0 = losses.theta0
                c = coords.to(theta0)
                theta = theta0 + c[p // n] * dirs["min_pos"].to(theta0) + c[p % n] * dirs["max"].to(theta0)
                v = losses.evaluate(theta)
                values[p] = torch.tensor([float(v[name]) for name in LOSS_NAMES], dtype=torch.float64)
        surfaces[src] = {name: values[:, c].reshape(n, n).clone() for c, name in enumerate(LOSS_NAMES)}
        stats[src] = {name: _surface_stats(coords, z) for name, z in surfaces[src].items()}
    config = {**frozen.config, "n": n, "redrawn": True, "centre_draws": centre_draws, "noise": noise, "draws": index, "points_per_call": 1}
    return Landscape(coords, surfaces, {s: dict(d) for s, d in frozen.directions.items()}, dict(frozen.eigenvalues), centre, config, stats)
