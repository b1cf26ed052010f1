"""Test-time twirling: average K untwisted predictions, f̄_K(x) = (1/K) Σ_k g_k⁻¹ f(g_k x).

For MSE, E‖f̄_K(x) − y‖² = L_mean + L_equiv / K: twirling removes a fraction 1 − 1/K of the
equivariance error at K× the inference cost. When the rotations enumerate a finite group, f̄_K is
exactly equivariant under that group.
"""

from __future__ import annotations

import torch
from torch import nn

from equivrepro.metrics.decomposition import Predictor, untwisted_predictions
from equivrepro.task import Batch, Prediction, Task

__all__ = ["TwirledPredictor"]


class TwirledPredictor:
    """Callable batch → prediction averaging the model over ``rotations`` ``(K, 3, 3)`` or ``(B, K, 3, 3)``.

    All K copies run as one batched forward pass (``chunk_size`` rotations at a time).
    """

    def __init__(self, model: nn.Module | Predictor, task: Task, rotations: torch.Tensor, chunk_size: int | None = None):
        self.model = model
        self.task = task
        self.rotations = rotations
        self.chunk_size = chunk_size

    @property
    def k(self) -> int:
        return int(self.rotations.shape[-3])

    def __call__(self, batch: Batch) -> Prediction:
        rot = self.rotations
        if rot.dim() == 3:
            rot = rot.to(next(iter(batch.values())).device)
        z = untwisted_predictions(self.model, self.task, batch, rot, chunk_size=self.chunk_size)
        return {key: v.mean(dim=1) for key, v in z.items()}
