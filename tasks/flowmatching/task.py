"""Proteina-style Cα flow matching as an equivrepro :class:`~equivrepro.task.Task`.

Batch keys (from :class:`~tasks.flowmatching.data.ProteinChainDataModule`): ``x1 (B, N, 3)`` nm
(centred Cα), ``residue_index (B, N)``, ``chain_break (B, N)``, ``mask (B, N)``. Evaluation batches
add the frozen randomness ``x0 (B, N, 3)`` (centred noise, nm) and ``t (B,)``.

**Group action.** A rotation acts on every 3-D quantity of the batch *together*: the data ``x1``, the
noise ``x0`` (so ``x_t = (1 − t)x0 + t x1`` rotates with them) and, if stored, ``x_t`` and ``x_sc``.
The velocity target ``v = x1 − x0`` is a vector field and rotates the same way; a prediction is
brought back with ``Rᵀ``. Rotating the *same* noise draw with the sample is what makes the twirl
decomposition measure the network: for an exactly equivariant network every rotated copy then
gives the same untwisted prediction (tests check pct ≤ 1e-10 in float64), whereas drawing fresh
noise per rotation would add the sampler's randomness to ``L_equiv``.

**Self-conditioning.** In training (probability ``self_conditioning_prob``, Proteina: 0.5 per batch) the
model first runs without ``x_sc`` under ``no_grad`` and its detached ``x̂1 = x_t + (1 − t)v̂`` is fed
back as ``x_sc``. In :meth:`predict` the same two passes run when ``eval_self_conditioning`` is on;
``x_sc`` is computed inside ``predict`` from the (rotated) inputs, so the rotation acts jointly on
``x_t``, the self-conditioning input and the target by construction.

**Loss terms** (both quadratic in the prediction, per sample; see :mod:`tasks.flowmatching.flow`):

* ``velocity`` — the training loss, ``‖x̂1 − x1‖²/((1 − t)² + ε) = w(t)·MSE(v̂, v)``, a positive
  per-sample weight times a masked mean squared error;
* ``velocity_mse`` — the unweighted masked velocity MSE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from equivrepro.rotations import center_points, rotate_points
from equivrepro.task import Batch, LossTerm, Prediction, Task
from tasks.flowmatching.flow import (
    centered_gaussian_noise,
    interpolate,
    masked_mse,
    sample_flow_times,
    velocity_target,
    weighted_velocity_loss,
    x1_from_velocity,
)

__all__ = ["FlowMatchingTask", "PAPER_EVAL_TIMES"]

#: The flow times at which the paper logs the decomposition.
PAPER_EVAL_TIMES = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
#: Keys of the batch that are 3-D vectors (rotate with the sample).
VECTOR_KEYS = ("x1", "x0", "x_t", "x_sc")


class FlowMatchingTask(Task):
    """Cα flow matching (velocity prediction, Proteina's loss, self-conditioning, fixed-t evaluation).

    Args:
        t_beta: ``(a, b)`` of the Beta part of the time distribution (Proteina: (1.9, 1.0)).
        t_uniform_fraction: probability of a uniform time instead (Proteina: 0.02).
        loss_eps: ε of the loss weight ``1/((1 − t)² + ε)``.
        self_conditioning_prob: probability per training batch of the self-conditioning pass.
        eval_self_conditioning: run the two-pass self-conditioned prediction in :meth:`predict`.
        eval_times: the fixed flow times of :meth:`evaluation_batches`.
    """

    name = "flowmatching"

    def __init__(
        self,
        t_beta: Sequence[float] = (1.9, 1.0),
        t_uniform_fraction: float = 0.02,
        loss_eps: float = 1e-5,
        self_conditioning_prob: float = 0.5,
        eval_self_conditioning: bool = False,
        eval_times: Sequence[float] = PAPER_EVAL_TIMES,
    ):
        if len(t_beta) != 2 or min(t_beta) <= 0:
            raise ValueError(f"t_beta must be two positive numbers, got {t_beta}")
        if not 0.0 <= t_uniform_fraction <= 1.0 or not 0.0 <= self_conditioning_prob <= 1.0:
            raise ValueError("t_uniform_fraction and self_conditioning_prob must be probabilities")
        if any(not 0.0 <= float(t) <= 1.0 for t in eval_times):
            raise ValueError(f"eval_times must lie in [0, 1], got {list(eval_times)}")
        self.t_beta = (float(t_beta[0]), float(t_beta[1]))
        self.t_uniform_fraction = float(t_uniform_fraction)
        self.loss_eps = float(loss_eps)
        self.self_conditioning_prob = float(self_conditioning_prob)
        self.eval_self_conditioning = bool(eval_self_conditioning)
        self.eval_times = tuple(float(t) for t in eval_times)
        eps = self.loss_eps

        def velocity(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
            return weighted_velocity_loss(pred["v"], target["v"], batch["t"], batch["mask"], eps)

        def velocity_mse(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
            return masked_mse(pred["v"], target["v"], batch["mask"])

        self.terms = (LossTerm("velocity", velocity, quadratic=True), LossTerm("velocity_mse", velocity_mse, quadratic=True))

    # ---- group action ----------------------------------------------------------------------------
    def rotate_batch(self, batch: Batch, rotations: torch.Tensor) -> Batch:
        out = dict(batch)
        for key in VECTOR_KEYS:
            if key in batch:
                out[key] = rotate_points(batch[key], rotations)
        return out

    def unrotate_prediction(self, pred: Prediction, rotations: torch.Tensor) -> Prediction:
        return {"v": rotate_points(pred["v"], rotations.transpose(-1, -2))}

    # ---- model -----------------------------------------------------------------------------------
    @staticmethod
    def _forward(model: nn.Module, x_t, t, x_sc, batch: Batch) -> torch.Tensor:
        return model(x_t, t, x_sc, batch["residue_index"], batch["chain_break"], batch["mask"])

    def predict(self, model: nn.Module, batch: Batch) -> Prediction:
        """``{"v": v̂ (B, N, 3)}`` for a batch with frozen ``x0`` and ``t`` (see :meth:`evaluation_batches`)."""
        if "x0" not in batch or "t" not in batch:
            raise KeyError("FlowMatchingTask.predict needs frozen 'x0' and 't' in the batch: build it with evaluation_batches()")
        m = batch["mask"][..., None].to(batch["x1"].dtype)
        t = batch["t"]
        x_t = batch["x_t"] if "x_t" in batch else interpolate(batch["x0"], batch["x1"], t)
        x_sc = batch.get("x_sc")
        if x_sc is None and self.eval_self_conditioning:
            x_sc = x1_from_velocity(x_t, self._forward(model, x_t, t, None, batch), t).detach()
        v = self._forward(model, x_t, t, x_sc, batch)
        return {"v": v.to(batch["x1"].dtype) * m}

    def targets(self, batch: Batch) -> Prediction:
        m = batch["mask"][..., None].to(batch["x1"].dtype)
        return {"v": velocity_target(batch["x0"], batch["x1"]) * m}

    def null_prediction(self, batch: Batch) -> Prediction:
        """The zero velocity field."""
        return {"v": torch.zeros_like(batch["x1"])}

    #: bins of the per-residue descriptors: position along the chain (fraction) and distance from the centroid [nm]
    POSITION_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    CENTROID_EDGES_NM = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, float("inf"))

    def attribution(self, batch: Batch):
        """Per residue (the three velocity components summed): its position along the chain, (rank among the real
        residues) / (n − 1) in [0, 1], and the distance of its clean Cα ``x1`` from the chain's centroid [nm]."""
        from equivrepro.metrics.attribution import Attribution, Descriptor, centroid_distances

        mask = batch["mask"].bool()
        rank = mask.long().cumsum(1) - 1
        n = mask.sum(1, keepdim=True).clamp_min(2) - 1
        position = Descriptor(
            "sequence_position", (rank.double() / n.double()) * mask, edges=self.POSITION_EDGES, label="position along the chain (fraction)"
        )
        dist = Descriptor(
            "centroid_distance_nm",
            centroid_distances(batch["x1"].double(), mask),
            edges=self.CENTROID_EDGES_NM,
            label="distance from the centroid (nm)",
        )
        return {"v": Attribution("residue", (position, dist), mask=mask)}

    def make_baseline(self):
        """``v̂ = c·x_t`` (:func:`tasks.flowmatching.baseline.make_velocity_baseline`), unfitted; fit one per flow time."""
        from tasks.flowmatching.baseline import make_velocity_baseline

        return make_velocity_baseline()

    # ---- training --------------------------------------------------------------------------------
    def training_loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Proteina's training step on an (already rotated) batch: re-centre, draw ``x0`` and ``t``,
        optionally self-condition, and return the batch mean of the ``velocity`` loss."""
        mask = batch["mask"]
        x1 = center_points(batch["x1"].float() if batch["x1"].dtype in (torch.float16, torch.bfloat16) else batch["x1"], mask)
        b = x1.shape[0]
        x0 = centered_gaussian_noise(mask, generator, dtype=x1.dtype)
        t = sample_flow_times(b, generator, self.t_beta, self.t_uniform_fraction, dtype=x1.dtype, device=x1.device)
        use_sc = (
            self.self_conditioning_prob > 0
            and float(torch.rand((), generator=generator, dtype=torch.float64)) < self.self_conditioning_prob
        )
        x_t = interpolate(x0, x1, t)
        x_sc = None
        if use_sc:
            with torch.no_grad():
                x_sc = x1_from_velocity(x_t, self._forward(model, x_t, t, None, batch).to(x1.dtype), t).detach()
        v_pred = self._forward(model, x_t, t, x_sc, batch).to(x1.dtype)
        v = velocity_target(x0, x1)
        per_sample = weighted_velocity_loss(v_pred, v, t, mask, self.loss_eps)
        loss = per_sample.mean()
        with torch.no_grad():
            mse = masked_mse(v_pred, v, mask).mean()
        return loss, {
            "loss": float(loss.detach()),
            "velocity_mse": float(mse),
            "self_conditioning": float(use_sc),
            "t_mean": float(t.mean()),
        }

    def evaluation_batches(self, batch: Batch, generator: torch.Generator) -> Mapping[str, Batch]:
        """One batch per fixed flow time (keys ``t=0``, ``t=0.2``, …) sharing one frozen noise draw ``x0``."""
        mask = batch["mask"]
        x1 = center_points(batch["x1"], mask)
        x0 = centered_gaussian_noise(mask, generator, dtype=x1.dtype)
        b = x1.shape[0]
        out: dict[str, Batch] = {}
        for t in self.eval_times:
            out[f"t={t:g}"] = {**batch, "x1": x1, "x0": x0, "t": torch.full((b,), t, dtype=x1.dtype, device=x1.device)}
        return out
