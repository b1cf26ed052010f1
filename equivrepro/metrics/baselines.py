"""Cheap equivariant baselines: the reference a low pct must beat.

A model that predicts little is trivially near-equivariant, so pct only means something next to how well
the model predicts. The zero predictor (``task.null_prediction``) is a weak bar; each task therefore also
has a cheap predictor that is *exactly equivariant in the continuum* (``task.make_baseline()``): flow
matching ``v̂ = c(t)·x_t``, voxels the best isotropic linear filter of the noisy grid, the force field a
pairwise radial force field. It is fitted on training data only and scored on the held-out set; through the
task's rotate/unrotate path its own pct is the instrument's floor (round-off for point clouds, the grid
rotation's error for voxels).

:class:`EquivariantBaseline` is the protocol the harness uses; :class:`LinearBaseline` is the common case, a
prediction linear in fixed equivariant features,

    ŷ[key] = Φ[key] @ θ,     Φ[key] shaped ``target[key].shape + (P,)``,  θ ``(P,)``,

fitted by weighted least squares with the loss term's own weights ``w`` (a quadratic term is
``Σ_j w_j (ŷ_j − y_j)²``, :func:`equivrepro.metrics.quadratic.quadratic_weights`): the normal equations
``A = Σ_j w_j Φ_j Φ_jᵀ``, ``r = Σ_j w_j Φ_j y_j`` are accumulated batch by batch (only Φ of one batch is ever
in memory), in float64, and solved with a ridge in each parameter block's own scale (:meth:`LinearBaseline.solve`).
A parameter whose feature is zero on all training data (an element pair never seen) gets θ = 0.

**Choosing the ridge.** A baseline with many parameters for its training samples (a pair energy: ~10² element-pair
coefficients, fitted on a few dozen molecules) overfits, and an overfitted baseline is *worse than the trivial
predictor* on held-out data — a bar too low to back a low pct. Given several candidate ridges, :meth:`fit` picks
the one with the lowest leave-one-batch-out loss, computed exactly from the per-batch normal equations
(the loss of θ on batch b is ``s_b − 2θᵀr_b + θᵀA_bθ``, θ fitted on the other batches), then refits on all
batches. Large candidates shrink θ towards 0 (the zero prediction), so the chosen baseline is, on the validation
folds, never worse than the best of the candidates. ``fit_info`` records the choice and every candidate's loss.
The fit is deterministic and, for a single ridge, independent of how the data are split into batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from equivrepro.metrics.quadratic import quadratic_weights
from equivrepro.task import Batch, LossTerm, Prediction, Task

__all__ = ["EquivariantBaseline", "LinearBaseline", "FeatureFn", "resolve_terms", "term_weights"]

FeatureFn = Callable[[Batch], Mapping[str, torch.Tensor]]


@runtime_checkable
class EquivariantBaseline(Protocol):
    """A cheap, exactly equivariant (in the continuum) predictor fitted on training data.

    ``fit(task, batches, term)`` sees training batches only — evaluation batches of training data, i.e. with the
    task's randomness frozen (``task.evaluation_batches(train_batch, generator)[suffix]``) — and returns ``self``;
    ``baseline(batch)`` returns a prediction with the keys of ``task.targets(batch)``.
    """

    name: str

    def fit(self, task: Task, batches: Sequence[Batch], term: LossTerm | Sequence[LossTerm] | None = None) -> EquivariantBaseline: ...

    def __call__(self, batch: Batch) -> Prediction: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Mapping) -> None: ...


def resolve_terms(task: Task, term: LossTerm | Sequence[LossTerm] | None) -> tuple[LossTerm, ...]:
    """The quadratic terms to fit with: ``term`` itself, a sequence of terms, or (None) every quadratic term of ``task``."""
    if term is None:
        terms = tuple(t for t in task.terms if t.quadratic)
    elif isinstance(term, LossTerm):
        terms = (term,)
    else:
        terms = tuple(term)
    if not terms:
        raise ValueError(f"task {task.name!r} has no quadratic loss term to fit a least-squares baseline with")
    bad = [t.name for t in terms if not t.quadratic]
    if bad:
        raise ValueError(f"a least-squares baseline needs quadratic loss terms; {bad} are not")
    return terms


def term_weights(terms: Sequence[LossTerm], target: Prediction, batch: Batch) -> dict[str, torch.Tensor]:
    """Key-wise sum of the terms' weights ``w[key]`` (shaped like ``target[key]``), float64.

    With several terms each key is fitted with the sum of the weights the terms give it; when every parameter
    feeds a single key (energy and forces, say) this is each key's own weighted least squares."""
    t64 = {k: v.detach().to(torch.float64) for k, v in target.items() if torch.is_tensor(v) and v.is_floating_point()}
    total: dict[str, torch.Tensor] = {}
    for t in terms:
        for k, w in quadratic_weights(t, t64, batch).items():
            total[k] = w if k not in total else total[k] + w
    return total


