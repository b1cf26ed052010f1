"""L_mean and L_equiv as differentiable functions of a flat vector θ_S of a named parameter subset.

Everything else is frozen: the model's other parameters and buffers, the held-out batches (whose
task randomness — noise, flow time — is already fixed, e.g. by :meth:`Task.evaluation_batches`) and the
rotations. The losses are the unbiased estimators of
:func:`equivrepro.metrics.twirl_decomposition` (U-statistics for quadratic terms, jackknife otherwise;
plug-in = group average when ``exact_group``; the plug-in estimates on request) for one loss term,
averaged over all held-out samples (Σ over batches of per-sample values / total number of samples). The model runs in eval mode (no
dropout), so L(θ_S) is a deterministic function. Parameters are substituted with
:func:`torch.func.functional_call`, so the model object is never modified.

Subset specifications (:func:`select_parameters`), resolved against ``model.named_parameters()``:

* ``"all"`` — every trainable parameter;
* a parameter name, e.g. ``"force_head.out.weight"``;
* a module name, e.g. ``"force_head.out"`` — every parameter below that module;
* a glob, e.g. ``"*.out.*"`` (``fnmatch`` on parameter names);
* a list of any of these (union, in the model's parameter order).

For accurate Hessians, cast the model (``model.double()``) and the batches (:func:`cast_batch`) to
float64 first; the rotations are cast to the batches' floating dtype automatically.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from equivrepro.metrics import twirl_decomposition, untwisted_predictions
from equivrepro.task import Batch, LossTerm, Task, batch_size

__all__ = ["LOSS_NAMES", "select_parameters", "cast_batch", "as_batch_list", "resolve_term", "eval_mode", "SubsetLosses"]

#: The two parts of the loss (and their sum) that the analysis tools study.
LOSS_NAMES = ("mean", "equiv", "total")

ParameterSpec = str | Sequence[str]


def select_parameters(model: nn.Module, spec: ParameterSpec = "all") -> list[str]:
    """Names of the parameters selected by ``spec`` (see the module docstring), in model order.

    Raises ``KeyError`` naming the pattern that matched nothing (and a few available names).
    """
    named = dict(model.named_parameters())
    if isinstance(spec, str) and spec == "all":
        names = [n for n, p in named.items() if p.requires_grad]
        if not names:
            raise KeyError(f"model {type(model).__name__} has no trainable parameters")
        return names
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns:
        raise KeyError("empty parameter subset")
    chosen: set[str] = set()
    for pat in patterns:
        if pat in named:
            hits = [pat]
        elif any(c in pat for c in "*?["):
            hits = [n for n in named if fnmatch.fnmatchcase(n, pat)]
        else:
            hits = [n for n in named if n.startswith(pat + ".")]
        if not hits:
            sample = ", ".join(list(named)[:8])
            raise KeyError(f"parameter subset {pat!r} matches no parameter of {type(model).__name__} (e.g. {sample}, …)")
        chosen.update(hits)
    return [n for n in named if n in chosen]


def cast_batch(batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> Batch:
    """The batch with its floating-point tensors cast to ``dtype`` (integer / bool tensors unchanged)."""
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}


def as_batch_list(batches: Batch | Sequence[Batch] | Mapping[str, Batch]) -> list[Batch]:
    """One batch, a list of batches, or a ``{suffix: batch}`` mapping (``Task.evaluation_batches``) → list."""
    if isinstance(batches, Mapping):
        values = list(batches.values())
        if values and all(torch.is_tensor(v) for v in values):
            return [dict(batches)]
        if values and all(isinstance(v, Mapping) for v in values):
            return [dict(v) for v in values]
        raise TypeError("batches must be a batch (dict of tensors), a list of batches or a dict of batches")
    out = [dict(b) for b in batches]
    if not out:
        raise ValueError("no held-out batches given")
    return out


def resolve_term(task: Task, term: LossTerm | str | None) -> LossTerm:
    """``None`` → the task's primary term; a name → that term of the task; a LossTerm → itself."""
    if term is None:
        return task.primary_term
    if isinstance(term, LossTerm):
        return term
    for t in task.terms:
        if t.name == term:
            return t
    raise KeyError(f"task {task.name!r} has no loss term {term!r}; terms: {[t.name for t in task.terms]}")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _float_dtype(batch: Batch) -> torch.dtype | None:
    for v in batch.values():
        if torch.is_tensor(v) and v.is_floating_point():
            return v.dtype
    return None


