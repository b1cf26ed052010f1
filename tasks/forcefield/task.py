"""The force-field task: energies and forces of molecules, with EScAIP's training loss.

Batch: ``pos (B, N, 3)`` Å, ``z (B, N)``, ``mask (B, N)``, ``energy (B,)`` eV (element references
subtracted), ``forces (B, N, 3)`` eV/Å. Prediction: ``{"energy": (B,) eV, "forces": (B, N, 3) eV/Å}``.

A rotation R acts on positions and forces (x → R x, F → R F) and leaves the energy alone; the ideal
model is invariant in E and equivariant in F. The model works in normalised units and the task maps
them to physical ones, exactly like fairchem's target normaliser:
``E = energy_std · E_model + energy_mean``, ``F = force_std · F_model``.

Terms decomposed (per molecule; the first is the headline):

* ``forces`` — mean over the molecule's real atoms of ‖ΔF_i‖² [eV²/Å²] (quadratic → exact U-statistics),
* ``forces_l2mae`` — mean over real atoms of ‖ΔF_i‖ [eV/Å], EScAIP's force metric (convex, not quadratic),
* ``energy`` — (ΔE)² [eV²] of the total (reference-subtracted) energy (quadratic; 0 equivariance error
  for an invariant energy head, which EScAIP's is).

Training loss (EScAIP / fairchem V1): ``energy_coef · mean_b |ΔE_b| / energy_std +
force_coef · mean_{atoms in batch} ‖ΔF_i‖ / force_std`` with coefficients 4 and 100 upstream.
"""

from __future__ import annotations

import torch
from torch import nn

from equivrepro.rotations import rotate_points
from equivrepro.task import Batch, LossTerm, Prediction, Task

__all__ = ["ForceFieldTask"]


def _atom_weights(batch: Batch) -> torch.Tensor:
    """``(B, N)`` weights 1/n_b on the real atoms of each molecule."""
    mask = batch["mask"].to(batch["pos"].dtype)
    return mask / mask.sum(1, keepdim=True).clamp_min(1.0)


