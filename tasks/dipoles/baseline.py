"""The cheap equivariant baseline of the dipole task: fixed point charges per element (and bond dipoles).

    μ̂ = Σ_i q_{Z_i} (r_i − r̄)  +  Σ_{bonds i–j, Z_i < Z_j} p_{Z_i Z_j} (r_j − r_i)/‖r_j − r_i‖

is linear in the parameters θ = (q_Z for Z in the element table, p_{ab} for element pairs a < b), so
μ̂ = Φ(x) θ with features ``Φ (B, 3, P)``: column ``q_Z`` is Σ_{i: Z_i = Z} (r_i − r̄) [Å] and column
``p_ab`` is the sum of the unit vectors of the a–b bonds, pointing from a to b. θ is fitted by least
squares on the training data (:class:`equivrepro.metrics.baselines.LinearBaseline`); q then comes out in
D/Å (÷ 4.8032 for elementary charges). Every column rotates with the molecule, Φ(R·x) = R Φ(x), so the
prediction is exactly rotation equivariant for any θ. Bonds (optional) are pairs closer than
``bond_tolerance`` × the sum of the covalent radii. Since Σ_i (r_i − r̄) = 0, shifting every q_Z by one
constant changes nothing: the least-squares solution is defined up to that (its minimum-norm one is used).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from equivrepro.rotations import center_points
from equivrepro.task import Batch

__all__ = ["PointChargeFeatures", "COVALENT_RADII"]

#: Covalent radii (Å) of Cordero et al., Dalton Trans. 2008, for the elements bonds are inferred between.
COVALENT_RADII = {1: 0.31, 5: 0.84, 6: 0.76, 7: 0.71, 8: 0.66, 9: 0.57, 14: 1.11, 15: 1.07, 16: 1.05, 17: 1.02, 35: 1.20, 53: 1.39}

_SYMBOLS = {1: "H", 5: "B", 6: "C", 7: "N", 8: "O", 9: "F", 14: "Si", 15: "P", 16: "S", 17: "Cl", 35: "Br", 53: "I"}


class PointChargeFeatures:
    """``features(batch) -> {"dipole": Φ (B, 3, P)}`` of the point-charge (+ bond-dipole) model (see the module docstring).

    Batch keys: ``pos (B, N, 3)`` Å, ``z (B, N)``, ``mask (B, N)``. An atom whose element is not in
    ``elements`` is an error (its charge would silently be zero).
    """

    def __init__(self, elements: Sequence[int], bond_dipoles: bool = False, bond_tolerance: float = 1.2):
        self.elements = tuple(sorted(int(z) for z in elements))
        self.bond_dipoles, self.bond_tolerance = bool(bond_dipoles), float(bond_tolerance)
        self.pairs = [(a, b) for i, a in enumerate(self.elements) for b in self.elements[i + 1 :]] if self.bond_dipoles else []
        if self.bond_dipoles:
            missing = [z for z in self.elements if z not in COVALENT_RADII]
            if missing:
                raise ValueError(f"no covalent radius for element(s) {missing}: bond dipoles need one ({sorted(COVALENT_RADII)})")

    @property
    def names(self) -> list[str]:
        """One name per column of Φ: ``q_<element>`` then ``p_<a>-<b>``."""
        sym = lambda z: _SYMBOLS.get(z, f"Z{z}")  # noqa: E731
        return [f"q_{sym(z)}" for z in self.elements] + [f"p_{sym(a)}-{sym(b)}" for a, b in self.pairs]

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        pos, z, mask = batch["pos"], batch["z"].long(), batch["mask"]
        table = torch.tensor(self.elements, device=z.device)
        onehot = (z[..., None] == table) & mask[..., None]  # (B, N, E)
        unknown = mask & ~onehot.any(-1)
        if unknown.any():
            raise ValueError(
                f"atoms of element(s) {sorted(set(z[unknown].tolist()))} are outside the point-charge baseline's element "
                f"table {list(self.elements)} (task.elements)"
            )
        centred = center_points(pos, mask)
        cols = [torch.einsum("bnc,bne->bce", centred, onehot.to(pos.dtype))]  # (B, 3, E)
        if self.pairs:
            cols.append(self._bond_columns(pos, z, mask))
        return {"dipole": torch.cat(cols, dim=-1)}

    def _bond_columns(self, pos: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, 3, len(pairs))``: per element pair a < b, Σ over a–b bonds of the unit vector from a to b."""
        radius = torch.zeros(int(z.max()) + 1, dtype=pos.dtype, device=pos.device)
        for el, r in COVALENT_RADII.items():
            if el < radius.numel():
                radius[el] = r
        diff = pos[:, None, :, :] - pos[:, :, None, :]  # (B, i, j, 3): r_j − r_i
        dist = diff.norm(dim=-1)
        rad = radius[z]
        bonded = (dist < self.bond_tolerance * (rad[:, :, None] + rad[:, None, :])) & mask[:, :, None] & mask[:, None, :]
        bonded &= ~torch.eye(z.shape[1], dtype=torch.bool, device=z.device)
        unit = diff / dist.clamp_min(1e-12)[..., None]
        out = []
        for a, b in self.pairs:
            sel = (bonded & (z[:, :, None] == a) & (z[:, None, :] == b)).to(pos.dtype)  # i is a, j is b
            out.append(torch.einsum("bij,bijc->bc", sel, unit))
        return torch.stack(out, dim=-1)
