"""Save a checkpoint when the cluster is about to stop the job, then let the launcher requeue it.

SLURM sends SIGTERM on preemption and submitit's pre-timeout signal (``SUBMITIT_PREEMPT_SIGNAL``,
USR2 by default) before the time limit. A signal handler must not write a checkpoint in the middle
of an optimizer step, so :class:`PreemptionGuard` only records the signal; the loop checks
:attr:`pending` at every step boundary, saves, and calls :meth:`release`, which hands the signal to
the handler that was installed before (submitit's: requeue the job and exit) or, if there was none,
raises :class:`~equivrepro.train.loop.TrainingInterrupted`. The requeued job composes the same config,
lands in the same run directory and wandb id, and resumes at the saved step.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["PreemptionGuard"]


def _signals() -> list[signal.Signals]:
    names = {"SIGTERM", "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")}
    return [getattr(signal, n) for n in sorted(names) if hasattr(signal, n)]


class PreemptionGuard:
    def __init__(self, distributed: bool = False):
        self.distributed = distributed
        self.pending: tuple[int, Any] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in _signals():
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, frame: Any) -> None:
        self.pending = (signum, frame)

    def should_stop(self) -> bool:
        """True on every rank if any rank was signalled (one tiny all-reduce per step under DDP)."""
        flag = self.pending is not None
        if self.distributed:
            t = torch.tensor([1.0 if flag else 0.0])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item() > 0)
        return flag

    def release(self) -> None:
        """Restore the previous handlers and deliver the recorded signal to them."""
        signum, frame = self.pending if self.pending is not None else (signal.SIGTERM, None)
        self._restore()
        prev = self._previous.get(signum)
        if callable(prev):
            prev(signum, frame)

    def _restore(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)

    def __exit__(self, *exc) -> None:
        self._restore()
