"""The equivariance callback: the twirl decomposition on a fixed held-out subset at chosen training steps.

Built on :class:`equivrepro.metrics.metric.EquivarianceMetric` (the same object a user's own loop uses) and
:func:`equivrepro.analysis.heldout.freeze_heldout` (the same held-out set the analyses rebuild). At
construction it freezes everything random — which held-out samples, the task's evaluation batches (noise,
flow times, …) and K Haar rotations per sample — so the curves over training differ only because the model
changed, and it fits the task's cheap equivariant baseline on training samples. Logged keys
(:mod:`equivrepro.metrics.keys`; ``S`` the evaluation suffix, ``T`` a loss term):

* ``equiv/[S/]T/{total,mean,equiv,pct,…}`` — unbiased estimates, plug-ins, standard errors, per-sample
  quantiles and the bootstrap interval ``pct_ci_lo/hi`` of pct;
* ``equiv/[S/]T/{null_total,total_rel_null}`` — the trivial predictor's loss and L_total relative to it;
* ``equiv/[S/]T/{baseline_total,total_rel_baseline}`` — the fitted cheap equivariant baseline's loss and
  L_total relative to it (a low pct means something only if the model is well below its baseline);
* with ``floor``: ``equiv_floor/[S/]T/{total,equiv,pct}`` — the baseline (an equivariant, input-dependent
  predictor) through the same rotate/unrotate path: what the instrument alone contributes (round-off for
  exact group actions, > 0 for resampled grids), and ``equiv/[S/]T/pct_net`` = (L_equiv − floor) / L_total;
* with ``cube_group``: ``equiv_cube/[S/]T/…`` — the exact 24-rotation cube-group twirl (``'final'``: at the last
  evaluation only, where 24 forward passes per sample would dominate a CPU run);
* with ``spectrum_l_max``: ``spectrum/[S/]T/l=<l>`` (and the remainder, Lie sum, shares) from the same K copies;
  ``attribution/[S/]T/<descriptor>=<bin>[_se|_per_entity|_count]`` — the share of L_equiv per bin of the task's
  per-entity descriptors (:meth:`~equivrepro.task.Task.attribution`; element, distance from the centroid, …), from
  the same copies; and at the *last* evaluation only (``callback(model, final=True)``) the error against rotation
  angle for the primary term, ``angle/[S/]T/{measured,predicted}_deg=<ω>[_se|_upper]`` — measured directly on the
  same held-out batches (``angle_rotations`` Haar g per sample, each compared with g·r_ω for every angle:
  ``angle_rotations · (1 + #angles)`` extra copies per sample; at the ``angle_suffixes`` only, default all) and
  predicted from the spectrum;
* with ``grad_norms``: ``equiv/[S/]T/{equiv_grad_norm,mean_grad_norm,grad_norm_ratio,grad_pct}`` on the *same*
  weights as pct (the evaluated model: the EMA weights when EMA is on) and, with ``grad_samples``, on the first that
  many held-out samples, whose own pct is ``grad_pct`` — so the ratio and its pct come from identical weights and
  samples (one forward pass with autograd, two backward passes);
* with ``linear_head``: ``head/{deviation,relative_deviation,…}`` of the evaluated model's head.

Evaluation steps (:func:`evaluation_steps`): step 0, the last step, and either every ``every`` steps or
``log_points`` log-spaced steps (dense early, where the paper's dip is; the figures use log-step axes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from equivrepro.analysis.heldout import freeze_heldout
from equivrepro.analysis.linear_head import deviation_norm, get_linear_head
from equivrepro.metrics import keys
from equivrepro.metrics.gradients import gradient_norms
from equivrepro.metrics.metric import EquivarianceMetric
from equivrepro.rotations import octahedral_group
from equivrepro.task import Batch, Task

__all__ = ["EquivarianceCallback", "evaluation_steps"]


def evaluation_steps(max_steps: int, every: int = 0, log_points: int = 0) -> set[int]:
    """Steps at which to evaluate: 0, ``max_steps``, multiples of ``every`` and ``log_points`` log-spaced steps in
    [1, max_steps] (rounded, de-duplicated). Both 0 → only the first and the last step."""
    steps = {0, int(max_steps)}
    if every:
        steps |= set(range(int(every), int(max_steps) + 1, int(every)))
    if log_points:
        steps |= {int(round(s)) for s in np.geomspace(1, max(int(max_steps), 1), int(log_points))}
    return {s for s in steps if 0 <= s <= int(max_steps)}


def _first_samples(batches: list[Batch], rotations: list[torch.Tensor], m: int) -> tuple[list[Batch], list[torch.Tensor]]:
    """The first ``m`` samples of a chunked held-out set (chunks cut where needed)."""
    out_b, out_r, left = [], [], int(m)
    for batch, rot in zip(batches, rotations):
        if left <= 0:
            break
        take = min(left, int(rot.shape[0]))
        out_b.append({key: v[:take] if torch.is_tensor(v) and v.dim() > 0 else v for key, v in batch.items()})
        out_r.append(rot[:take])
        left -= take
    return out_b, out_r


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
        grad_suffixes: list[str] | None = None,
        grad_samples: int | None = None,
        cube_group: bool | str = False,
        floor: bool = False,
        linear_head: str | None = None,
        spectrum_l_max: int | None = None,
        attribution: bool | None = None,
        angle_degrees: Sequence[float] = (15.0, 30.0, 60.0, 90.0, 120.0, 180.0),
        angle_rotations: int = 2,
        angle_suffixes: Sequence[str] | None = None,
        bootstrap: int = 1000,
        train_dataset=None,
        baseline_samples: int = 64,
        dtype: torch.dtype = torch.float32,
    ):
        self.task, self.device = task, device
        self.k, self.chunk_size, self.bootstrap, self.seed = int(k), chunk_size, int(bootstrap), int(seed)
        if cube_group not in (True, False, "final"):
            raise ValueError(f"equivariance.cube_group must be true, false or 'final', got {cube_group!r}")
        self.want_grad, self.want_floor = bool(grad_norms), bool(floor)
        self.cube_final_only = cube_group == "final"
        self.grad_suffixes = None if grad_suffixes is None else [str(s) for s in grad_suffixes]
        self.grad_samples = None if grad_samples is None else int(grad_samples)
        self.linear_head, self.spectrum_l_max = linear_head, spectrum_l_max
        # the per-entity attribution and the angle curve come with the spectrum unless asked for separately
        self.want_attribution = spectrum_l_max is not None if attribution is None else bool(attribution)
        self.angle_degrees, self.angle_rotations = tuple(float(a) for a in angle_degrees), int(angle_rotations)
        self.angle_suffixes = None if angle_suffixes is None else [str(s) for s in angle_suffixes]
        self.heldout = freeze_heldout(task, heldout_dataset, collate, num_samples, k, batch_size, seed, device=device, dtype=dtype)
        self.num_samples = self.heldout.num_samples
        self.cube = octahedral_group(dtype=dtype, device=device) if cube_group else None  # "final": at the last evaluation only
        self.baselines = self._fit_baselines(train_dataset, collate, int(baseline_samples), dtype) if train_dataset is not None else {}
        if self.want_floor and not self.baselines:
            raise ValueError(
                "equivariance.floor=true needs the task's equivariant baseline (task.make_baseline()) and training "
                f"data to fit it; {type(task).__name__} has none: set equivariance.floor=false"
            )
        self._model_free: dict[str, dict[str, float]] = {}

    # --- set-up: baselines fitted on training data only ----------------------------------------------
    def _fit_baselines(self, train_dataset, collate, n: int, dtype) -> dict[tuple[str, str], Any]:
        """One fitted baseline per (suffix, quadratic term), on ``n`` training samples with the task's evaluation
        randomness frozen the same way as the held-out set (another seed)."""
        if self.task.make_baseline() is None or n < 1 or len(train_dataset) == 0:
            return {}
        train = freeze_heldout(self.task, train_dataset, collate, n, 2, max(1, min(n, 16)), self.seed + 1, device=self.device, dtype=dtype)
        fitted = {}
        for suffix, batches in train.chunks.items():
            for term in self.task.terms:
                if term.quadratic:
                    fitted[(suffix, term.name)] = self.task.make_baseline().fit(self.task, batches, term)
        return fitted

    def _baseline_for(self, suffix: str, term_name: str):
        return self.baselines.get((suffix, term_name)) or self.baselines.get((suffix, self.task.primary_term.name))

    def _model_free_part(self, suffix: str, batches: list[Batch], rotations: list[torch.Tensor]) -> dict[str, float]:
        """The trivial predictor's and the baseline's losses and the baseline's decomposition through the path
        (the floor). They depend only on the frozen batches, so they are computed at the first evaluation only."""
        if suffix in self._model_free:
            return self._model_free[suffix]
        out: dict[str, float] = {}
        with torch.no_grad():
            for term in self.task.terms:
                null, base = [], []
                for batch in batches:
                    target = self.task.targets(batch)
                    p = self.task.null_prediction(batch)
                    if p is not None:
                        null.append(term.fn(p, target, batch))
                    b = self._baseline_for(suffix, term.name)
                    if b is not None:
                        base.append(term.fn(b(batch), target, batch))
                if null:
                    out[keys.key(keys.EQUIV, term.name, "null_total", suffix)] = float(torch.cat(null).double().mean())
                if base:
                    out[keys.key(keys.EQUIV, term.name, "baseline_total", suffix)] = float(torch.cat(base).double().mean())
            if self.want_floor:
                primary = self._baseline_for(suffix, self.task.primary_term.name)
                floor = EquivarianceMetric(
                    self.task, k=self.k, family=keys.FLOOR, suffix=suffix, chunk_size=self.chunk_size, bootstrap=0, sync=False
                )
                for batch, rot in zip(batches, rotations):
                    floor.update(primary, batch, rot)
                for name, v in floor.compute().items():
                    k = keys.parse(name)
                    if k is not None and k.quantity in ("total", "equiv", "pct", "equiv_plugin", "equiv_se"):
                        out[name] = v
        self._model_free[suffix] = out
        return out

    # --- one evaluation ------------------------------------------------------------------------------
    def _grad_wanted(self, suffix: str) -> bool:
        return self.want_grad and (self.grad_suffixes is None or suffix in self.grad_suffixes)

    def _evaluate_suffix(
        self, model: nn.Module, suffix: str, batches: list[Batch], rotations: list[torch.Tensor], final: bool = False
    ) -> dict[str, float]:
        metric = EquivarianceMetric(
            self.task,
            k=self.k,
            suffix=suffix,
            chunk_size=self.chunk_size,
            spectrum_l_max=self.spectrum_l_max,
            bootstrap=self.bootstrap,
            seed=self.seed,
            sync=False,
            attribution=self.want_attribution,
        )
        out: dict[str, float] = {}
        n = sum(int(r.shape[0]) for r in rotations)
        if self._grad_wanted(suffix) and (self.grad_samples is None or self.grad_samples >= n):
            out.update(self._update_with_gradients(model, metric, suffix, batches, rotations))
        else:
            with torch.no_grad():
                for batch, rot in zip(batches, rotations):
                    metric.update(model, batch, rot)
            if self._grad_wanted(suffix):  # on the first grad_samples held-out samples (their own pct beside the ratio)
                sub_b, sub_r = _first_samples(batches, rotations, self.grad_samples)
                scratch = EquivarianceMetric(
                    self.task, k=self.k, suffix=suffix, chunk_size=self.chunk_size, bootstrap=0, sync=False, terms=(self.task.primary_term,)
                )
                out.update(self._update_with_gradients(model, scratch, suffix, sub_b, sub_r))
        out.update(metric.compute())
        if final and (self.angle_suffixes is None or suffix in self.angle_suffixes):
            out.update(self._angle_curve(model, metric, suffix, batches))
        out.update(self._model_free_part(suffix, batches, rotations))
        for term in self.task.terms:
            k = keys.MetricKey(keys.EQUIV, term.name, "total", suffix)
            total = out.get(str(k))
            for ref, rel in (("null_total", "total_rel_null"), ("baseline_total", "total_rel_baseline")):
                v = out.get(str(k.with_(quantity=ref)))
                if v is not None and total is not None and v > 0:  # an exact reference (loss 0) has no ratio
                    out[str(k.with_(quantity=rel))] = total / v
            fe = out.get(keys.key(keys.FLOOR, term.name, "equiv", suffix))
            if fe is not None and total:
                out[str(k.with_(quantity="pct_net"))] = (out[str(k.with_(quantity="equiv"))] - fe) / total
        if self.cube is not None and (final or not self.cube_final_only):
            cube = EquivarianceMetric(
                self.task,
                k=self.cube.shape[0],
                family=keys.CUBE,
                exact_group=True,
                suffix=suffix,
                chunk_size=self.chunk_size,
                bootstrap=0,
                sync=False,
            )
            with torch.no_grad():
                for batch in batches:
                    cube.update(model, batch, self.cube)
            for name, v in cube.compute().items():
                if keys.parse(name).quantity in ("total", "mean", "equiv", "pct", "pct_se", "pct_q50", "pct_q90", "pct_max"):
                    out[name] = v
        return out

    def _angle_curve(self, model: nn.Module, metric: EquivarianceMetric, suffix: str, batches: list[Batch]) -> dict[str, float]:
        """The primary term's error against rotation angle, measured on the frozen batches and predicted from the spectrum
        (needs ``spectrum_l_max``; nothing for a non-quadratic primary term or ``angle_rotations=0``)."""
        from equivrepro.metrics.spectral import AngleCurve, angle_curve_measured, angle_curve_predicted

        term = self.task.primary_term
        spectrum = metric.spectra().get(term.name)
        if spectrum is None or self.angle_rotations < 1 or not self.angle_degrees:
            return {}
        omegas = torch.tensor(self.angle_degrees, dtype=torch.float64) * (torch.pi / 180)
        gen = torch.Generator().manual_seed(self.seed + 2)
        with torch.no_grad():
            parts = [
                angle_curve_measured(model, self.task, batch, omegas, self.angle_rotations, gen, term, chunk_size=self.chunk_size)
                for batch in batches
            ]
        measured = AngleCurve(omegas, torch.cat([p.per_sample for p in parts]))
        predicted = angle_curve_predicted(spectrum, omegas)
        out: dict[str, float] = {}
        for i, deg in enumerate(self.angle_degrees):
            out[keys.angle_key(term.name, "measured", deg, suffix)] = float(measured.mean[i])
            out[keys.angle_key(term.name, "measured", deg, suffix, "se")] = float(measured.se[i])
            out[keys.angle_key(term.name, "predicted", deg, suffix)] = float(predicted.mean[i])
            out[keys.angle_key(term.name, "predicted", deg, suffix, "se")] = float(predicted.se[i])
            out[keys.angle_key(term.name, "predicted", deg, suffix, "upper")] = float(predicted.upper[i])
        return out

    def _update_with_gradients(
        self, model: nn.Module, metric: EquivarianceMetric, suffix: str, batches: list[Batch], rotations: list[torch.Tensor]
    ) -> dict[str, float]:
        """Gradient norms of the held-out L_equiv and L_mean of the primary term on the evaluated weights; the same
        forward passes feed ``metric`` (no second pass)."""
        g = gradient_norms(
            model,
            self.task,
            batches,
            rotations,
            chunk_size=self.chunk_size,
            on_predictions=lambda z, b, r: metric.update_from_predictions(z, b, r),
        )
        k = keys.MetricKey(keys.EQUIV, self.task.primary_term.name, "equiv_grad_norm", suffix)
        return {
            str(k): g["equiv_grad_norm"],
            str(k.with_(quantity="mean_grad_norm")): g["mean_grad_norm"],
            str(k.with_(quantity="grad_norm_ratio")): g["grad_norm_ratio"],
            str(k.with_(quantity="grad_pct")): g["pct"],
        }  # pct of exactly the samples and weights of the gradients

    def __call__(self, model: nn.Module, final: bool = False) -> dict[str, float]:
        """All metrics of ``model`` (the EMA weights when EMA is on), in eval mode, then restored. ``final``: the run's
        last evaluation (adds the angle curve)."""
        was_training = model.training
        model.eval()
        out: dict[str, float] = {}
        try:
            for suffix in self.heldout.suffixes:
                batches, rotations = self.heldout.select(suffix)
                out.update(self._evaluate_suffix(model, suffix, batches, rotations, final=final))
        finally:
            model.train(was_training)
        if self.linear_head:
            for name, v in deviation_norm(get_linear_head(model, self.linear_head)).items():
                out[keys.scalar_key(keys.HEAD, name)] = v
        return out
