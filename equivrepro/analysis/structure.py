"""Is the L_mean / L_equiv curvature comparison on a parameter subset forced by the architecture?

For a linear head ``u = W φ + b`` on rotation-invariant features whose output enters the prediction linearly (the
EScAIP direct-force head ``F_i = m_i Σ_j u_ij ⊙ r̂_ij``), the twirled model is the rows-mean model: L_mean sees only
the row mean of (W, b), L_equiv only the row deviations, and both Hessians are built from one feature Gram matrix
(for the force head ``Σ_i m_i² Σ_jk φ_ij φ_ikᵀ (r̂_ij · r̂_ik)``; the second moment of a rotated vector is isotropic
under Haar rotations and under the cube group, which is a 3-design). Their normalised spectra are then identical
— L_equiv's with doubled multiplicity — so κ(L_mean)/κ(L_equiv) = 1 and κ ≈ 1/cut-off say nothing about the losses.

:func:`structure_verdict` detects this two ways:

* **numerically** (preferred, any subset, any task whose ``rotate_batch`` accepts cube rotations): the exact Hessians
  (or Lanczos Ritz values above ``exact_max`` parameters) of the plug-in L_mean and L_equiv under the exact
  24-rotation cube twirl, on a few held-out samples, compared as sets of normalised eigenvalues
  (:func:`~equivrepro.analysis.spectral.spectrum_distance`, log10 units): ``≤ tol_equal`` → ``structurally equal``,
  ``> tol_differ`` → ``not tied``, in between ``undetermined``. With Lanczos, each resolved Ritz value (residual
  bound ≤ rtol·|θ|) is matched against all Ritz values of the other operator; ``not tied`` then rests on the top of
  a spectrum being found within ``steps`` steps (Lanczos' extreme Ritz values converge first): strong evidence,
  not a proof, while ``structurally equal`` needs ``min_compared`` resolved values below the top of each;
* **by declaration** (fallback, and reported beside the numeric verdict): the subset is exactly the parameters of
  the ``nn.Linear`` named by the run's ``equivariance.linear_head`` (a head the run declares to sit on invariant
  features).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from equivrepro.analysis.hessian import HessianOperator, exact_hessian, lanczos
from equivrepro.analysis.spectral import DEFAULT_RTOL, resolved_condition, spectrum_distance
from equivrepro.analysis.subset import SubsetLosses, select_parameters
from equivrepro.rotations import octahedral_group
from equivrepro.task import Batch, LossTerm, Task

__all__ = ["StructureVerdict", "structure_verdict", "is_declared_head", "cube_spectra", "EQUAL", "NOT_TIED", "UNDETERMINED"]

EQUAL, NOT_TIED, UNDETERMINED = "structurally equal", "not tied", "undetermined"


@dataclass
class StructureVerdict:
    verdict: str
    reason: str
    declared_head: bool
    method: str | None = None
    distance_log10: float | None = None
    n_compared: dict | None = None  # eigenvalues below the top that took part in the comparison
    samples: int | None = None

    @property
    def forced(self) -> bool:
        return self.verdict == EQUAL

    def to_dict(self) -> dict:
        return asdict(self)


def is_declared_head(model: nn.Module, names: Sequence[str], linear_head: str | None) -> bool:
    """Whether ``names`` are exactly the parameters of the ``nn.Linear`` ``linear_head``."""
    if not linear_head:
        return False
    try:
        module = model.get_submodule(linear_head)
    except AttributeError:
        return False
    return isinstance(module, nn.Linear) and set(names) == set(select_parameters(model, linear_head))


def _first_samples(batches: Sequence[Batch], n: int) -> list[Batch]:
    out, left = [], int(n)
    for b in batches:
        if left <= 0:
            break
        size = next(v.shape[0] for v in b.values() if torch.is_tensor(v) and v.dim() > 0)
        take = min(size, left)
        out.append({k: (v[:take] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in b.items()})
        left -= take
    return out


def cube_spectra(
    model: nn.Module,
    task: Task,
    batches: Sequence[Batch],
    subset,
    *,
    term: LossTerm | str | None = None,
    samples: int = 4,
    chunk_size: int | None = None,
    exact_max: int = 512,
    steps: int = 30,
    generator: torch.Generator | None = None,
    rtol: float = DEFAULT_RTOL,
) -> dict:
    """Eigenvalues of ∇² of the plug-in L_mean and L_equiv under the exact cube twirl on the first ``samples`` samples:
    ``{'method', 'mean', 'equiv', 'mean_ritz', 'equiv_ritz'}`` (all eigenvalues when exact; otherwise the resolved
    Ritz values and all Ritz values)."""
    few = _first_samples(batches, samples)
    dtype = next(v.dtype for v in few[0].values() if torch.is_tensor(v) and v.is_floating_point())
    cube = octahedral_group(dtype=dtype, device=next(v.device for v in few[0].values() if torch.is_tensor(v)))
    losses = SubsetLosses(model, task, few, cube, subset, term=term, chunk_size=chunk_size, exact_group=True, estimator="plugin")
    method = "exact" if losses.n_params <= exact_max else "lanczos"
    out = {"method": method, "n_params": losses.n_params}
    for which in ("mean", "equiv"):
        op = HessianOperator(losses.function(which), losses.theta0)
        if method == "exact":
            out[which] = out[f"{which}_ritz"] = torch.linalg.eigvalsh(exact_hessian(op)).cpu()
        else:
            res = lanczos(op, losses.n_params, steps, generator=generator, dtype=losses.theta0.dtype, device=losses.theta0.device)
            ok = resolved_condition(res.values, res.residuals, rtol=rtol)["resolved"]
            out[which], out[f"{which}_ritz"] = res.values.cpu()[torch.as_tensor(ok)], res.values.cpu()
    return out


def structure_verdict(
    model: nn.Module,
    task: Task,
    batches: Sequence[Batch],
    subset,
    *,
    linear_head: str | None = None,
    term: LossTerm | str | None = None,
    samples: int = 4,
    chunk_size: int | None = None,
    exact_max: int = 512,
    steps: int = 30,
    generator: torch.Generator | None = None,
    numeric: bool = True,
    tol_equal: float | None = None,
    tol_differ: float = 1e-2,
    rtol: float = DEFAULT_RTOL,
    min_compared: int = 3,
) -> StructureVerdict:
    """The verdict of the module docstring. ``tol_equal`` default: 1e-6 (exact) or 2·log10(1 + rtol) (Lanczos);
    ``structurally equal`` needs at least ``min_compared`` eigenvalues below the top of each spectrum to agree."""
    names = select_parameters(model, subset)
    declared = is_declared_head(model, names, linear_head)
    if numeric:
        try:
            spec = cube_spectra(
                model,
                task,
                batches,
                subset,
                term=term,
                samples=samples,
                chunk_size=chunk_size,
                exact_max=exact_max,
                steps=steps,
                generator=generator,
                rtol=rtol,
            )
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            numeric_error = f"{type(exc).__name__}: {exc}"
        else:
            exact = spec["method"] == "exact"
            tol = tol_equal if tol_equal is not None else (1e-6 if exact else 2 * float(torch.log10(torch.tensor(1.0 + rtol))))
            floor = 1e-8 if exact else 0.0
            cmp = spectrum_distance(spec["mean"], spec["equiv"], floor=floor, a_ref=spec["mean_ritz"], b_ref=spec["equiv_ritz"])
            d = cmp["distance"]
            counts = {"mean": cmp["compared_a"], "equiv": cmp["compared_b"]}
            few = min(counts.values())
            if d > tol_differ and max(counts.values()) >= 1:
                verdict, why = NOT_TIED, f"under the exact cube twirl the normalised spectra differ by {d:.3g} decades (> {tol_differ:g})"
            elif few < min_compared:
                verdict, why = (
                    UNDETERMINED,
                    (
                        f"too few resolved cube-twirl eigenvalues below the top to compare ({counts}; need "
                        f"{min_compared}): raise the Lanczos steps"
                    ),
                )
            elif d <= tol:
                verdict, why = (
                    EQUAL,
                    (
                        f"under the exact cube twirl the normalised spectra of ∇²L_mean and ∇²L_equiv coincide as sets "
                        f"(distance {d:.2g} decades ≤ {tol:.2g}): the comparison is forced by the architecture"
                    ),
                )
            else:
                verdict = UNDETERMINED
                why = f"normalised cube-twirl spectra differ by {d:.2g} decades, between {tol:.2g} and {tol_differ:g}"
            if declared and verdict != EQUAL:
                why += f"; note: the subset is the run's declared linear head {linear_head!r}"
            return StructureVerdict(verdict, why, declared, f"cube-{spec['method']}", d, counts, samples)
    else:
        numeric_error = "numeric check off"
    if declared:
        return StructureVerdict(
            EQUAL,
            f"the subset is the run's declared linear head {linear_head!r} on invariant features "
            f"(equivariance.linear_head; {numeric_error})",
            True,
            "declared",
        )
    return StructureVerdict(UNDETERMINED, f"no numeric check ({numeric_error}) and the subset is not a declared linear head", False, None)
