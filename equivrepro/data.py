"""What every task's data module shares: the data-module contract, seeded splits, nested subsets, padding.

A data module (one per task, in ``tasks/<task>/data.py``) is built by Hydra from ``configs/data/*.yaml``
and exposes

* ``setup()`` — read / index / cache the data (idempotent; raises :class:`DataError` naming the file and
  record on bad input),
* ``train_dataset`` and ``heldout_dataset`` — map-style datasets whose items are ``dict[str, Tensor]``,
* ``collate(items) -> Batch`` — a padded batch (sample dimension first, boolean ``mask`` for padding),
* ``describe() -> dict`` — counts worth logging (sizes, skipped records by reason, units),
* ``statistics() -> dict`` — training-split statistics a task binds to (normalisers).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from equivrepro.task import Batch

__all__ = [
    "ProcessLocalFile","DataError", "DataModule", "nested_subset", "heldout_split", "pad_collate", "SubsetDataset"]


class ProcessLocalFile:
    """A file opened lazily, once per process, by ``opener()`` (e.g. ``partial(h5py.File, path, "r")``).

    DataLoader workers (forked or spawned) must not share an h5py or plain file handle with the main
    process: :meth:`get` reopens the file when it is called from a new process, and pickling drops the
    handle. ``opener`` must be picklable (a ``functools.partial`` of an importable callable is).
    """

    def __init__(self, opener: Callable[[], Any]):
        self.opener = opener
        self._handle: Any = None
        self._pid: int | None = None

    def get(self) -> Any:
        pid = os.getpid()
        if self._handle is None or self._pid != pid:
            self._handle = self.opener()
            self._pid = pid
        return self._handle

    def __getstate__(self) -> dict:
        return {"opener": self.opener, "_handle": None, "_pid": None}


class DataError(ValueError):
    """Bad input data; the message names the file and the record (group, chain, molecule, …)."""


class DataModule:
    """Base class of the task data modules (see module docstring)."""

    train_dataset: Dataset
    heldout_dataset: Dataset

    def setup(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def collate(self, items: Sequence[Mapping[str, torch.Tensor]]) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"train_size": len(self.train_dataset), "heldout_size": len(self.heldout_dataset)}

    def statistics(self) -> dict[str, float]:
        """Statistics of the training split that a task binds settings to (:meth:`equivrepro.task.Task.bind_data`),
        e.g. force-field normalisers; computed from the data actually used, after :meth:`setup`. Default: none."""
        return {}


class SubsetDataset(Dataset):
    """A view of ``base`` restricted to ``indices`` (a 1-D LongTensor)."""

    def __init__(self, base: Dataset, indices: torch.Tensor):
        self.base = base
        self.indices = indices.long()

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]


def heldout_split(n: int, heldout: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed split of ``range(n)`` into (train pool, held-out) indices.

    ``heldout`` is a count (int ≥ 1) or a fraction in (0, 1). The held-out set depends only on ``n`` and
    ``seed``, never on the training-subset size, so runs of every data size are evaluated on the same
    molecules.
    """
    n_held = int(round(heldout * n)) if isinstance(heldout, float) and heldout < 1 else int(heldout)
    if not 0 < n_held < n:
        raise ValueError(f"held-out size {n_held} must be between 1 and {n - 1} (dataset has {n} records)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def nested_subset(pool: torch.Tensor, size: int | float | None, seed: int) -> torch.Tensor:
    """The first ``size`` elements of a seeded permutation of ``pool`` (a count or a fraction of it).

    Subsets for the same seed are nested: the 500-record subset is inside the 5k one, which is inside
    the 50k one, and so on. ``None`` keeps the whole pool.
    """
    n = int(pool.numel())
    if size is None:
        return pool
    k = int(round(size * n)) if isinstance(size, float) and size <= 1 else int(size)
    if not 1 <= k <= n:
        raise ValueError(f"training subset size {size} is not within 1..{n} (records available)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return pool[perm[:k]].sort().values


def pad_collate(items: Sequence[Mapping[str, torch.Tensor]], ragged: Iterable[str], length_key: str | None = None) -> Batch:
    """Stack item dicts into a batch, padding the ``ragged`` keys along their first dimension with zeros.

    Adds ``mask (B, N_max)`` (True on real rows), taken from the first ragged key (or ``length_key``).
    Non-ragged tensors must have equal shapes and are stacked.
    """
    ragged = list(ragged)
    out: Batch = {}
    lengths = torch.tensor([int(it[length_key or ragged[0]].shape[0]) for it in items])
    n_max = int(lengths.max()) if len(items) else 0
    for key in items[0].keys():
        vals = [it[key] for it in items]
        if key in ragged:
            # each ragged key is padded to its own longest entry (it need not share length_key's length)
            shape = (len(vals), max(int(v.shape[0]) for v in vals)) + tuple(vals[0].shape[1:])
            padded = vals[0].new_zeros(shape)
            for i, v in enumerate(vals):
                padded[i, : v.shape[0]] = v
            out[key] = padded
        else:
            out[key] = torch.stack([torch.as_tensor(v) for v in vals])
    out["mask"] = torch.arange(n_max)[None, :] < lengths[:, None]
    return out
