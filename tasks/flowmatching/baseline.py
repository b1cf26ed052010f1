"""The cheap equivariant baseline of flow matching: ``v̂ = c · x_t``, one parameter per flow time.

At a fixed flow time t the best velocity predictor proportional to the noisy sample ``x_t = (1 − t) x0 + t x1``
(centred, nm) is ``c(t) x_t`` with ``c(t)`` from weighted least squares on training data. It is exactly
equivariant (``x_t`` rotates with the sample) and needs no network; the harness fits one per evaluation suffix
(``t=0``, ``t=0.2``, …), i.e. per fixed t, so ``c = c(t)``. With x0 independent of x1, in expectation
``c(t) = (t·E‖x1‖² − (1 − t)·E‖x0‖²) / (t²·E‖x1‖² + (1 − t)²·E‖x0‖²)``: −1 at t = 0, → 1 as t → 1.
"""

from __future__ import annotations

import torch

from equivrepro.metrics.baselines import LinearBaseline
from equivrepro.task import Batch
from tasks.flowmatching.flow import interpolate

__all__ = ["noisy_sample_feature", "make_velocity_baseline"]


def noisy_sample_feature(batch: Batch) -> dict[str, torch.Tensor]:
    """``{"v": x_t · mask}`` shaped ``(B, N, 3, 1)`` — ``x_t`` as :meth:`FlowMatchingTask.predict` computes it (a carried
    ``x_t``, else ``(1 − t) x0 + t x1``)."""
    if "x0" not in batch or "t" not in batch:
        raise KeyError("the c·x_t baseline needs frozen 'x0' and 't' in the batch: build it with task.evaluation_batches()")
    x_t = batch["x_t"] if "x_t" in batch else interpolate(batch["x0"], batch["x1"], batch["t"])
    m = batch["mask"][..., None].to(x_t.dtype)
    return {"v": (x_t * m)[..., None]}


def make_velocity_baseline(ridge: float = 1e-8) -> LinearBaseline:
    """An unfitted ``c·x_t`` baseline (name ``c_t_x_t``); fit it on the training batches of one flow time."""
    return LinearBaseline("c_t_x_t", noisy_sample_feature, ridge=ridge)
