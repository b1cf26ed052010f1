"""The frozen held-out set of an equivariance evaluation: which samples, their evaluation batches, their rotations.

:func:`freeze_heldout` is the one place that draws it, for the training-time metric and for the analyses, so
an analysis of a checkpoint sees exactly the samples, task randomness (noise, flow times, …) and rotations
that the logged ``equiv/…`` values of that step were computed on. From one ``torch.Generator`` seeded with
``seed``, in this order:

1. ``n = min(num_samples, len(dataset))`` distinct sample indices (``randperm(len)[:n]``, sorted);
2. per chunk of ``batch_size`` of them (in index order): the collated batch ``raw``, then ``K`` Haar
   rotations per sample ``(b, K, 3, 3)``, then the task's evaluation batches
   ``task.evaluation_batches(raw, generator) -> {suffix: batch}`` (the frozen task randomness).

The same arguments therefore give the same held-out set, and another ``seed`` a fresh draw of all three
(what the *redrawn* landscape of :mod:`equivrepro.analysis.landscape` uses at every grid point).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from equivrepro.metrics import keys
from equivrepro.rotations import haar_rotations
from equivrepro.task import Batch, Task, to_device

__all__ = ["HeldOutSet", "freeze_heldout", "pick_suffix", "ALL_SUFFIXES"]

#: ``HeldOutSet.select(ALL_SUFFIXES)`` pools every evaluation batch of the task.
ALL_SUFFIXES = "all"


def _leading_size(raw: Batch) -> int:
    if "mask" in raw:
        return int(raw["mask"].shape[0])
    return int(next(v for v in raw.values() if torch.is_tensor(v)).shape[0])


@dataclass
class HeldOutSet:
    """Frozen evaluation chunks ``chunks[suffix][i]`` (batches on ``device``) and their rotations
    ``rotations[i]`` ``(b_i, K, 3, 3)`` (shared by every suffix of chunk i); ``indices``: the dataset
    indices of the ``num_samples`` samples, in chunk order."""

    chunks: dict[str, list[Batch]]
    rotations: list[torch.Tensor]
    num_samples: int
    k: int
    seed: int
    batch_size: int
    indices: list[int] = field(default_factory=list)
    dataset_size: int = 0

    @property
    def suffixes(self) -> list[str]:
        return sorted(self.chunks, key=keys.suffix_sort_key)

    def select(self, suffix: str) -> tuple[list[Batch], list[torch.Tensor]]:
        """``(batches, rotations)`` of one suffix, or of all of them pooled (``suffix='all'``)."""
        chosen = self.suffixes if suffix == ALL_SUFFIXES else [suffix]
        for s in chosen:
            if s not in self.chunks:
                raise KeyError(f"evaluation suffix {s!r} is not one of this task's evaluation batches: {self.suffixes} (or 'all')")
        batches, rotations = [], []
        for s in chosen:
            batches += self.chunks[s]
            rotations += self.rotations
        return batches, rotations


def freeze_heldout(
    task: Task,
    dataset,
    collate: Callable[[list], Batch],
    num_samples: int,
    k: int,
    batch_size: int,
    seed: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HeldOutSet:
    """Draw the held-out set (module docstring); ``dtype`` of the rotations (the batches keep the collate's)."""
    k, batch_size = int(k), int(batch_size)
    if k < 2:
        raise ValueError(f"an equivariance evaluation needs K ≥ 2 rotations per sample, got k={k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    g = torch.Generator().manual_seed(int(seed))
    n = min(int(num_samples), len(dataset))
    if n < 1:
        raise ValueError("the held-out set is empty: nothing to evaluate equivariance on")
    chosen = torch.randperm(len(dataset), generator=g)[:n].sort().values.tolist()
    chunks: dict[str, list[Batch]] = {}
    rotations: list[torch.Tensor] = []
    for start in range(0, n, batch_size):
        raw = collate([dataset[i] for i in chosen[start : start + batch_size]])
        b = _leading_size(raw)
        rotations.append(haar_rotations(b * k, generator=g, dtype=dtype).reshape(b, k, 3, 3).to(device))
        for suffix, eb in task.evaluation_batches(raw, g).items():
            chunks.setdefault(suffix, []).append(to_device(eb, device))
    return HeldOutSet(chunks, rotations, n, k, int(seed), batch_size, chosen, len(dataset))


def pick_suffix(available: Sequence[str], requested: str | None = None, preferred: str | None = None) -> str:
    """The evaluation suffix to analyse: ``requested`` (checked; ``'all'`` pools them), else the only one,
    else ``preferred`` (a task card's ``analysis.suffix``) when present, else the first in natural order."""
    available = sorted(available, key=keys.suffix_sort_key)
    if not available:
        raise ValueError("the task produced no evaluation batches")
    if requested is not None:
        if requested != ALL_SUFFIXES and requested not in available:
            raise KeyError(f"evaluation suffix {requested!r} is not one of this task's evaluation batches: {available} (or 'all')")
        return requested
    if len(available) == 1:
        return available[0]
    if preferred is not None and preferred in available:
        return preferred
    return available[0]
