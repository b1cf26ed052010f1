"""The equivariance metric for any training loop: ``update`` / ``compute`` / ``reset``, the shape of torchmetrics.

    metric = EquivarianceMetric(task, k=10, spectrum_l_max=8)
    for batch in heldout_loader:                       # any loop, any model
        metric.update(model, batch)                    # K Haar rotations per sample, one batched forward pass
    values = metric.compute()                          # {'equiv/forces/pct': 0.013, 'equiv/forces/pct_ci_lo': …, …}
    metric.reset()

``update`` takes a model (run through ``task.predict``), any callable batch → prediction, or precomputed
untwisted predictions ``z[key] (B, K, …)`` together with the rotations they were made with. It keeps only
per-sample numbers (a few floats per sample and term), so a held-out set of any size accumulates in O(n)
memory. ``compute`` pools every update — across DDP ranks too (per-sample values are gathered, so standard
errors, quantiles and bootstrap intervals are those of the whole set, not an average of per-rank ones) —
and returns a flat dict of floats under the names of :mod:`equivrepro.metrics.keys`.

The estimators are those of :mod:`equivrepro.metrics.decomposition` (U-statistics for quadratic terms,
jackknife otherwise, plug-in when the rotations enumerate a finite group: ``exact_group=True``), with
``spectrum_l_max`` the degree spectrum of :mod:`equivrepro.metrics.spectral`, and with ``attribution`` the
binned per-entity maps of :mod:`equivrepro.metrics.attribution` (the task's :meth:`~equivrepro.task.Task.attribution`),
all from the same K copies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from equivrepro.metrics import keys
from equivrepro.metrics.decomposition import TermDecomposition, decompose_term, per_sample_rotations, untwisted_predictions
from equivrepro.rotations import haar_rotations
from equivrepro.task import Batch, LossTerm, Prediction, Task, batch_size

__all__ = ["EquivarianceMetric", "gather_per_sample"]


def gather_per_sample(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate per-sample tensors from every DDP rank (in rank order); a no-op without a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
        return tensors
    mine = [t.detach().cpu() for t in tensors]
    everyone: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, mine)
    return [torch.cat([rank[i] for rank in everyone]) for i in range(len(tensors))]


class EquivarianceMetric:
    """Accumulates the twirl decomposition (and optionally the degree spectrum) of a model on held-out data.

    Args:
        task: the :class:`~equivrepro.task.Task` (group action, prediction, targets, loss terms).
        k: Haar rotations per sample drawn in :meth:`update` when none are given (≥ 2; ≥ 3 for the spectrum).
        terms: loss terms to decompose (default: all of the task's).
        family: metric-key family of the results (``equiv``; ``equiv_cube`` for a finite-group twirl, …).
        exact_group: the rotations given to :meth:`update` enumerate a finite group (plug-in = exact).
        suffix: evaluation suffix of the keys (``t=0.4``), if the held-out batches are one of several.
        chunk_size: rotations per forward pass (memory bound).
        spectrum_l_max: also the degree spectrum up to this degree for the quadratic terms (None: off).
        attribution: also L_equiv binned by the task's per-entity descriptors (``attribution/…`` keys; tasks without
            :meth:`~equivrepro.task.Task.attribution` give none).
        bootstrap: resamples for the percentile bootstrap interval of pct (0: off).
        seed: seed of the rotations drawn in :meth:`update` and of the bootstrap.
        sync: pool per-sample values across DDP ranks in :meth:`compute` (every rank must call it); False when
            only one rank evaluates.
    """

    def __init__(
        self,
        task: Task,
        *,
        k: int = 10,
        terms: tuple[LossTerm, ...] | None = None,
        family: str = keys.EQUIV,
        exact_group: bool = False,
        suffix: str = "",
        chunk_size: int | None = None,
        spectrum_l_max: int | None = None,
        bootstrap: int = 1000,
        seed: int = 0,
        sync: bool = True,
        attribution: bool = False,
    ):
        if int(k) < 2:
            raise ValueError(f"the twirl decomposition needs k ≥ 2 rotations per sample, got k={k}")
        self.task, self.k, self.terms = task, int(k), tuple(terms or task.terms)
        self.family, self.exact_group, self.suffix, self.chunk_size = family, bool(exact_group), suffix, chunk_size
        self.spectrum_l_max = None if spectrum_l_max is None else int(spectrum_l_max)
        self.bootstrap, self.seed, self.sync = int(bootstrap), int(seed), bool(sync)
        self.attribution = bool(attribution)
        self._generator = torch.Generator().manual_seed(self.seed)
        self.reset()

    # --- torchmetrics shape -------------------------------------------------------------------------
    def reset(self) -> None:
        self._parts: dict[str, list[TermDecomposition]] = {}
        self._spectra: dict[str, list[Any]] = {}
        self._binned: dict[str, list[Any]] = {}

    def update(
        self,
        model_or_predictions: nn.Module | Callable[[Batch], Prediction] | Mapping[str, torch.Tensor],
        batch: Batch,
        rotations: torch.Tensor | None = None,
    ) -> dict[str, TermDecomposition]:
        """Add one batch. ``rotations``: ``(B, K, 3, 3)`` per sample or ``(K, 3, 3)`` shared; drawn (Haar, K per sample)
        when omitted. Returns this batch's decompositions."""
        b = batch_size(batch)
        if rotations is None:
            if isinstance(model_or_predictions, Mapping):
                raise ValueError("precomputed untwisted predictions need the rotations they were made with")
            rotations = haar_rotations(b * self.k, generator=self._generator, dtype=self._float_dtype(batch)).reshape(b, self.k, 3, 3)
            rotations = rotations.to(self._device(batch))
        if isinstance(model_or_predictions, Mapping):
            z = dict(model_or_predictions)
        else:
            z = untwisted_predictions(model_or_predictions, self.task, batch, rotations, chunk_size=self.chunk_size)
        return self.update_from_predictions(z, batch, rotations)

    def update_from_predictions(self, z: Mapping[str, torch.Tensor], batch: Batch, rotations: torch.Tensor) -> dict[str, TermDecomposition]:
        """Add a batch from its untwisted predictions ``z[key] (B, K, …)``."""
        target = self.task.targets(batch)
        out = {}
        for term in self.terms:
            dec = decompose_term(term, z, target, batch, exact_group=self.exact_group)
            out[term.name] = dec
            self._parts.setdefault(term.name, []).append(_detached(dec))
        if self.spectrum_l_max is not None and not self.exact_group:
            from equivrepro.metrics.spectral import degree_spectra

            rot = per_sample_rotations(rotations, batch_size(batch))
            for name, spec in degree_spectra(z, rot, self.task, batch, l_max=self.spectrum_l_max, terms=self.terms).items():
                self._spectra.setdefault(name, []).append(spec)
        if self.attribution:
            from equivrepro.metrics.attribution import binned_equiv

            attributions = self.task.attribution(batch)
            for term in self.terms if attributions else ():
                binned = binned_equiv(z, term, target, batch, attributions, exact_group=self.exact_group)
                if binned is not None:
                    self._binned.setdefault(term.name, []).append(binned)
        return out

    def results(self) -> dict[str, TermDecomposition]:
        """Per-sample estimates of every term, pooled over updates and DDP ranks."""
        pooled = {}
        for name, parts in self._parts.items():
            dec = TermDecomposition.concat(parts)
            parts = [dec.total, dec.mean_plugin, dec.equiv_plugin, dec.mean_unbiased, dec.equiv_unbiased]
            t, mp, ep, mu, eu = gather_per_sample(parts) if self.sync else parts
            pooled[name] = TermDecomposition(dec.name, dec.k, dec.quadratic, dec.exact_group, t, mp, ep, mu, eu)
        return pooled

    def spectra(self) -> dict[str, Any]:
        """Pooled :class:`~equivrepro.metrics.spectral.DegreeSpectrum` of every quadratic term (empty when off)."""
        from equivrepro.metrics.spectral import DegreeSpectrum

        pooled = {name: DegreeSpectrum.concat(parts) for name, parts in self._spectra.items()}
        if not self.sync:
            return pooled
        out = {}
        for name, spec in pooled.items():
            est, eq, tot = gather_per_sample([spec.estimates, spec.equiv, spec.total])
            out[name] = DegreeSpectrum(spec.name, spec.k, spec.l_max, est, eq, tot, spec.centring)
        return out

    def attributions(self) -> dict[str, Any]:
        """Pooled :class:`~equivrepro.metrics.attribution.BinnedEquiv` of every attributed term (empty when off)."""
        from equivrepro.metrics.attribution import BinnedEquiv

        pooled = {name: BinnedEquiv.concat(parts) for name, parts in self._binned.items()}
        if not self.sync:
            return pooled
        out = {}
        for name, b in pooled.items():
            sums, counts, equiv = gather_per_sample([b.sums, b.counts, b.equiv])
            out[name] = BinnedEquiv(b.term, b.entity, b.bins, sums, counts, equiv, b.descriptors)
        return out

    def compute(self) -> dict[str, float]:
        """Summaries of every term under :func:`keys.key` names (``family/[suffix/]term/quantity``)."""
        if not self._parts:
            raise RuntimeError("EquivarianceMetric.compute() called before any update()")
        out: dict[str, float] = {}
        gen = torch.Generator().manual_seed(self.seed + 1)
        for name, dec in self.results().items():
            for q, v in dec.summary(bootstrap=self.bootstrap, generator=gen).items():
                out[keys.key(self.family, name, q, self.suffix)] = v
        for spec in self.spectra().values():
            out.update(spec.metrics(self.suffix))
        for binned in self.attributions().values():
            out.update(binned.metrics(self.suffix))
        return out

    # --- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _float_dtype(batch: Batch) -> torch.dtype:
        for v in batch.values():
            if torch.is_tensor(v) and v.is_floating_point():
                return v.dtype
        return torch.float32

    @staticmethod
    def _device(batch: Batch) -> torch.device:
        for v in batch.values():
            if torch.is_tensor(v):
                return v.device
        return torch.device("cpu")


def _detached(dec: TermDecomposition) -> TermDecomposition:
    f = lambda x: x.detach()  # noqa: E731
    return TermDecomposition(
        dec.name,
        dec.k,
        dec.quadratic,
        dec.exact_group,
        f(dec.total),
        f(dec.mean_plugin),
        f(dec.equiv_plugin),
        f(dec.mean_unbiased),
        f(dec.equiv_unbiased),
    )
