"""Step-indexed, resumable batch sampling.

The indices of the batch at optimizer step ``s`` are a pure function of (seed, s): epoch ``e`` uses a
permutation seeded by ``(seed, e)``, and step ``s`` takes the next ``global_batch`` indices. Resuming
at step ``s`` therefore replays exactly the batches an uninterrupted run would have seen, with no data
loader state to save. Under DDP each rank takes its contiguous slice of the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["StepBatchSampler"]


class StepBatchSampler(Sampler[list[int]]):
    def __init__(
        self, n: int, batch_size: int, seed: int, start_step: int = 0, max_steps: int | None = None, rank: int = 0, world_size: int = 1
    ):
        if n < 1:
            raise ValueError("cannot sample batches from an empty training set")
        self.n, self.batch_size, self.seed = n, int(batch_size), int(seed)
        self.start_step, self.max_steps = int(start_step), max_steps
        self.rank, self.world_size = rank, world_size

    def _perm(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        cache: dict[int, torch.Tensor] = {}
        g = self.batch_size * self.world_size
        while self.max_steps is None or step < self.max_steps:
            start = step * g + self.rank * self.batch_size
            batch = []
            for pos in range(start, start + self.batch_size):
                epoch, i = divmod(pos, self.n)
                if epoch not in cache:
                    cache = {epoch: self._perm(epoch)} | {e: p for e, p in cache.items() if e == epoch - 1}
                batch.append(int(cache[epoch][i]))
            yield batch
            step += 1

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) if self.max_steps is not None else 2**31
