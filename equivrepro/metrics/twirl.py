"""Test-time twirling: average K untwisted predictions, f̄_K(x) = (1/K) Σ_k g_k⁻¹ f(g_k x).

For MSE, E‖f̄_K(x) − y‖² = L_mean + L_equiv / K: twirling removes a fraction 1 − 1/K of the
equivariance error at K× the inference cost. When the rotations enumerate a finite group, f̄_K is
exactly equivariant under that group.

The copies are rotated with :meth:`~equivrepro.task.Task.rotate_model_input` — what a deployed model can
rotate — not :meth:`~equivrepro.task.Task.rotate_batch` (for the point-cloud tasks the two are the same; for
voxels the twirl rotates the noisy grid and never re-voxelises the clean atoms).
"""

from __future__ import annotations

import torch
from torch import nn

from equivrepro.metrics.decomposition import Predictor, as_predictor, per_sample_rotations
from equivrepro.task import Batch, Prediction, Task, batch_size, repeat_batch, split_copies

__all__ = ["TwirledPredictor"]


class TwirledPredictor:
    """Callable batch → prediction averaging the model over ``rotations`` ``(K, 3, 3)`` or ``(B, K, 3, 3)``.

    All K copies run as one batched forward pass (``chunk_size`` rotations at a time). Copy ``k`` is
    ``task.unrotate_prediction(f(task.rotate_model_input(batch, g_k)), g_k)``.
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
        predict = as_predictor(self.model, self.task)
        b = batch_size(batch)
        rot = per_sample_rotations(rot, b)
        k = rot.shape[1]
        step = k if self.chunk_size is None else max(1, int(self.chunk_size))
        pieces: dict[str, list[torch.Tensor]] = {}
        for start in range(0, k, step):
            r = rot[:, start : start + step]
            c = r.shape[1]
            flat_r = r.reshape(b * c, 3, 3)
            pred = self.task.unrotate_prediction(predict(self.task.rotate_model_input(repeat_batch(batch, c), flat_r)), flat_r)
            for key, v in pred.items():
                pieces.setdefault(key, []).append(split_copies(v, b, c))
        return {key: torch.cat(v, dim=1).mean(dim=1) for key, v in pieces.items()}