def forces_mse(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
    """``(B,)``: mean over real atoms of the squared force error ‖F̂_i − F_i‖² [eV²/Å²]."""
    err = (pred["forces"] - target["forces"]).pow(2).sum(-1)
    return (err * _atom_weights(batch).to(err.dtype)).sum(-1)


def forces_l2mae(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
    """``(B,)``: mean over real atoms of the Euclidean force error ‖F̂_i − F_i‖ [eV/Å]."""
    err = (pred["forces"] - target["forces"]).pow(2).sum(-1).clamp_min(1e-30).sqrt()
    return (err * _atom_weights(batch).to(err.dtype)).sum(-1)


def energy_se(pred: Prediction, target: Prediction, batch: Batch) -> torch.Tensor:
    """``(B,)``: squared energy error (Ê − E)² [eV²]."""
    return (pred["energy"] - target["energy"]).pow(2)


class ForceFieldTask(Task):
    """EScAIP-style energy + direct-force prediction (see the module docstring).

    Args:
        energy_mean, energy_std: energy normaliser [eV] (EScAIP on MACE-OFF SPICE: −140.8036, 69.1667 with
            isolated-atom references). ``None`` (default): taken from the training split of the data actually
            used (:meth:`bind_data`, from ``datamodule.statistics()``).
        force_std: force normaliser [eV/Å] (1.0758 on MACE-OFF SPICE); ``None``: the training split's force RMS.
        energy_coef, force_coef: loss coefficients (4 and 100 upstream).
    """

    #: an explicit normaliser further than this factor from the data's own value is reported
    MISMATCH_FACTOR = 2.0

    name = "forcefield"
    terms = (
        LossTerm("forces", forces_mse, quadratic=True),
        LossTerm("forces_l2mae", forces_l2mae, quadratic=False),
        LossTerm("energy", energy_se, quadratic=True),
    )

    def __init__(
        self,
        energy_mean: float | None = None,
        energy_std: float | None = None,
        force_std: float | None = None,
        energy_coef: float = 4.0,
        force_coef: float = 100.0,
    ):
        for name, v in (("task.energy_std", energy_std), ("task.force_std", force_std)):
            if v is not None and not float(v) > 0:
                raise ValueError(f"{name} must be positive or null (from the data), got {v}")
        self._explicit = {"energy_mean": energy_mean, "energy_std": energy_std, "force_std": force_std}
        # unbound normalisers stay at the identity until bind_data (tests and tools that build a task by hand)
        self.energy_mean = float(energy_mean) if energy_mean is not None else 0.0
        self.energy_std = float(energy_std) if energy_std is not None else 1.0
        self.force_std = float(force_std) if force_std is not None else 1.0
        self.energy_coef, self.force_coef = float(energy_coef), float(force_coef)

    # --- normalisers from the data ------------------------------------------------------------------
    def bind_data(self, statistics) -> dict[str, object]:
        """Unset normalisers ← the training split's ``energy_mean``, ``energy_std`` [eV] and ``force_rms`` [eV/Å];
        explicit ones are kept and compared: one further than :attr:`MISMATCH_FACTOR` from the data's value is
        returned under ``mismatch`` (the harness logs it and writes it to ``status.json``)."""
        from_data = {
            "energy_mean": statistics.get("energy_mean"),
            "energy_std": statistics.get("energy_std"),
            "force_std": statistics.get("force_rms"),
        }
        record: dict[str, object] = {"normalisers": {}, "from_data": [], "mismatch": {}}
        for name, explicit in self._explicit.items():
            data_value = from_data[name]
            if explicit is None:
                if data_value is None:
                    raise ValueError(
                        f"task.{name} is null (take it from the data) but the data module reports no "
                        f"{name if name != 'force_std' else 'force_rms'}: set task.{name} explicitly"
                    )
                if name != "energy_mean" and not float(data_value) > 0:
                    raise ValueError(f"the training split's {name} is {data_value}: cannot normalise by it; set task.{name}")
                setattr(self, name, float(data_value))
                record["from_data"].append(name)
            elif data_value is not None and self._mismatch(name, float(explicit), float(data_value), from_data["energy_std"]):
                record["mismatch"][name] = {"config": float(explicit), "data": float(data_value)}
            record["normalisers"][name] = getattr(self, name)
        return record

    def _mismatch(self, name: str, explicit: float, data: float, data_energy_std: float | None) -> bool:
        """A scale off by more than the factor either way; the energy mean off by more than factor × the data's σ_E."""
        if name == "energy_mean":
            return data_energy_std is not None and abs(explicit - data) > self.MISMATCH_FACTOR * float(data_energy_std)
        return data > 0 and max(explicit / data, data / explicit) > self.MISMATCH_FACTOR

    # --- group action ---------------------------------------------------------------------------
    def rotate_batch(self, batch: Batch, rotations: torch.Tensor) -> Batch:
        out = dict(batch)
        r = rotations.to(batch["pos"].dtype)
        out["pos"] = rotate_points(batch["pos"], r)
        out["forces"] = rotate_points(batch["forces"], r.to(batch["forces"].dtype))
        return out

    def unrotate_prediction(self, pred: Prediction, rotations: torch.Tensor) -> Prediction:
        return {"energy": pred["energy"], "forces": rotate_points(pred["forces"], rotations.to(pred["forces"].dtype).transpose(-1, -2))}

    # --- model ------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, batch: Batch) -> Prediction:
        out = model(batch["pos"], batch["z"], batch["mask"])
        mask = batch["mask"][..., None].to(out["forces"].dtype)
        return {
            "energy": out["energy"] * self.energy_std + self.energy_mean,
            "forces": out["forces"] * self.force_std * mask,
        }

    def targets(self, batch: Batch) -> Prediction:
        return {"energy": batch["energy"], "forces": batch["forces"]}

    # --- training ---------------------------------------------------------------------------------
    def training_loss(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        pred = self.predict(model, batch)
        mask = batch["mask"]
        energy_err = (pred["energy"].float() - batch["energy"].float()).abs()  # (B,)
        force_err = (pred["forces"].float() - batch["forces"].float()).pow(2).sum(-1).clamp_min(1e-30).sqrt()[mask]  # (atoms,)
        energy_loss = energy_err.mean() / self.energy_std
        force_loss = force_err.mean() / self.force_std
        loss = self.energy_coef * energy_loss + self.force_coef * force_loss
        with torch.no_grad():
            n_atoms = mask.sum(1).clamp_min(1).float()
            logs = {
                "energy_mae": float(energy_err.mean()),
                "energy_mae_per_atom": float((energy_err / n_atoms).mean()),
                "forces_l2mae": float(force_err.mean()),
                "forces_mae": float((pred["forces"].float() - batch["forces"].float()).abs()[mask].mean()),
                "loss_energy": float(energy_loss),
                "loss_forces": float(force_loss),
            }
        return loss, logs

    def null_prediction(self, batch: Batch) -> Prediction:
        return {"energy": torch.zeros_like(batch["energy"]), "forces": torch.zeros_like(batch["forces"])}

    #: bin edges [Å] of the per-atom distance from the molecule's centroid (SPICE-size molecules reach ~8 Å)
    CENTROID_EDGES_A = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, float("inf"))

    def attribution(self, batch: Batch):
        """Per atom (the three force components summed): its element and its distance from the molecule's centroid [Å]."""
        from equivrepro.metrics.attribution import Attribution, Descriptor, centroid_distances, element_descriptor

        mask = batch["mask"]
        dist = Descriptor(
            "centroid_distance_A",
            centroid_distances(batch["pos"].double(), mask),
            edges=self.CENTROID_EDGES_A,
            label="distance from the centroid (Å)",
        )
        return {"forces": Attribution("atom", (element_descriptor(batch["z"]), dist), mask=mask)}

    def make_baseline(self):
        """The pairwise radial force field and pair energy (:class:`tasks.forcefield.baseline.PairRadialBaseline`), unfitted."""
        from tasks.forcefield.baseline import PairRadialBaseline

        return PairRadialBaseline()