def _device(batch: Batch) -> torch.device:
    return next(v.device for v in batch.values() if torch.is_tensor(v))


class _Decomposition(nn.Module):
    """Wraps the model so that one ``functional_call`` substitutes θ_S everywhere ``task.predict`` looks."""

    def __init__(self, model: nn.Module, task: Task, term: LossTerm, chunk_size: int | None, exact_group: bool, plugin: bool):
        super().__init__()
        self.model = model
        self.task, self.term, self.chunk_size, self.exact_group, self.plugin = task, term, chunk_size, exact_group, plugin

    def forward(self, batch: Batch, rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dec = twirl_decomposition(
            self.model,
            self.task,
            batch,
            rotations,
            chunk_size=self.chunk_size,
            exact_group=self.exact_group,
            terms=(self.term,),
            grad=True,
        )[self.term.name]
        if self.plugin:
            return dec.mean_plugin, dec.equiv_plugin, dec.total
        return dec.mean_unbiased, dec.equiv_unbiased, dec.total


class _Untwisted(nn.Module):
    """Wraps the model so that one ``functional_call`` gives the untwisted predictions ``z[key] (B, K, …)``."""

    def __init__(self, model: nn.Module, task: Task, chunk_size: int | None):
        super().__init__()
        self.model, self.task, self.chunk_size = model, task, chunk_size

    def forward(self, batch: Batch, rotations: torch.Tensor) -> dict[str, torch.Tensor]:
        return untwisted_predictions(self.model, self.task, batch, rotations, chunk_size=self.chunk_size)


class SubsetLosses:
    """L_mean(θ_S), L_equiv(θ_S), L_total(θ_S) on fixed held-out batches and fixed rotations.

    Parameters
    ----------
    model, task
        The network and its :class:`~equivrepro.task.Task`.
    batches
        A batch, a list of batches, or a ``{suffix: batch}`` mapping (all randomness frozen).
    rotations
        ``(K, 3, 3)`` or ``(B, K, 3, 3)`` used for every batch, or a list with one tensor per batch.
    subset
        Which parameters form θ_S (see :func:`select_parameters`).
    term
        Loss term (object or name); default the task's primary term.
    chunk_size, exact_group
        Passed to :func:`~equivrepro.metrics.twirl_decomposition`.
    estimator
        ``'unbiased'`` (default; the logged estimates) or ``'plugin'``: L_mean = ℓ(z̄, y) and
        L_equiv = the plug-in spread. The unbiased L_mean is a difference of two estimates, so its
        Hessian can have negative eigenvalues even where the loss is convex in θ_S (e.g. a linear
        model); the plug-in L_mean is convex whenever the prediction is linear in θ_S (it is biased up
        by L_equiv/K for MSE).

    Attributes: ``names`` (parameter names in θ_S order), ``shapes``, ``theta0`` (the model's current
    values, flat, detached), ``n_params``. ``evaluate(theta)`` returns the three losses as 0-dim tensors
    that are differentiable in ``theta`` when it requires grad.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        batches: Batch | Sequence[Batch] | Mapping[str, Batch],
        rotations: torch.Tensor | Sequence[torch.Tensor],
        subset: ParameterSpec = "all",
        *,
        term: LossTerm | str | None = None,
        chunk_size: int | None = None,
        exact_group: bool = False,
        estimator: str = "unbiased",
    ):
        if estimator not in ("unbiased", "plugin"):
            raise ValueError(f"estimator must be 'unbiased' or 'plugin', got {estimator!r}")
        self.estimator = estimator
        self.model, self.task = model, task
        self.term = resolve_term(task, term)
        self.batches = as_batch_list(batches)
        if torch.is_tensor(rotations):
            rots = [rotations] * len(self.batches)
        else:
            rots = list(rotations)
            if len(rots) != len(self.batches):
                raise ValueError(f"got {len(rots)} rotation tensors for {len(self.batches)} batches")
        self.rotations = []
        for b, r in zip(self.batches, rots):
            dtype = _float_dtype(b) or r.dtype
            self.rotations.append(r.to(device=_device(b), dtype=dtype))
        self.sizes = [batch_size(b) for b in self.batches]
        self.n_samples = sum(self.sizes)
        self.spec = subset
        self.names = select_parameters(model, subset)
        params = dict(model.named_parameters())
        self.shapes = [params[n].shape for n in self.names]
        self.numels = [params[n].numel() for n in self.names]
        self.theta0 = torch.cat([params[n].detach().reshape(-1) for n in self.names]).clone()
        self._wrapper = _Decomposition(model, task, self.term, chunk_size, exact_group, estimator == "plugin")
        self._untwisted = _Untwisted(model, task, chunk_size)
        self.exact_group = exact_group

    # --- flat vector <-> named tensors --------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return int(self.theta0.numel())

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat ``(n_params,)`` → ``{name: tensor of the parameter's shape}`` (views of ``theta``)."""
        if theta.shape != self.theta0.shape:
            raise ValueError(f"theta must have shape {tuple(self.theta0.shape)}, got {tuple(theta.shape)}")
        out, start = {}, 0
        for name, shape, n in zip(self.names, self.shapes, self.numels):
            out[name] = theta[start : start + n].view(shape)
            start += n
        return out

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{name: tensor}`` (all subset names) → flat vector in θ_S order."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    # --- the losses --------------------------------------------------------------------------------
    def evaluate(self, theta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{'mean', 'equiv', 'total'}`` at θ_S = ``theta`` (default: the model's own values), 0-dim each.

        Differentiable in ``theta`` when it requires grad; otherwise evaluated without recording a graph.
        """
        theta = self.theta0 if theta is None else theta
        override = {"model." + n: t for n, t in self.unflatten(theta).items()}
        sums = [0.0, 0.0, 0.0]
        grad_ctx = torch.enable_grad() if theta.requires_grad else torch.no_grad()
        with eval_mode(self.model), grad_ctx:
            for batch, rot in zip(self.batches, self.rotations):
                parts = functional_call(self._wrapper, override, (batch, rot))
                sums = [s + p.sum() for s, p in zip(sums, parts)]
        return {name: s / self.n_samples for name, s in zip(LOSS_NAMES, sums)}

    def untwisted(self, theta: torch.Tensor, index: int) -> dict[str, torch.Tensor]:
        """Untwisted predictions ``z[key] (B, K, …)`` of batch ``index`` at θ_S = ``theta`` (eval mode; differentiable
        in ``theta`` when it requires grad)."""
        override = {"model." + n: t for n, t in self.unflatten(theta).items()}
        grad_ctx = torch.enable_grad() if theta.requires_grad else torch.no_grad()
        with eval_mode(self.model), grad_ctx:
            return functional_call(self._untwisted, override, (self.batches[index], self.rotations[index]))

    def loss(self, which: str, theta: torch.Tensor | None = None) -> torch.Tensor:
        """One of ``'mean'``, ``'equiv'``, ``'total'`` at ``theta``."""
        if which not in LOSS_NAMES:
            raise KeyError(f"unknown loss {which!r}; choose from {LOSS_NAMES}")
        return self.evaluate(theta)[which]

    def function(self, which: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """``theta ↦ L_which(theta)`` (for :mod:`equivrepro.analysis.hessian`)."""
        if which not in LOSS_NAMES:
            raise KeyError(f"unknown loss {which!r}; choose from {LOSS_NAMES}")
        return lambda theta: self.evaluate(theta)[which]

    def describe(self) -> dict:
        """JSON-friendly description (saved next to landscapes and spectra)."""
        return {
            "subset": self.spec if isinstance(self.spec, str) else list(self.spec),
            "parameters": list(self.names),
            "n_params": self.n_params,
            "term": self.term.name,
            "estimator": "exact-group"
            if self.exact_group
            else ("plug-in" if self.estimator == "plugin" else ("u-statistic" if self.term.quadratic else "jackknife")),
            "n_batches": len(self.batches),
            "n_samples": self.n_samples,
            "k_rotations": [int(r.shape[-3]) for r in self.rotations],
            "dtype": str(self.theta0.dtype),
        }