class LinearBaseline:
    """``ŷ[key] = features(batch)[key] @ θ`` (see the module docstring); keys ``features`` does not return predict 0.

    Args:
        name: what the baseline is called in logs and tables (e.g. ``"c_t_x_t"``).
        features: ``batch -> {key: Φ}`` with ``Φ`` shaped ``target[key].shape + (P,)``; it must be equivariant
            (each column transforms like the target) for the baseline to be.
        ridge: λ of the ridge ``(A + λ·S) θ = r``, ``S`` the mean diagonal of A over each parameter's block (dimensionless);
            or a sequence of candidates, chosen by leave-one-batch-out validation at :meth:`fit` (one training
            batch: the smallest candidate, and ``fit_info["ridge_cv"] = 0``).
        task: optional; needed only to shape the zero prediction of keys ``features`` does not cover before
            :meth:`fit` has been called (e.g. after :meth:`load_state_dict`).

    Subclasses with features too large to materialise override :meth:`normal_equations` and :meth:`predict_keys`.
    After :meth:`fit`, ``fit_info`` holds ``n_params``, ``n_batches``, ``seconds`` and the training loss
    ``train_loss`` (the fitted weighted squared error, summed over the training samples), and with several candidate
    ridges ``ridge`` (the chosen one), ``ridge_cv`` (1 if chosen by validation) and ``cv_loss_<λ>`` per candidate.
    """

    def __init__(self, name: str, features: FeatureFn | None = None, ridge: float | Sequence[float] = 1e-8, task: Task | None = None):
        grid = tuple(float(v) for v in (ridge if isinstance(ridge, Sequence) else (ridge,)))
        if not grid or any(not v >= 0 for v in grid):
            raise ValueError(f"ridge must be a non-negative number or a non-empty sequence of them, got {ridge}")
        self.name = str(name)
        self._features = features
        self.ridge_grid = tuple(sorted(set(grid)))
        self.ridge = self.ridge_grid[0]
        self.task = task
        self.theta: torch.Tensor | None = None
        self.target_keys: tuple[str, ...] = ()
        self.fit_info: dict[str, float] = {}

    # --- features -----------------------------------------------------------------------------------
    def features(self, batch: Batch) -> Mapping[str, torch.Tensor]:
        if self._features is None:  # pragma: no cover - a subclass must override one or the other
            raise NotImplementedError("LinearBaseline needs a features function (or a subclass overriding features)")
        return self._features(batch)

    def prepare(self, task: Task, batches: Sequence[Batch]) -> None:
        """Called by :meth:`fit` before the normal equations: set up data-dependent feature layouts (e.g. the element
        vocabulary of a force field). Default: nothing."""

    # --- fitting ------------------------------------------------------------------------------------
    def normal_equations(
        self, batch: Batch, target: Prediction, weights: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A (P, P), r (P,), s ())`` of one batch in float64: ``A = Σ w Φ Φᵀ``, ``r = Σ w Φ y``, ``s = Σ w y²``.

        Only the columns of Φ that are non-zero in this batch enter the products (block-sparse features, e.g. one
        block per element pair, cost what their used blocks cost)."""
        feats = self.features(batch)
        a = r = None
        s = None
        for key, phi in feats.items():
            if key not in weights:
                raise KeyError(f"baseline {self.name!r}: feature key {key!r} is not a target of the fitted terms ({sorted(weights)})")
            y, w = target[key].detach().to(torch.float64), weights[key]
            if phi.shape[:-1] != y.shape:
                raise ValueError(
                    f"baseline {self.name!r}: features[{key!r}] has shape {tuple(phi.shape)}, expected target shape {tuple(y.shape)} + (P,)"
                )
            p = phi.shape[-1]
            if a is None:
                a = torch.zeros(p, p, dtype=torch.float64, device=phi.device)
                r = torch.zeros(p, dtype=torch.float64, device=phi.device)
            elif a.shape[0] != p:
                raise ValueError(f"baseline {self.name!r}: feature keys disagree on P ({a.shape[0]} vs {p} for {key!r})")
            f = phi.detach().to(torch.float64).reshape(-1, p)
            wf, yf = w.reshape(-1), y.reshape(-1)
            rows = wf > 0
            f, wf, yf = f[rows], wf[rows], yf[rows]
            cols = (f != 0).any(0).nonzero().squeeze(1)
            if cols.numel() == 0:
                continue
            fc = f[:, cols]
            a[cols[:, None], cols[None, :]] += (fc * wf[:, None]).T @ fc
            r[cols] += fc.T @ (wf * yf)
            s = (wf * yf * yf).sum() if s is None else s + (wf * yf * yf).sum()
        if a is None:
            raise ValueError(f"baseline {self.name!r}: features returned no key")
        return a, r, (torch.zeros((), dtype=torch.float64) if s is None else s)

    @torch.no_grad()
    def fit(self, task: Task, batches: Sequence[Batch], term: LossTerm | Sequence[LossTerm] | None = None) -> LinearBaseline:
        """Weighted least squares on ``batches`` (training data, randomness frozen) with the weights of ``term``
        (a term, several, or None: every quadratic term of the task). Returns ``self``."""
        if len(batches) == 0:
            raise ValueError(f"baseline {self.name!r}: no training batches to fit on")
        start = time.perf_counter()
        self.task = task
        terms = resolve_terms(task, term)
        self.prepare(task, batches)
        parts = []
        for batch in batches:
            target = task.targets(batch)
            self.target_keys = tuple(target)
            eq = self.normal_equations(batch, target, term_weights(terms, target, batch))
            parts.append(tuple(v.detach().to("cpu", torch.float64) for v in eq))  # solved on the CPU
        a, r, s = (sum(p[i] for p in parts) for i in range(3))
        cv: dict[str, float] = {}
        if len(self.ridge_grid) > 1 and len(parts) > 1:
            losses = [self._held_out_loss(parts, a, r, lam) for lam in self.ridge_grid]
            self.ridge = self.ridge_grid[min(range(len(losses)), key=losses.__getitem__)]
            cv = {"ridge_cv": 1.0, **{f"cv_loss_{lam:g}": v for lam, v in zip(self.ridge_grid, losses)}}
        elif len(self.ridge_grid) > 1:
            cv = {"ridge_cv": 0.0}
        self.theta = self.solve(a, r)
        self.fit_info = {
            "n_params": float(self.theta.numel()),
            "n_batches": float(len(batches)),
            "seconds": time.perf_counter() - start,
            "train_loss": self._loss(self.theta, a, r, s),
            "ridge": self.ridge,
            **cv,
        }
        return self

    @staticmethod
    def _loss(theta: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s: torch.Tensor) -> float:
        """Σ w (Φθ − y)² = s − 2θᵀr + θᵀAθ over the data whose normal equations are (A, r, s)."""
        return max(float(s - 2 * theta @ r + theta @ a @ theta), 0.0)

    def _held_out_loss(self, parts, a: torch.Tensor, r: torch.Tensor, ridge: float) -> float:
        """Σ over batches b of the loss on b of the fit (with ``ridge``) on the other batches."""
        previous, self.ridge = self.ridge, ridge
        try:
            return sum(self._loss(self.solve(a - ab, r - rb), ab, rb, sb) for ab, rb, sb in parts)
        finally:
            self.ridge = previous

    def solve(self, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """θ from ``(A + λ·S) θ = r`` in float64, ``S`` diagonal: for each parameter the mean of ``diag A`` over its block.

        Blocks are the connected components of A's sparsity pattern (parameters that never meet in one target entry, such
        as energy and force coefficients or the filters of different output channels, fall in different blocks), so the
        ridge is in each block's own units, and a rarely active feature (a basis function in a pair's unseen distance
        range) is shrunk to ≈ 0 instead of being amplified. Parameters whose feature is zero on all training data get 0.
        """
        from scipy.sparse.csgraph import connected_components

        d = a.diagonal().clone()
        unused = d <= 0
        n_blocks, labels = connected_components((a != 0).numpy(), directed=False)
        labels = torch.as_tensor(labels, dtype=torch.long)
        sums = torch.zeros(n_blocks, dtype=torch.float64).index_add_(0, labels, d)
        counts = torch.zeros(n_blocks, dtype=torch.float64).index_add_(0, labels, (~unused).to(torch.float64))
        scale = (sums / counts.clamp_min(1))[labels]
        scale = torch.where(unused | (scale <= 0), torch.ones_like(scale), scale)
        reg = a + torch.diag(self.ridge * scale + unused.to(a.dtype))
        return torch.linalg.solve(reg, torch.where(unused, torch.zeros_like(r), r))

    # --- prediction ---------------------------------------------------------------------------------
    def predict_keys(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``Φ[key] @ θ`` for every key the features cover, in the features' dtype."""
        theta = self._theta()
        out = {}
        for key, phi in self.features(batch).items():
            out[key] = (phi.to(torch.float64) @ theta.to(phi.device)).to(phi.dtype)
        return out

    def __call__(self, batch: Batch) -> Prediction:
        with torch.no_grad():
            pred = self.predict_keys(batch)
            missing = [k for k in self.target_keys if k not in pred]
            if missing:
                if self.task is None:
                    raise RuntimeError(f"baseline {self.name!r} predicts zero for {missing} but has no task to shape them: pass task=")
                target = self.task.targets(batch)
                pred.update({k: torch.zeros_like(target[k]) for k in missing})
        return pred

    def _theta(self) -> torch.Tensor:
        if self.theta is None:
            raise RuntimeError(f"baseline {self.name!r} is not fitted: call fit(task, training_batches) or load_state_dict()")
        return self.theta

    # --- storage ------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """What a subclass needs besides θ to predict (feature layout, vocabularies). Default: nothing."""
        return {}

    def load_extra_state(self, state: Mapping) -> None:
        """Inverse of :meth:`extra_state`."""

    def state_dict(self) -> dict:
        return {
            "name": self.name,
            "theta": self._theta().clone(),
            "ridge": self.ridge,
            "ridge_grid": list(self.ridge_grid),
            "target_keys": list(self.target_keys),
            **self.extra_state(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state of baseline {state.get('name')!r} cannot be loaded into baseline {self.name!r}")
        self.load_extra_state(state)
        self.theta = torch.as_tensor(state["theta"], dtype=torch.float64).clone()
        self.ridge = float(state.get("ridge", self.ridge))
        self.target_keys = tuple(state.get("target_keys", ()))
