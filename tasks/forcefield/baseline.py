"""The cheap equivariant baseline of the force field: a pairwise radial force field and pair energy.

For atoms ``i`` with elements ``Z_i`` at positions ``r_i`` (Å), ``d_ij = ‖r_i − r_j‖`` and ``r̂_ij = (r_i − r_j)/d_ij``
(pointing from ``j`` to ``i``, so a positive φ pushes the atoms apart):

    F_i = Σ_{j≠i} φ_{Z_i Z_j}(d_ij) r̂_ij                         [eV/Å]
    E   = Σ_i e_{Z_i} + Σ_{i<j} ψ_{Z_i Z_j}(d_ij)                   [eV, on the task's reference-subtracted energy]
    φ_{ab}(d) = Σ_k θ^F_{ab,k} b_k(d),  ψ_{ab}(d) = Σ_k θ^E_{ab,k} b_k(d),
    b_k(d) = exp(−(d − μ_k)² / 2w²) · f_c(d),  f_c(d) = ½(cos(π d / r_c) + 1) for d < r_c, else 0,

with ``n_basis`` Gaussians of width ``w`` equal to their spacing, centres ``μ_k`` evenly from ``r_min`` to just below
the cutoff ``r_c``, and one coefficient vector per *unordered* element pair (φ_ab = φ_ba, so Newton's third law and
Σ_i F_i = 0 hold). Forces are fitted directly, **not** as ``−∇E``: φ and ψ are independent, so the baseline is the
best pair-radial fit of each target separately (a conservative field would tie them and fit worse). Both are linear
in θ and fitted by weighted least squares (:class:`equivrepro.metrics.baselines.LinearBaseline`) with the task's
own term weights (forces: 1/n per atom; energy: 1 per molecule), with the ridge chosen per term by leave-one-batch-out
validation from :data:`RIDGES`: the pair energy has ~10² coefficients per few dozen training molecules, and with a
fixed small ridge it was 4.8× *worse* than the zero prediction on held-out molecules of the embedded data.

Every feature is built from distances and difference vectors, so F is exactly rotation-equivariant and E exactly
invariant (to float round-off). The element vocabulary is the set of elements in the training batches; an element
seen only at prediction time has zero coefficients (its pairs contribute nothing), and so does a pair never seen
within the cutoff.

Parameter layout (P = 2·n_pairs·n_basis + n_elements): ``[θ^F (pair-major) | e_Z | θ^E (pair-major)]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from equivrepro.metrics.baselines import LinearBaseline
from equivrepro.task import Batch, Task

__all__ = ["PairRadialBaseline", "RIDGES"]

_MAX_Z = 128
#: candidate ridges (dimensionless, in each parameter block's scale), chosen by validation at fit time
RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


class PairRadialBaseline(LinearBaseline):
    """Pairwise radial forces and pair energy, linear in a smooth Gaussian radial basis (see the module docstring).

    Args:
        n_basis: Gaussians per element pair (8); cutoff: ``r_c`` in Å (5.0); r_min: first centre in Å (0.6);
        ridge: per-parameter ridge of the least-squares fit, or candidates to choose from by validation (:data:`RIDGES`).
    """

    def __init__(
        self,
        n_basis: int = 8,
        cutoff: float = 5.0,
        r_min: float = 0.6,
        ridge: float | Sequence[float] = RIDGES,
        name: str = "pair_radial",
    ):
        if n_basis < 1 or cutoff <= r_min or r_min < 0:
            raise ValueError(f"PairRadialBaseline needs n_basis ≥ 1 and 0 ≤ r_min < cutoff (got {n_basis}, {r_min}, {cutoff})")
        super().__init__(name, None, ridge=ridge)
        self.n_basis, self.cutoff, self.r_min = int(n_basis), float(cutoff), float(r_min)
        self.elements: tuple[int, ...] = ()

    # --- layout -------------------------------------------------------------------------------------
    def prepare(self, task: Task, batches: Sequence[Batch]) -> None:
        """The element vocabulary: atomic numbers of the real atoms of the training batches, sorted."""
        seen: set[int] = set()
        for batch in batches:
            seen.update(int(z) for z in batch["z"][batch["mask"]].unique().tolist())
        if not seen:
            raise ValueError("PairRadialBaseline: the training batches contain no atoms")
        self.elements = tuple(sorted(seen))

    @property
    def n_elements(self) -> int:
        return len(self.elements)

    @property
    def n_pairs(self) -> int:
        n = self.n_elements
        return n * (n + 1) // 2

    @property
    def n_params(self) -> int:
        return 2 * self.n_pairs * self.n_basis + self.n_elements

    def _element_index(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` index into the vocabulary, −1 for padding and unseen elements."""
        table = torch.full((_MAX_Z,), -1, dtype=torch.long, device=z.device)
        if self.elements:
            table[torch.tensor(self.elements, dtype=torch.long, device=z.device)] = torch.arange(self.n_elements, device=z.device)
        idx = table[z.clamp(0, _MAX_Z - 1)]
        return torch.where(mask & (z >= 0) & (z < _MAX_Z), idx, torch.full_like(idx, -1))

    def _pair_index(self, e: torch.Tensor) -> torch.Tensor:
        """``(B, N, N)`` unordered-pair index of element indices ``e (B, N)``, −1 if either is −1."""
        a = torch.minimum(e[:, :, None], e[:, None, :])
        b = torch.maximum(e[:, :, None], e[:, None, :])
        n = self.n_elements
        idx = a * n - a * (a + 1) // 2 + b
        return torch.where(a >= 0, idx, torch.full_like(idx, -1))

    def radial_basis(self, d: torch.Tensor) -> torch.Tensor:
        """``b_k(d)``: ``d (...)`` Å → ``(..., n_basis)``, zero at and beyond the cutoff."""
        spacing = (self.cutoff - self.r_min) / self.n_basis
        mu = self.r_min + spacing * torch.arange(self.n_basis, dtype=d.dtype, device=d.device)
        envelope = torch.where(d < self.cutoff, 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1), torch.zeros_like(d))
        return torch.exp(-0.5 * ((d[..., None] - mu) / spacing) ** 2) * envelope[..., None]

    # --- features -----------------------------------------------------------------------------------
    def features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``{"forces": (B, N, 3, P), "energy": (B, P)}`` in the dtype of ``pos``."""
        if not self.elements:
            raise RuntimeError("PairRadialBaseline has no element vocabulary: fit it (or load a state) first")
        pos, mask = batch["pos"], batch["mask"]
        b, n, _ = pos.shape
        k, npair, nel = self.n_basis, self.n_pairs, self.n_elements
        e = self._element_index(batch["z"], mask)
        pair = self._pair_index(e)  # (B, N, N)
        diff = pos[:, :, None, :] - pos[:, None, :, :]  # r_i − r_j, (B, N, N, 3)
        d = diff.pow(2).sum(-1)
        eye = torch.eye(n, dtype=torch.bool, device=pos.device)
        valid = (pair >= 0) & ~eye & (d < self.cutoff**2)
        d = torch.where(valid, d, torch.ones_like(d)).sqrt()
        basis = self.radial_basis(d) * valid[..., None].to(pos.dtype)  # (B, N, N, K)
        onehot = torch.nn.functional.one_hot(pair.clamp_min(0), npair).to(pos.dtype) * valid[..., None].to(pos.dtype)  # (B, N, N, n_pairs)
        rhat = diff / d[..., None]
        # forces: Σ_j onehot[i, j, p] b_k(d_ij) r̂_ij → (B, N, 3, n_pairs, K)
        vec = basis[..., :, None] * rhat[..., None, :]  # (B, N, N, K, 3)
        ff = torch.einsum("bijp,bijkx->bixpk", onehot, vec).reshape(b, n, 3, npair * k)
        # energy: per-element counts and Σ_{i<j} b_k(d_ij) per pair
        counts = torch.nn.functional.one_hot(e.clamp_min(0), nel).to(pos.dtype) * (e >= 0)[..., None].to(pos.dtype)
        ep = 0.5 * torch.einsum("bijp,bijk->bpk", onehot, basis).reshape(b, npair * k)
        zeros_f = torch.zeros(b, n, 3, nel + npair * k, dtype=pos.dtype, device=pos.device)
        zeros_e = torch.zeros(b, npair * k, dtype=pos.dtype, device=pos.device)
        return {
            "forces": torch.cat([ff, zeros_f], dim=-1),
            "energy": torch.cat([zeros_e, counts.sum(1), ep], dim=-1),
        }

    # --- storage ------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"elements": list(self.elements), "n_basis": self.n_basis, "cutoff": self.cutoff, "r_min": self.r_min}

    def load_extra_state(self, state: Mapping) -> None:
        for key in ("n_basis", "cutoff", "r_min"):
            if key in state and float(state[key]) != float(getattr(self, key)):
                raise ValueError(f"PairRadialBaseline state has {key}={state[key]}, this baseline {getattr(self, key)}")
        self.elements = tuple(int(z) for z in state["elements"])
