"""A minimal point-cloud → per-point-vector task, and models whose equivariance is known exactly.

Used by the tests of the metrics, the harness and the analysis tools, so those tools are checked on
something whose answer can be derived by hand before they are trusted on the three real tasks.

Batch: ``pos (B, N, 3)`` (centred), ``target (B, N, 3)``. Prediction: ``{"vec": (B, N, 3)}``.
Loss: per-sample MSE, mean over points of the squared Euclidean error (quadratic), plus the per-point
Euclidean error (a non-quadratic convex loss, like EScAIP's L2-MAE).
"""

from __future__ import annotations

import torch
from torch import nn

from equivrepro.data import DataModule
from equivrepro.rotations import rotate_points
from equivrepro.task import Batch, LossTerm, Prediction, Task

__all__ = ["PointCloudTask", "LinearPointModel", "RadialModel", "NonEquivariantMLP", "make_pointcloud_batch"]


def _mse(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
    return (pred["vec"] - target["vec"]).pow(2).sum(-1).mean(-1)


def _l2mae(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
    return (pred["vec"] - target["vec"]).pow(2).sum(-1).clamp_min(1e-30).sqrt().mean(-1)


class PointCloudTask(Task):
    name = "points"
    terms = (LossTerm("mse", _mse, quadratic=True), LossTerm("l2mae", _l2mae, quadratic=False))

    def rotate_batch(self, batch: Batch, rotations: torch.Tensor) -> Batch:
        out = dict(batch)
        out["pos"] = rotate_points(batch["pos"], rotations)
        out["target"] = rotate_points(batch["target"], rotations)
        return out

    def unrotate_prediction(self, pred: Prediction, rotations: torch.Tensor) -> Prediction:
        return {"vec": rotate_points(pred["vec"], rotations.transpose(-1, -2))}

    def predict(self, model: nn.Module, batch: Batch) -> Prediction:
        return {"vec": model(batch["pos"])}

    def targets(self, batch: Batch) -> Prediction:
        return {"vec": batch["target"]}

    def training_loss(self, model, batch, generator):
        loss = _mse(self.predict(model, batch), self.targets(batch), batch).mean()
        return loss, {"mse": float(loss.detach())}

    def null_prediction(self, batch: Batch) -> Prediction:
        return {"vec": torch.zeros_like(batch["target"])}

    def attribution(self, batch: Batch):
        """Per point (the three components summed): its distance from the cloud's centroid (units of ``pos``)."""
        from equivrepro.metrics.attribution import Attribution, Descriptor, centroid_distances

        pos = batch["pos"]
        mask = torch.ones(pos.shape[:2], dtype=torch.bool, device=pos.device)
        dist = Descriptor(
            "centroid_distance",
            centroid_distances(pos.double(), mask),
            edges=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, float("inf")),
            label="distance from the centroid",
        )
        return {"vec": Attribution("point", (dist,), mask=mask)}

    def make_baseline(self):
        """``v̂ = c·x`` (one parameter, exactly equivariant; the target is ``2·x``, so it fits the data exactly)."""
        from equivrepro.metrics.baselines import LinearBaseline

        return LinearBaseline("c_x", lambda batch: {"vec": batch["pos"][..., None]}, task=self)


class LinearPointModel(nn.Module):
    """f(x)_n = A x_n for every point: equivariant iff A commutes with all rotations (A = a·I)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return pos @ self.a.T


class RadialModel(nn.Module):
    """Exactly equivariant: f(x)_n = φ(|x_n|) x_n + Σ_m ψ(|x_n − x_m|)(x_n − x_m) with small MLPs φ, ψ."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.psi = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        r = pos.norm(dim=-1, keepdim=True)
        diff = pos[:, :, None] - pos[:, None, :]  # (B, N, N, 3)
        d = diff.norm(dim=-1, keepdim=True)
        return self.phi(r) * pos + (self.psi(d) * diff).sum(2)


class NonEquivariantMLP(nn.Module):
    """A per-point MLP on raw coordinates: not equivariant (its first layer sees x, y, z separately)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 3))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.net(pos)


def make_pointcloud_batch(b: int, n: int, generator: torch.Generator, dtype=torch.float64, target_scale: float = 2.0) -> Batch:
    """Isotropic Gaussian points (centred) with target ``target_scale · x`` (an equivariant target)."""
    pos = torch.randn(b, n, 3, generator=generator, dtype=dtype)
    pos = pos - pos.mean(1, keepdim=True)
    return {"pos": pos, "target": target_scale * pos}


class PointCloudDataModule(DataModule):
    """Synthetic isotropic point clouds with target ``target_scale · x`` (self-check data, not a paper task).

    ``n_train`` / ``n_heldout`` clouds of ``n_points`` points, generated from ``seed``.
    """

    def __init__(self, n_train: int = 256, n_heldout: int = 64, n_points: int = 8, target_scale: float = 2.0, seed: int = 0):
        self.n_train, self.n_heldout, self.n_points = n_train, n_heldout, n_points
        self.target_scale, self.seed = target_scale, seed

    def setup(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        b = make_pointcloud_batch(self.n_train + self.n_heldout, self.n_points, g, dtype=torch.float32, target_scale=self.target_scale)
        items = [{"pos": b["pos"][i], "target": b["target"][i]} for i in range(self.n_train + self.n_heldout)]
        self.train_dataset, self.heldout_dataset = items[: self.n_train], items[self.n_train :]

    def collate(self, items) -> Batch:
        return {key: torch.stack([it[key] for it in items]) for key in items[0]}

    def describe(self) -> dict:
        return {"train_size": self.n_train, "heldout_size": self.n_heldout}
