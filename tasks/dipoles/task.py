"""The dipole task: the dipole moment μ ∈ ℝ³ (an l = 1 vector) of a molecule from its atoms and coordinates.

Batch: ``pos (B, N, 3)`` Å, ``z (B, N)``, ``mask (B, N)``, ``dipole (B, 3)`` Debye. Prediction:
``{"dipole": (B, 3)}`` Debye, in the frame of the input.

A rotation R acts on the positions and the dipole alike (row vectors, x → x Rᵀ:
:func:`equivrepro.rotations.rotate_points`); the ideal model is equivariant, f(R·x) = R f(x). The model
predicts in units of ``dipole_scale`` (the per-component RMS of the training dipoles) and the task
multiplies back.

Terms decomposed (per molecule; the first is the headline):

* ``dipole`` — ‖μ̂ − μ‖² [D²] (quadratic → exact U-statistics),
* ``dipole_l2`` — ‖μ̂ − μ‖ [D] (convex, not quadratic → jackknife).

Training loss: mean over the batch of ‖μ̂ − μ‖² / dipole_scale² (MSE in the model's units).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from equivrepro.rotations import rotate_points
from equivrepro.task import Batch, LossTerm, Prediction, Task
from tasks.dipoles.baseline import PointChargeFeatures
from tasks.dipoles.units import DIPOLE_ELEMENTS

__all__ = ["DipoleTask", "dipole_se", "dipole_l2"]


def dipole_se(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
    """``(B,)``: squared error ‖μ̂ − μ‖² [D²]."""
    return (pred["dipole"] - target["dipole"]).pow(2).sum(-1)


def dipole_l2(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
    """``(B,)``: Euclidean error ‖μ̂ − μ‖ [D]."""
    return (pred["dipole"] - target["dipole"]).pow(2).sum(-1).clamp_min(1e-30).sqrt()


class DipoleTask(Task):
    """Dipole moments of molecules (see the module docstring).

    Args:
        dipole_scale: the model's output unit [D]; ``None`` (the default) takes the training split's per-component
            dipole RMS in :meth:`bind_data`. An explicit number is kept (and compared with the data's).
        elements: the element table of the point-charge baseline.
        baseline_bond_dipoles: add one bond dipole per element pair to the baseline (:mod:`tasks.dipoles.baseline`).
    """

    name = "dipoles"
    terms = (LossTerm("dipole", dipole_se, quadratic=True), LossTerm("dipole_l2", dipole_l2, quadratic=False))

    #: An explicit ``dipole_scale`` further than this factor (either way) from the data's is reported by :meth:`bind_data`.
    MISMATCH_FACTOR = 2.0

    def __init__(self, dipole_scale: float | None = None, elements: Sequence[int] = DIPOLE_ELEMENTS, baseline_bond_dipoles: bool = False):
        if dipole_scale is not None and not (isinstance(dipole_scale, (int, float)) and math.isfinite(dipole_scale) and dipole_scale > 0):
            raise ValueError(f"task.dipole_scale must be a positive number of Debye or null (from the data), got {dipole_scale!r}")
        self._explicit_scale = None if dipole_scale is None else float(dipole_scale)
        self.dipole_scale: float | None = self._explicit_scale
        self.elements = tuple(int(z) for z in elements)
        self.baseline_bond_dipoles = bool(baseline_bond_dipoles)

    # --- group action ---------------------------------------------------------------------------
    def rotate_batch(self, batch: Batch, rotations: torch.Tensor) -> Batch:
        out = dict(batch)
        out["pos"] = rotate_points(batch["pos"], rotations)
        out["dipole"] = rotate_points(batch["dipole"][:, None, :], rotations)[:, 0]
        return out

    def unrotate_prediction(self, pred: Prediction, rotations: torch.Tensor) -> Prediction:
        return {"dipole": rotate_points(pred["dipole"][:, None, :], rotations.transpose(-1, -2))[:, 0]}

    # --- model ------------------------------------------------------------------------------------
    def _scale(self) -> float:
        if self.dipole_scale is None:
            raise RuntimeError("task.dipole_scale is null and not bound yet: call bind_data(datamodule.statistics()) after setup()")
        return self.dipole_scale

    def predict(self, model: nn.Module, batch: Batch) -> Prediction:
        return {"dipole": model(batch["pos"], batch["z"], batch["mask"]) * self._scale()}

    def targets(self, batch: Batch) -> Prediction:
        return {"dipole": batch["dipole"]}

    # --- training ---------------------------------------------------------------------------------
    def training_loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        err = self.predict(model, batch)["dipole"].float() - batch["dipole"].float()
        se = err.pow(2).sum(-1)  # (B,) D²
        loss = se.mean() / self._scale() ** 2
        with torch.no_grad():
            logs = {"dipole_mse": float(se.mean()), "dipole_l2": float(se.clamp_min(1e-30).sqrt().mean())}
        return loss, logs

    def null_prediction(self, batch: Batch) -> Prediction:
        return {"dipole": torch.zeros_like(batch["dipole"])}

    # --- cheap equivariant baseline -----------------------------------------------------------------
    def baseline_features(self) -> PointChargeFeatures:
        return PointChargeFeatures(self.elements, bond_dipoles=self.baseline_bond_dipoles)

    def make_baseline(self):
        """The point-charge model (+ bond dipoles if ``baseline_bond_dipoles``), unfitted."""
        from equivrepro.metrics.baselines import LinearBaseline  # lazy: the metrics package does not import tasks

        name = "point_charges_bond_dipoles" if self.baseline_bond_dipoles else "point_charges"
        return LinearBaseline(name, self.baseline_features())

    # --- settings from the data ---------------------------------------------------------------------
    def bind_data(self, statistics: Mapping[str, float]) -> dict[str, object]:
        """An unset ``dipole_scale`` ← the training split's ``dipole_rms`` [D]; an explicit one is kept and, when it is
        further than :attr:`MISMATCH_FACTOR` from the data's, returned under ``mismatch`` (the harness logs it)."""
        rms = statistics.get("dipole_rms")
        record: dict[str, object] = {"normalisers": {}, "from_data": [], "mismatch": {}}
        if self._explicit_scale is None:
            if rms is None or not float(rms) > 0:
                raise ValueError(
                    f"task.dipole_scale is null (take it from the data) but the data module reports dipole_rms={rms}: "
                    f"set task.dipole_scale explicitly"
                )
            self.dipole_scale = float(rms)
            record["from_data"].append("dipole_scale")
        elif rms is not None and float(rms) > 0 and max(self._explicit_scale / rms, rms / self._explicit_scale) > self.MISMATCH_FACTOR:
            record["mismatch"]["dipole_scale"] = {"config": self._explicit_scale, "data": float(rms)}
        record["normalisers"]["dipole_scale"] = self.dipole_scale
        return record
