r"""Where inside a sample the equivariance error lives: L_equiv per entity (atom, residue, voxel), binned by a descriptor.

For a quadratic loss term L_equiv is a sum over the output elements of the prediction
(:func:`~equivrepro.metrics.spectral.equiv_map`: per element j, K/(K−1) · mean_k w_j (z_kj − z̄_j)², summing to
the U-statistic L_equiv of the sample). A task says, through :meth:`equivrepro.task.Task.attribution`, how the
elements of a prediction key group into *entities* (the three force components of an atom, the voxels of all
channels at one grid point, …) and what describes each entity (:class:`Descriptor`: an element symbol, a
distance from the centroid in Å or nm, a position along the chain), each with bins. This module turns the map
into, per descriptor bin and pooled over the held-out samples,

* ``share`` — Σ_samples Σ_{entities in the bin} e / Σ_samples L_equiv: the bin's share of the term's L_equiv
  (the bins of one descriptor sum to 1), with its delta-method standard error over samples;
* ``per_entity`` — Σ_samples Σ_{entities in the bin} e / (entities in the bin): the mean L_equiv per entity in
  the bin, in the term's units (a bin with many entities can hold a large share at a small per-entity value);
* ``count`` — the number of entities in the bin over the held-out set.

Nothing here runs the model: it works on the same untwisted copies ``z`` as the twirl decomposition.
A term is attributed when every prediction key it weighs has an attribution (the force-field ``energy`` term,
a per-molecule scalar, has none and is left out, as non-quadratic terms are).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from equivrepro.metrics import keys
from equivrepro.metrics.quadratic import quadratic_weights
from equivrepro.task import Batch, LossTerm, Prediction

__all__ = [
    "Descriptor",
    "Attribution",
    "BinnedEquiv",
    "binned_equiv",
    "attribute",
    "sum_last_axis",
    "ELEMENT_SYMBOLS",
    "element_descriptor",
    "centroid_distances",
    "OTHER",
]

#: Label of the bin that collects categorical codes missing from a descriptor's categories.
OTHER = "other"

#: Element symbols by atomic number (index 0 unused), through xenon.
ELEMENT_SYMBOLS = (
    "",
    "H",
    "He",
    "Li",
    "Be",
    "B",
    "C",
    "N",
    "O",
    "F",
    "Ne",
    "Na",
    "Mg",
    "Al",
    "Si",
    "P",
    "S",
    "Cl",
    "Ar",
    "K",
    "Ca",
    "Sc",
    "Ti",
    "V",
    "Cr",
    "Mn",
    "Fe",
    "Co",
    "Ni",
    "Cu",
    "Zn",
    "Ga",
    "Ge",
    "As",
    "Se",
    "Br",
    "Kr",
    "Rb",
    "Sr",
    "Y",
    "Zr",
    "Nb",
    "Mo",
    "Tc",
    "Ru",
    "Rh",
    "Pd",
    "Ag",
    "Cd",
    "In",
    "Sn",
    "Sb",
    "Te",
    "I",
    "Xe",
)


def _edge_text(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Descriptor:
    """One per-entity descriptor with its bins.

    ``values (B, N)``: a float per entity (continuous, with ``edges``) or an integer code (categorical, with
    ``categories``: code → label; codes not listed go to the bin :data:`OTHER`). Continuous bins are
    ``[edges[i], edges[i+1])``; a value below ``edges[0]`` counts in the first bin and one at or above
    ``edges[-1]`` in the last (give ``math.inf`` as the last edge for an open bin, labelled ``'<lo>+'``).
    ``name`` becomes part of metric names (letters, digits, ``_``): put the unit in it (``centroid_distance_A``).
    """

    name: str
    values: torch.Tensor
    edges: tuple[float, ...] | None = None
    categories: Mapping[int, str] | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if (self.edges is None) == (self.categories is None):
            raise ValueError(f"descriptor {self.name!r}: give either edges (continuous) or categories (categorical)")
        if self.edges is not None:
            e = [float(x) for x in self.edges]
            if len(e) < 2 or any(not b > a for a, b in zip(e, e[1:])) or not math.isfinite(e[0]):
                raise ValueError(f"descriptor {self.name!r}: edges must be ≥ 2 increasing numbers (finite first), got {self.edges}")
        if self.values.dim() != 2:
            raise ValueError(f"descriptor {self.name!r}: values must be (B, N), got {tuple(self.values.shape)}")

    @property
    def categorical(self) -> bool:
        return self.categories is not None

    @property
    def bin_labels(self) -> list[str]:
        """Labels of the bins, in order (categorical: the categories in code order, then :data:`OTHER`)."""
        if self.categories is not None:
            return [str(self.categories[c]) for c in sorted(self.categories)] + [OTHER]
        e = [float(x) for x in self.edges]
        return [f"{_edge_text(a)}+" if math.isinf(b) else f"{_edge_text(a)}-{_edge_text(b)}" for a, b in zip(e, e[1:])]

    @property
    def bin_centres(self) -> list[float]:
        """Continuous descriptors: the middle of each bin (an open last bin: its lower edge); categorical: indices."""
        if self.categories is not None:
            return [float(i) for i in range(len(self.categories) + 1)]
        e = [float(x) for x in self.edges]
        return [a if math.isinf(b) else (a + b) / 2 for a, b in zip(e, e[1:])]

    def bin_index(self) -> torch.Tensor:
        """``(B, N)`` long: the bin of every entity."""
        if self.categories is not None:
            codes = sorted(self.categories)
            lookup = {c: i for i, c in enumerate(codes)}
            v = self.values.long()
            out = torch.full_like(v, len(codes))
            for c, i in lookup.items():
                out[v == c] = i
            return out
        inner = torch.tensor([float(x) for x in self.edges[1:-1]], dtype=torch.float64, device=self.values.device)
        return torch.bucketize(self.values.double().contiguous(), inner, right=True)


def sum_last_axis(element_map: torch.Tensor) -> torch.Tensor:
    """The default grouping: ``(B, N, d)`` per-element map → ``(B, N)`` per entity (the d components of an atom's vector)."""
    return element_map.sum(-1)


@dataclass(frozen=True)
class Attribution:
    """How one prediction key's elements group into entities, and what describes them.

    ``entity``: what an entity is (``'atom'``, ``'residue'``, ``'voxel'``). ``group``: ``(B, ...)`` per-element map →
    ``(B, N)`` per entity (default :func:`sum_last_axis`). ``mask (B, N)``: the real entities (padding is neither
    counted nor binned; its map must be 0). ``descriptors``: what each entity is binned by.
    """

    entity: str
    descriptors: tuple[Descriptor, ...]
    mask: torch.Tensor | None = None
    group: Callable[[torch.Tensor], torch.Tensor] = sum_last_axis

    def bins(self) -> list[tuple[str, str]]:
        """``(descriptor, bin label)`` of every bin, descriptor by descriptor."""
        return [(d.name, lab) for d in self.descriptors for lab in d.bin_labels]


@dataclass
class BinnedEquiv:
    """Per-sample binned L_equiv of one term: ``sums (B, n_bins)`` (L_equiv of the entities in each bin),
    ``counts (B, n_bins)`` (entities per bin), ``equiv (B,)`` (the sample's L_equiv, the sum of its map), float64.

    ``bins[i] = (descriptor, label)``; the bins of one descriptor partition the entities, so for each descriptor
    ``sums[:, bins of it].sum(1) == equiv``. ``descriptors``: name → (kind, bin centres) for the figures."""

    term: str
    entity: str
    bins: list[tuple[str, str]]
    sums: torch.Tensor
    counts: torch.Tensor
    equiv: torch.Tensor
    descriptors: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def concat(cls, parts: Sequence[BinnedEquiv]) -> BinnedEquiv:
        """Pool the samples of several batches (same term and bins)."""
        if not parts:
            raise ValueError("BinnedEquiv.concat needs at least one part")
        first = parts[0]
        for p in parts[1:]:
            if p.bins != first.bins or p.term != first.term:
                raise ValueError(f"cannot pool attributions of {first.term!r} and {p.term!r} with different bins")
        cat = lambda a: torch.cat([getattr(p, a) for p in parts])  # noqa: E731
        return cls(first.term, first.entity, list(first.bins), cat("sums"), cat("counts"), cat("equiv"), dict(first.descriptors))

    @property
    def n_samples(self) -> int:
        return int(self.equiv.shape[0])

    @property
    def share(self) -> torch.Tensor:
        """``(n_bins,)`` Σ_b sums / Σ_b equiv (NaN when the pooled L_equiv is not positive)."""
        den = self.equiv.sum()
        if not den > 0:
            return torch.full((len(self.bins),), float("nan"), dtype=torch.float64)
        return self.sums.sum(0) / den

    @property
    def share_se(self) -> torch.Tensor:
        """Delta-method standard error of :attr:`share` over samples (ratio of means)."""
        n = self.n_samples
        r = self.share
        if n < 2 or not torch.isfinite(r).all():
            return torch.full_like(r, float("nan"))
        resid = self.sums - r[None, :] * self.equiv[:, None]
        return resid.std(0, unbiased=True) / math.sqrt(n) / self.equiv.mean()

    @property
    def count(self) -> torch.Tensor:
        return self.counts.sum(0)

    @property
    def per_entity(self) -> torch.Tensor:
        """``(n_bins,)`` mean L_equiv per entity of each bin (NaN for an empty bin)."""
        c = self.count
        return torch.where(c > 0, self.sums.sum(0) / c.clamp_min(1), torch.full_like(c, float("nan")))

    def summary(self) -> dict[str, tuple[str, str, str, float]]:
        """``{quantity: value}`` pieces as ``(descriptor, bin, stat, value)``, for the non-empty bins."""
        share, se, per, cnt = self.share, self.share_se, self.per_entity, self.count
        out = {}
        for i, (d, lab) in enumerate(self.bins):
            if cnt[i] <= 0:
                continue
            for stat, v in (("", share[i]), ("se", se[i]), ("per_entity", per[i]), ("count", cnt[i])):
                out[f"{d}={lab}" + (f"_{stat}" if stat else "")] = (d, lab, stat, float(v))
        return out

    def metrics(self, suffix: str = "") -> dict[str, float]:
        """``attribution/[suffix/]<term>/<descriptor>=<bin>[_se|_per_entity|_count]`` (:func:`keys.attribution_key`)."""
        return {keys.attribution_key(self.term, d, lab, suffix, stat): v for d, lab, stat, v in self.summary().values()}

    def shares_by_descriptor(self) -> dict[str, dict[str, float]]:
        """``{descriptor: {bin: share}}`` (non-empty bins), for reports."""
        out: dict[str, dict[str, float]] = {}
        for d, lab, stat, v in self.summary().values():
            if stat == "":
                out.setdefault(d, {})[lab] = v
        return out


def attribute(
    element_maps: Mapping[str, torch.Tensor], attributions: Mapping[str, Attribution], term: str, weighted: Sequence[str] | None = None
) -> BinnedEquiv | None:
    """Bin the per-element maps ``element_maps[key] (B, ...)`` (:func:`~equivrepro.metrics.spectral.equiv_map`) of one term.

    ``weighted``: the prediction keys the term weighs (default: every key of ``element_maps``). Returns None when
    some weighted key has no attribution (the term cannot be attributed in full). Several attributed keys must have
    the same bins (their entities are binned together)."""
    weighted = list(element_maps) if weighted is None else list(weighted)
    if not weighted or any(k not in attributions for k in weighted):
        return None
    first = attributions[weighted[0]]
    bins = first.bins()
    sums = counts = None
    equiv = None
    for name in weighted:
        att = attributions[name]
        if att.bins() != bins:
            raise ValueError(f"term {term!r}: prediction keys {weighted[0]!r} and {name!r} have different attribution bins")
        m = element_maps[name].double()
        per_entity = att.group(m)
        b = per_entity.shape[0]
        if per_entity.dim() != 2:
            raise ValueError(f"attribution of {name!r}: the grouping must give (B, N) per entity, got {tuple(per_entity.shape)}")
        total = m.reshape(b, -1).sum(1)
        real = torch.ones_like(per_entity, dtype=torch.bool) if att.mask is None else att.mask.to(per_entity.device).bool()
        if real.shape != per_entity.shape:
            raise ValueError(f"attribution of {name!r}: mask {tuple(real.shape)} does not match the entities {tuple(per_entity.shape)}")
        vals = torch.where(real, per_entity, torch.zeros_like(per_entity))
        s_parts, c_parts = [], []
        for d in att.descriptors:
            if d.values.shape != per_entity.shape:
                raise ValueError(
                    f"descriptor {d.name!r} of {name!r} is {tuple(d.values.shape)}; the entities are {tuple(per_entity.shape)}"
                )
            idx = d.bin_index().to(per_entity.device)
            nb = len(d.bin_labels)
            s_parts.append(torch.zeros(b, nb, dtype=torch.float64, device=vals.device).scatter_add_(1, idx, vals))
            c_parts.append(torch.zeros(b, nb, dtype=torch.float64, device=vals.device).scatter_add_(1, idx, real.double()))
        s, c = torch.cat(s_parts, 1), torch.cat(c_parts, 1)
        sums, counts = (s, c) if sums is None else (sums + s, counts + c)
        equiv = total if equiv is None else equiv + total
    info = {
        d.name: {"kind": "categorical" if d.categorical else "continuous", "centres": d.bin_centres, "label": d.label or d.name}
        for d in first.descriptors
    }
    return BinnedEquiv(term, first.entity, bins, sums.cpu(), counts.cpu(), equiv.cpu(), info)


def binned_equiv(
    z: Mapping[str, torch.Tensor],
    term: LossTerm,
    target: Prediction,
    batch: Batch,
    attributions: Mapping[str, Attribution],
    exact_group: bool = False,
) -> BinnedEquiv | None:
    """:func:`attribute` of the :func:`~equivrepro.metrics.spectral.equiv_map` of quadratic ``term`` from untwisted
    predictions ``z[key] (B, K, ...)``; None for a non-quadratic term or one weighing a key without an attribution."""
    from equivrepro.metrics.spectral import equiv_map

    if not term.quadratic or not attributions:
        return None
    w = quadratic_weights(term, target, batch)
    weighted = [k for k, v in w.items() if bool((v != 0).any())]
    if not weighted or any(k not in attributions for k in weighted):
        return None
    emap = equiv_map(z, term, target, batch, exact_group=exact_group)
    return attribute({k: emap[k] for k in weighted}, attributions, term.name, weighted)


# --------------------------------------------------------------------------------------------------
# Descriptors the tasks share
# --------------------------------------------------------------------------------------------------
def element_descriptor(atomic_numbers: torch.Tensor, present: Sequence[int] | None = None, name: str = "element") -> Descriptor:
    """Categorical element symbol per atom from atomic numbers ``(B, N)``; bins: ``present`` atomic numbers (default
    H, C, N, O, F, P, S, Cl, Br, I — the organic set), every other element in :data:`OTHER`."""
    zs = tuple(present) if present is not None else (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)
    return Descriptor(name, atomic_numbers, categories={int(z): ELEMENT_SYMBOLS[int(z)] for z in zs}, label="element")


def centroid_distances(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` distance of every point from its sample's centroid (of the real points), in the units of ``pos (B, N, 3)``;
    0 on padding."""
    m = mask.to(pos.dtype)[..., None]
    centre = (pos * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    return (pos - centre).norm(dim=-1) * mask.to(pos.dtype)
