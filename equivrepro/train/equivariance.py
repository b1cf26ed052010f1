"""The equivariance callback: the twirl decomposition on a fixed held-out subset every N steps.

Uses :mod:`equivrepro.metrics` only. At construction it freezes everything random: which held-out
samples, the task's evaluation batches (noise, flow times, …) and K Haar rotations per sample, so the
curves over training differ only because the model changed. Logged keys (``S`` is the task's
evaluation-batch suffix, e.g. ``t=0.4`` for flow matching, empty otherwise; ``T`` a loss term):

* ``equiv/[S/]T/{total,mean,equiv,pct}`` — unbiased estimates (U-statistics or jackknife) and
  ``…/{mean_plugin,equiv_plugin,pct_plugin}``, ``…/{total_se,equiv_se,pct_se}``,
  ``…/{pct_q50,pct_q90,pct_max}`` (per-sample pct quantiles);
* ``equiv/[S/]T/null_total`` and ``…/total_rel_null`` — the loss of the task's trivial predictor and
  L_total relative to it (a low pct only means something if this is well below 1);
* with ``floor``: ``equiv_floor/[S/]T/…`` (the oracle ``task.targets`` through the same
  rotate/unrotate path: the numerical floor, 0 up to round-off except for resampled grids) and
  ``equiv/[S/]T/pct_net`` = (L_equiv − floor L_equiv) / L_total;
* with ``cube_group``: ``equiv_cube/[S/]T/…`` (all 24 cube rotations, exact group average);
* with ``grad_norms``: ``equiv/[S/]T/{equiv_grad_norm,mean_grad_norm,grad_norm_ratio}`` for the
  primary term on the first evaluation chunk;
* with ``linear_head`` (a module name such as ``force_head.out``): ``head/{deviation,relative_deviation,
  weight_deviation,bias_deviation,weight_norm,relative_weight_deviation,row_variance}`` — the size of
  the head's deviation from its equivariant subspace (:func:`equivrepro.analysis.linear_head.deviation_norm`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from equivrepro.analysis.linear_head import deviation_norm, get_linear_head
from equivrepro.metrics import TermDecomposition, gradient_norms, twirl_decomposition
from equivrepro.rotations import haar_rotations, octahedral_group
from equivrepro.task import Batch, Task, to_device

__all__ = ["EquivarianceCallback"]


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


class EquivarianceCallback:
    def __init__(
        self,
        task: Task,
        heldout_dataset,
        collate: Callable[[list], Batch],
        device: torch.device,
        *,
        num_samples: int = 32,
        k: int = 10,
        batch_size: int = 16,
        chunk_size: int | None = None,
        seed: int = 1234,
        grad_norms: bool = False,
        cube_group: bool = False,
        floor: bool = False,
        linear_head: str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.task, self.device = task, device
        self.k, self.chunk_size = int(k), chunk_size
        self.want_grad, self.want_cube, self.want_floor = grad_norms, cube_group, floor
        self.linear_head = linear_head
        self._model_free: dict[str, tuple[dict[str, float], dict[str, TermDecomposition]]] = {}
        g = torch.Generator().manual_seed(int(seed))
        n = min(int(num_samples), len(heldout_dataset))
        if n < 1:
            raise ValueError("the held-out set is empty: nothing to evaluate equivariance on")
        chosen = torch.randperm(len(heldout_dataset), generator=g)[:n].sort().values.tolist()
        # frozen evaluation chunks: {suffix: [batch, ...]} and per-sample rotations per chunk
        self.chunks: dict[str, list[Batch]] = {}
        self.rotations: list[torch.Tensor] = []
        for start in range(0, n, int(batch_size)):
            raw = collate([heldout_dataset[i] for i in chosen[start : start + int(batch_size)]])
            b = raw["mask"].shape[0] if "mask" in raw else next(iter(raw.values())).shape[0]
            self.rotations.append(haar_rotations(b * self.k, generator=g, dtype=dtype).reshape(b, self.k, 3, 3).to(device))
            for suffix, eb in task.evaluation_batches(raw, g).items():
                self.chunks.setdefault(suffix, []).append(to_device(eb, device))
        self.cube = octahedral_group(dtype=dtype, device=device) if cube_group else None
        self.num_samples = n

    def _decompose(self, predictor, batches: list[Batch], rotations, exact_group: bool = False) -> dict[str, TermDecomposition]:
        parts: dict[str, list[TermDecomposition]] = {}
        for i, batch in enumerate(batches):
            rot = rotations[i] if isinstance(rotations, list) else rotations
            for name, dec in twirl_decomposition(predictor, self.task, batch, rot, chunk_size=self.chunk_size, exact_group=exact_group).items():
                parts.setdefault(name, []).append(dec)
        return {name: TermDecomposition.concat(p) for name, p in parts.items()}

    def _null(self, batches: list[Batch]) -> dict[str, float]:
        sums: dict[str, list[torch.Tensor]] = {}
        for batch in batches:
            null = self.task.null_prediction(batch)
            if null is None:
                return {}
            target = self.task.targets(batch)
            for term in self.task.terms:
                sums.setdefault(term.name, []).append(term.fn(null, target, batch))
        return {name: float(torch.cat(v).double().mean()) for name, v in sums.items()}

    def _model_free_part(self, suffix: str, batches: list[Batch]) -> tuple[dict[str, float], dict[str, TermDecomposition]]:
        """The trivial predictor's losses and the oracle's decomposition (the floor) of one suffix. Both
        depend only on the frozen batches and rotations, so they are computed at the first evaluation only."""
        if suffix not in self._model_free:
            floor = self._decompose(self.task.targets, batches, self.rotations) if self.want_floor else {}
            self._model_free[suffix] = (self._null(batches), floor)
        return self._model_free[suffix]

    @torch.no_grad()
    def _no_grad_part(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for suffix, batches in self.chunks.items():
            decs = self._decompose(model, batches, self.rotations)
            null, floor = self._model_free_part(suffix, batches)
            for name, dec in decs.items():
                s = dec.summary()
                for key, v in s.items():
                    out[_join("equiv", suffix, name, key)] = v
                if name in null:
                    out[_join("equiv", suffix, name, "null_total")] = null[name]
                    out[_join("equiv", suffix, name, "total_rel_null")] = s["total"] / null[name] if null[name] > 0 else float("nan")
                if name in floor:
                    fs = floor[name].summary()
                    for key in ("equiv", "pct", "equiv_plugin"):
                        out[_join("equiv_floor", suffix, name, key)] = fs[key]
                    out[_join("equiv", suffix, name, "pct_net")] = (s["equiv"] - fs["equiv"]) / s["total"] if s["total"] > 0 else float("nan")
            if self.cube is not None:
                for name, dec in self._decompose(model, batches, self.cube, exact_group=True).items():
                    for key, v in dec.summary().items():
                        if key in ("total", "mean", "equiv", "pct", "pct_q50", "pct_q90", "pct_max"):
                            out[_join("equiv_cube", suffix, name, key)] = v
        return out

    def __call__(self, model: nn.Module, grad_model: nn.Module | None = None) -> dict[str, float]:
        """All metrics for ``model`` (the EMA weights when EMA is on), in eval mode, then restored.

        Gradient norms need trainable parameters, so they are taken on ``grad_model`` (the live
        training weights; defaults to ``model``).
        """
        was_training = model.training
        model.eval()
        try:
            out = self._no_grad_part(model)
        finally:
            model.train(was_training)
        if self.linear_head:
            for key, v in deviation_norm(get_linear_head(model, self.linear_head)).items():
                out[f"head/{key}"] = v
        if self.want_grad:
            gm = grad_model if grad_model is not None else model
            for suffix, batches in self.chunks.items():
                g = gradient_norms(gm, self.task, batches[0], self.rotations[0], chunk_size=self.chunk_size)
                for key, v in g.items():
                    out[_join("equiv", suffix, self.task.primary_term.name, key)] = v
        return out
