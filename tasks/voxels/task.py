"""The voxel-denoising task (VoxMol): denoise a Gaussian-smoothed voxel grid of a molecule.

Batch: ``coords (B, N, 3)`` Å (centred), ``elements (B, N)`` long channel index, ``mask (B, N)`` bool;
evaluation batches add the frozen noise ``noise (B, C, L, L, L)`` (unit variance). Prediction and
target: ``{"grid": (B, C, L, L, L)}``, occupancies in [0, 1] for the target.

Training (VoxMol's recipe): the harness has already rotated each molecule (Haar) through
:meth:`VoxelDenoisingTask.rotate_batch`; :meth:`training_loss` shifts each molecule by ``U(−shift, shift)``
Å per axis (0.5 upstream), voxelises it (``x``), adds noise ``y = x + σ ε`` with one σ (0.9), and
compares ``x̂ = f(y)`` with ``x`` by the squared error summed over voxels and channels, then summed over
the batch (``reduction='sum'``, ``MSELoss(reduction='sum')`` upstream) or averaged over every element
(``'mean'``).

**Group action.** Rotations act on the molecule *before* voxelisation, so the clean input and the
target of a rotated batch are exact: ``targets(R·b) = voxelize(R x)``. The frozen noise grid is rotated
with :func:`equivrepro.rotations.rotate_grid` — an exact index permutation for the 24 cube rotations,
trilinear resampling otherwise (``noise_rotation='bilinear'``). Resampling smooths white noise: for a
generic rotation each rotated voxel is a trilinear blend of 8 voxels, so its variance drops to
``E[Π_axes (t² + (1−t)²)] ≈ (2/3)³ ≈ 0.3`` of σ², and voxels whose source lies outside the box get no
noise. The network therefore sees a different noise distribution at non-cube rotations, which counts as
equivariance error; ``noise_rotation='nearest'`` copies the nearest voxel instead (variance preserved,
some voxels duplicated). Predictions are brought back with ``rotate_grid(pred, Rᵀ)`` (trilinear), which
also smooths: the **resampling floor** below.

**Resampling floor.** The perfect denoiser (the oracle predictor :meth:`targets`) is equivariant, but
rotating its output back by trilinear resampling is not exact, so its decomposition under Haar
rotations has ``L_equiv > 0``; under the cube group it is exactly 0 (pure permutations, and the
voxeliser is exactly covariant under them, see :mod:`tasks.voxels.voxelizer`). The harness computes it
generically (``equivariance.floor`` with ``task.targets`` as predictor, ``equivariance.cube_group``);
:meth:`VoxelDenoisingTask.resampling_floor` does the same for one batch.

Terms: ``denoise`` — per-sample sum over voxels and channels of (x̂ − x)² (quadratic → exact
U-statistics). Null predictor (``null_predictor``): ``'zeros'`` (default; the empty grid, loss = Σ x²,
the bar a useful denoiser must clear) or ``'noisy_input'`` (the identity denoiser, loss = σ²‖ε‖²).
"""

from __future__ import annotations

import torch
from torch import nn

from equivrepro.metrics import TermDecomposition, twirl_decomposition
from equivrepro.rotations import rotate_grid, rotate_points
from equivrepro.task import Batch, LossTerm, Prediction, Task
from tasks.voxels.voxelizer import Voxelizer

__all__ = ["VoxelDenoisingTask", "denoise_sse"]


