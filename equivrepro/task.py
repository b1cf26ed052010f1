"""The one interface a task implements so that every equivrepro tool works on it.

A *batch* is a ``dict[str, Tensor]`` whose tensors all have the sample dimension first (``B``); padded
per-atom / per-residue tensors carry a boolean mask. Because of that, replicating a batch K times and
averaging predictions over the K copies are generic operations (:func:`repeat_batch`,
:func:`split_copies`) and the metrics never need to know which task they run on.

A task says

* how a rotation acts on a batch (:meth:`Task.rotate_batch`: inputs, targets and fixed noise together),
* how to bring a prediction back to the original frame (:meth:`Task.unrotate_prediction`),
* how the model maps a batch to a prediction dict (:meth:`Task.predict`, deterministic given the batch),
* what the prediction is compared with (:meth:`Task.targets`, same keys as the prediction), and
* which per-sample losses are decomposed (:attr:`Task.terms`).

For training, :meth:`Task.training_loss` draws the task's own randomness (noise, time, …) from a
generator the harness seeds per step, and :meth:`Task.evaluation_batches` freezes that randomness into
held-out batches (e.g. one per flow-matching time) so the decomposition measures the network only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from equivrepro.metrics.attribution import Attribution
    from equivrepro.metrics.baselines import EquivariantBaseline

Batch = dict[str, torch.Tensor]
Prediction = dict[str, torch.Tensor]
LossFn = Callable[[Prediction, Prediction, Batch], torch.Tensor]

__all__ = ["Batch", "Prediction", "LossTerm", "Task", "repeat_batch", "split_copies", "batch_size", "to_device"]


@dataclass(frozen=True)
class LossTerm:
    """One per-sample loss that the twirl decomposition is applied to.

    ``fn(pred, target, batch) -> (B,)`` must be convex in ``pred``. Set ``quadratic=True`` only when it
    is a weighted squared error ``Σ_j w_j(batch) (pred_j - target_j)²`` with non-negative weights
    (MSE, masked MSE, sum-MSE): the decomposition then uses the exact unbiased U-statistics. Any other
    convex loss gets the plug-in estimate with a jackknife bias correction.
    """

    name: str
    fn: LossFn
    quadratic: bool = True


class Task:
    """Base class of the three tasks; see the module docstring for the contract."""

    #: Short name used as a metric prefix.
    name: str = "task"
    #: Terms the decomposition reports; the first is the headline term.
    terms: tuple[LossTerm, ...] = ()

    # --- group action ---------------------------------------------------------------------------
    def rotate_batch(self, batch: Batch, rotations: torch.Tensor) -> Batch:  # pragma: no cover - abstract
        """Return the batch with ``rotations (B, 3, 3)`` applied to every 3-D quantity in it."""
        raise NotImplementedError

    def unrotate_prediction(self, pred: Prediction, rotations: torch.Tensor) -> Prediction:  # pragma: no cover
        """Bring a prediction made on a rotated batch back to the original frame (apply ``Rᵀ``)."""
        raise NotImplementedError

    # --- model ------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, batch: Batch) -> Prediction:  # pragma: no cover - abstract
        """Deterministic forward pass on a batch whose randomness is already frozen."""
        raise NotImplementedError

    def targets(self, batch: Batch) -> Prediction:  # pragma: no cover - abstract
        """What the prediction is compared with, in the batch's own frame (same keys as the prediction)."""
        raise NotImplementedError

    # --- training ---------------------------------------------------------------------------------
    def training_loss(
        self, model: nn.Module, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:  # pragma: no cover - abstract
        """Scalar training loss on an (already augmented) batch and a dict of scalars to log."""
        raise NotImplementedError

    def evaluation_batches(self, batch: Batch, generator: torch.Generator) -> Mapping[str, Batch]:
        """Held-out batches with all randomness frozen, keyed by a metric suffix ('' for one batch)."""
        return {"": batch}

    def null_prediction(self, batch: Batch) -> Prediction | None:
        """Prediction of a trivial baseline (zero field, mean target, …) for context next to pct."""
        return None

    # --- cheap equivariant baseline (context for pct, and the instrument's floor) --------------------
    def make_baseline(self) -> EquivariantBaseline | None:
        """A fresh, unfitted cheap equivariant baseline of this task (see :mod:`equivrepro.metrics.baselines`),
        fitted by the harness on training data only; None when the task has none."""
        return None

    # --- what a deployed model can rotate ------------------------------------------------------------
    def rotate_model_input(self, batch: Batch, rotations: torch.Tensor) -> Batch:
        """The batch with ``rotations (B, 3, 3)`` applied to what the model sees *at inference*, using only
        what a deployed model has (the test-time twirl goes through this). Default :meth:`rotate_batch`;
        a task whose evaluation batch carries quantities a deployed model does not have (the clean
        molecule behind a noisy voxel grid) overrides it."""
        return self.rotate_batch(batch, rotations)

    # --- where in a sample the equivariance error lives -----------------------------------------------
    def attribution(self, batch: Batch) -> dict[str, Attribution]:
        """Per prediction key, how its output elements group into entities (atoms, residues, voxels) and the
        per-entity descriptors ``(B, N)`` they are binned by (:class:`equivrepro.metrics.attribution.Attribution`),
        computed from an evaluation batch in its own (untwisted) frame. Default: none (no per-entity maps)."""
        return {}

    # --- settings that come from the data ------------------------------------------------------------
    def bind_data(self, statistics: Mapping[str, float]) -> dict[str, object]:
        """Fill settings that depend on the data actually used (normalisers, …) from
        ``datamodule.statistics()``; called once after ``setup()``. Returns a record of what was set or
        found inconsistent (written to the run's status). Default: nothing to bind."""
        return {}

    @property
    def primary_term(self) -> LossTerm:
        return self.terms[0]


# --------------------------------------------------------------------------------------------------
# Generic batch utilities (valid because every tensor has the sample dimension first)
# --------------------------------------------------------------------------------------------------
def batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    sizes = {int(v.shape[0]) for v in batch.values() if torch.is_tensor(v) and v.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(f"batch tensors disagree on the sample dimension: { {k: tuple(v.shape) for k, v in batch.items()} }")
    return sizes.pop()


def repeat_batch(batch: Mapping[str, torch.Tensor], k: int) -> Batch:
    """Each sample repeated ``k`` times, sample-major: row ``i*k + j`` is copy ``j`` of sample ``i``."""
    return {key: v.repeat_interleave(k, dim=0) for key, v in batch.items()}


def split_copies(x: torch.Tensor, b: int, k: int) -> torch.Tensor:
    """``(b*k, ...)`` laid out by :func:`repeat_batch` → ``(b, k, ...)``."""
    return x.reshape((b, k) + tuple(x.shape[1:]))


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device | str, non_blocking: bool = False) -> Batch:
    return {key: v.to(device, non_blocking=non_blocking) for key, v in batch.items()}