def denoise_sse(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
    """``(B,)``: Σ over channels and voxels of (x̂ − x)² (occupancy² units)."""
    return (pred["grid"] - target["grid"].to(pred["grid"].dtype)).pow(2).flatten(1).sum(1)


class VoxelDenoisingTask(Task):
    """VoxMol-style single-σ voxel denoising (see the module docstring).

    Args:
        n_channels: element channels (8 for GEOM-drugs); grid_size: voxels per side (64 for drugs, 32 on CPU);
        resolution: voxel edge, Å (0.25); radius: atom radius, Å (0.5); window: voxelisation half-width in voxels (5).
        sigma: noise standard deviation (0.9); shift: training translation U(−shift, shift) Å per axis (0.5).
        reduction: ``'sum'`` (VoxMol) or ``'mean'`` (over all voxels, channels and samples).
        noise_rotation: ``'bilinear'`` (trilinear resampling) or ``'nearest'`` for the frozen evaluation noise.
        null_predictor: ``'zeros'`` or ``'noisy_input'``.
    """

    name = "voxels"
    terms = (LossTerm("denoise", denoise_sse, quadratic=True),)

    def __init__(self, n_channels: int = 8, grid_size: int = 64, resolution: float = 0.25, radius: float = 0.5, window: int = 5,
                 sigma: float = 0.9, shift: float = 0.5, reduction: str = "sum", noise_rotation: str = "bilinear",
                 null_predictor: str = "zeros"):
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if noise_rotation not in ("bilinear", "nearest"):
            raise ValueError(f"noise_rotation must be 'bilinear' or 'nearest', got {noise_rotation!r}")
        if null_predictor not in ("zeros", "noisy_input"):
            raise ValueError(f"null_predictor must be 'zeros' or 'noisy_input', got {null_predictor!r}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.voxelizer = Voxelizer(n_channels=int(n_channels), grid_size=int(grid_size), resolution=float(resolution),
                                   radius=float(radius), window=int(window))
        self.sigma, self.shift = float(sigma), float(shift)
        self.reduction, self.noise_rotation, self.null_predictor = reduction, noise_rotation, null_predictor

    @property
    def grid_shape(self) -> tuple[int, int, int, int]:
        v = self.voxelizer
        return (v.n_channels, v.grid_size, v.grid_size, v.grid_size)

    def voxelize(self, batch: Batch) -> torch.Tensor:
        """Clean grid ``(B, C, L, L, L)`` of the batch's molecules in the batch's frame."""
        return self.voxelizer(batch["coords"], batch["elements"], batch["mask"])[0]

    # --- group action ---------------------------------------------------------------------------
    def rotate_batch(self, batch: Batch, rotations: torch.Tensor) -> Batch:
        out = dict(batch)
        out["coords"] = rotate_points(batch["coords"], rotations)
        if "noise" in batch:
            out["noise"] = rotate_grid(batch["noise"], rotations, mode=self.noise_rotation)
        return out

    def unrotate_prediction(self, pred: Prediction, rotations: torch.Tensor) -> Prediction:
        return {"grid": rotate_grid(pred["grid"], rotations.transpose(-1, -2))}

    # --- model ------------------------------------------------------------------------------------
    def noisy_input(self, batch: Batch) -> torch.Tensor:
        """``voxelize(coords) + σ · noise`` for an evaluation batch (one with a frozen ``noise`` grid)."""
        if "noise" not in batch:
            raise KeyError("this batch has no frozen 'noise' grid: evaluation batches come from task.evaluation_batches(batch, generator)")
        x = self.voxelize(batch)
        return x + self.sigma * batch["noise"].to(x.dtype)

    def predict(self, model: nn.Module, batch: Batch) -> Prediction:
        return {"grid": model(self.noisy_input(batch))}

    def targets(self, batch: Batch) -> Prediction:
        return {"grid": self.voxelize(batch)}

    # --- training ---------------------------------------------------------------------------------
    def _device_generator(self, generator: torch.Generator, device: torch.device) -> torch.Generator:
        """A generator on ``device`` seeded from ``generator`` (noise is drawn where it is used)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return torch.Generator(device=device).manual_seed(seed)

    def training_loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        coords, mask = batch["coords"], batch["mask"]
        b = coords.shape[0]
        shift = (torch.rand(b, 1, 3, generator=generator, dtype=torch.float64) * 2 - 1) * self.shift
        shifted = coords + shift.to(device=coords.device, dtype=coords.dtype) * mask[..., None].to(coords.dtype)
        x, outside = self.voxelizer(shifted, batch["elements"], mask)
        eps = torch.randn(x.shape, generator=self._device_generator(generator, x.device), device=x.device, dtype=x.dtype)
        pred = model(x + self.sigma * eps).float()
        per_sample = (pred - x).pow(2).flatten(1).sum(1)
        loss = per_sample.sum() if self.reduction == "sum" else per_sample.sum() / x.numel()
        with torch.no_grad():
            hit, true = pred > 0.5, x > 0.5
            union = (hit | true).flatten(1).sum(1).clamp_min(1)
            logs = {
                "sse_per_sample": float(per_sample.mean()),
                "iou": float(((hit & true).flatten(1).sum(1) / union).mean()),
                "atoms_outside_box": float(outside.sum()),
            }
        return loss, logs

    def evaluation_batches(self, batch: Batch, generator: torch.Generator) -> dict[str, Batch]:
        """The batch with a frozen unit-variance noise grid ``noise (B, C, L, L, L)`` (no shift)."""
        coords = batch["coords"]
        noise = torch.randn((coords.shape[0],) + self.grid_shape, generator=generator, dtype=coords.dtype)
        return {"": dict(batch, noise=noise.to(coords.device))}

    def null_prediction(self, batch: Batch) -> Prediction:
        if self.null_predictor == "noisy_input":
            return {"grid": self.noisy_input(batch)}
        return {"grid": torch.zeros((batch["coords"].shape[0],) + self.grid_shape, dtype=batch["coords"].dtype, device=batch["coords"].device)}

    # --- diagnostics ------------------------------------------------------------------------------
    def resampling_floor(self, batch: Batch, rotations: torch.Tensor, exact_group: bool = False,
                         chunk_size: int | None = None) -> TermDecomposition:
        """Decomposition of the perfect denoiser (``targets``) on ``batch`` under ``rotations``.

        ``rotations``: ``(K, 3, 3)`` or ``(B, K, 3, 3)``. Under Haar rotations its ``equiv_unbiased``
        is the loss that rotating grids back by trilinear resampling alone contributes (> 0); with the
        24 cube rotations (``exact_group=True``) it is exactly 0.
        """
        return twirl_decomposition(self.targets, self, batch, rotations, exact_group=exact_group, chunk_size=chunk_size)["denoise"]
