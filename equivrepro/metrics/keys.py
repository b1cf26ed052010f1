"""The one owner of metric names: every logged key is made and parsed here.

A decomposition key has four parts, ``family/[suffix/]term/quantity``:

* ``family`` — what was decomposed: :data:`EQUIV` (the model under K Haar rotations), :data:`FLOOR` (the
  task's equivariant baseline through the same rotate/unrotate path: the instrument's floor),
  :data:`CUBE` (the model under the exact 24-rotation cube group), :data:`BASELINE` (the baseline's own
  decomposition), :data:`SPECTRUM` (the degree spectrum of L_equiv), :data:`ANGLE` (the error against
  rotation angle, measured and predicted from the spectrum: :func:`angle_key`), :data:`ATTRIBUTION` (where in
  the sample L_equiv lives: :func:`attribution_key`);
* ``suffix`` — the task's evaluation batch (``t=0.4`` for a flow time; empty when the task has one);
* ``term`` — a loss term of the task (``forces``, ``velocity``, ``denoise``, …);
* ``quantity`` — ``pct``, ``total``, ``equiv``, ``l=2``, …

Scalar keys outside decompositions: ``train/<name>``, ``time/<name>``, ``head/<name>``, ``compute/<name>``.

>>> str(MetricKey(EQUIV, "velocity", "pct", "t=0.4"))
'equiv/t=0.4/velocity/pct'
>>> MetricKey.parse("equiv/forces/pct")
MetricKey(family='equiv', term='forces', quantity='pct', suffix='')
>>> degree_of(MetricKey.parse("spectrum/forces/l=2"))
2
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, replace

__all__ = [
    "EQUIV",
    "FLOOR",
    "CUBE",
    "BASELINE",
    "SPECTRUM",
    "ANGLE",
    "ATTRIBUTION",
    "DECOMPOSITION_FAMILIES",
    "TRAIN",
    "TIME",
    "HEAD",
    "COMPUTE",
    "MetricKey",
    "key",
    "parse",
    "degree_key",
    "degree_of",
    "scalar_key",
    "matches",
    "suffix_sort_key",
    "HEADLINE_QUANTITY",
    "angle_key",
    "angle_of",
    "AngleQuantity",
    "attribution_key",
    "attribution_of",
    "AttributionQuantity",
]

EQUIV = "equiv"
FLOOR = "equiv_floor"
CUBE = "equiv_cube"
BASELINE = "equiv_baseline"
SPECTRUM = "spectrum"
ANGLE = "angle"
ATTRIBUTION = "attribution"
DECOMPOSITION_FAMILIES = (EQUIV, FLOOR, CUBE, BASELINE, SPECTRUM, ANGLE, ATTRIBUTION)
TRAIN, TIME, HEAD, COMPUTE = "train", "time", "head", "compute"
HEADLINE_QUANTITY = "pct"

_DEGREE = re.compile(r"^l=(\d+)$")
_ANGLE = re.compile(r"^(measured|predicted)_deg=([0-9.]+)(?:_(se|upper))?$")
_ATTRIBUTION_STATS = ("se", "per_entity", "count")
_ATTRIBUTION = re.compile(r"^([A-Za-z][A-Za-z0-9_]*?)=([^=/]+?)(?:_(" + "|".join(_ATTRIBUTION_STATS) + r"))?$")


@dataclass(frozen=True)
class MetricKey:
    """One decomposition metric; ``str(key)`` is what is logged."""

    family: str
    term: str
    quantity: str
    suffix: str = ""

    def __post_init__(self) -> None:
        for name in ("family", "term", "quantity"):
            part = getattr(self, name)
            if not part or "/" in part:
                raise ValueError(f"metric key {name} must be a non-empty name without '/', got {part!r}")
        if "/" in self.suffix:
            raise ValueError(f"metric key suffix must not contain '/', got {self.suffix!r}")

    def __str__(self) -> str:
        return "/".join(p for p in (self.family, self.suffix, self.term, self.quantity) if p)

    @classmethod
    def parse(cls, text: str) -> MetricKey | None:
        """The key of a logged name, or None for anything that is not a decomposition key."""
        parts = str(text).split("/")
        if parts[0] not in DECOMPOSITION_FAMILIES or len(parts) not in (3, 4) or not all(parts):
            return None
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2])
        return cls(parts[0], parts[2], parts[3], parts[1])

    def with_(self, **changes: str) -> MetricKey:
        """The same key with some parts replaced (``k.with_(quantity='total')``)."""
        return replace(self, **changes)


def key(family: str, term: str, quantity: str, suffix: str = "") -> str:
    """``family/[suffix/]term/quantity`` as a string."""
    return str(MetricKey(family, term, quantity, suffix))


def parse(text: str) -> MetricKey | None:
    return MetricKey.parse(text)


def degree_key(term: str, degree: int, suffix: str = "") -> str:
    """``spectrum/[suffix/]term/l=<degree>``."""
    return key(SPECTRUM, term, f"l={int(degree)}", suffix)


def degree_of(k: MetricKey | str | None) -> int | None:
    """The degree ``l`` of a spectrum key (``…/l=3`` → 3), else None."""
    if isinstance(k, str):
        k = MetricKey.parse(k)
    if k is None or k.family != SPECTRUM:
        return None
    m = _DEGREE.match(k.quantity)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class AngleQuantity:
    """The parts of an :data:`ANGLE` quantity: ``kind`` (``measured`` / ``predicted``), the angle in degrees and the
    statistic (``''`` for the mean, ``'se'``, ``'upper'`` — the prediction's bound for the degrees above l_max)."""

    kind: str
    degrees: float
    stat: str = ""


def _angle_text(degrees: float) -> str:
    text = f"{float(degrees):g}"
    if "e" in text or float(degrees) < 0:
        raise ValueError(f"an angle key needs a plain non-negative angle in degrees, got {degrees!r}")
    return text


def angle_key(term: str, kind: str, degrees: float, suffix: str = "", stat: str = "") -> str:
    """``angle/[suffix/]term/<kind>_deg=<degrees>[_<stat>]`` (``angle/forces/measured_deg=30_se``): E‖h(g) − h(g r_ω)‖²
    at ω = ``degrees``° — ``kind='measured'`` (directly) or ``'predicted'`` (from the degree spectrum)."""
    if kind not in ("measured", "predicted"):
        raise ValueError(f"angle key kind must be 'measured' or 'predicted', got {kind!r}")
    if stat not in ("", "se", "upper"):
        raise ValueError(f"angle key statistic must be '', 'se' or 'upper', got {stat!r}")
    return key(ANGLE, term, f"{kind}_deg={_angle_text(degrees)}" + (f"_{stat}" if stat else ""), suffix)


def angle_of(k: MetricKey | str | None) -> AngleQuantity | None:
    """The parts of an angle key (``…/predicted_deg=90_upper`` → ``AngleQuantity('predicted', 90.0, 'upper')``), else None."""
    if isinstance(k, str):
        k = MetricKey.parse(k)
    if k is None or k.family != ANGLE:
        return None
    m = _ANGLE.match(k.quantity)
    return AngleQuantity(m.group(1), float(m.group(2)), m.group(3) or "") if m else None


@dataclass(frozen=True)
class AttributionQuantity:
    """The parts of an :data:`ATTRIBUTION` quantity: the per-entity ``descriptor`` (``element``,
    ``centroid_distance_A``, …), its ``bin`` label (``C``, ``2-4``, ``8+``) and the statistic: ``''`` (the bin's
    share of the term's L_equiv), ``'se'`` (its standard error), ``'per_entity'`` (mean L_equiv per entity in the
    bin) or ``'count'`` (entities in the bin, over the held-out set)."""

    descriptor: str
    bin: str
    stat: str = ""


def attribution_key(term: str, descriptor: str, bin_label: str, suffix: str = "", stat: str = "") -> str:
    """``attribution/[suffix/]term/<descriptor>=<bin>[_<stat>]`` (``attribution/forces/element=C_per_entity``)."""
    if stat and stat not in _ATTRIBUTION_STATS:
        raise ValueError(f"attribution statistic must be one of {_ATTRIBUTION_STATS} or '', got {stat!r}")
    q = f"{descriptor}={bin_label}" + (f"_{stat}" if stat else "")
    parsed = _ATTRIBUTION.match(q)
    if parsed is None or parsed.group(1) != descriptor or parsed.group(2) != bin_label:
        endings = "/_".join(_ATTRIBUTION_STATS)
        raise ValueError(
            f"attribution descriptor {descriptor!r} / bin {bin_label!r} do not make a parseable key (a descriptor is "
            f"a name of letters, digits and '_'; a bin has no '=' or '/' and does not end in _{endings})"
        )
    return key(ATTRIBUTION, term, q, suffix)


def attribution_of(k: MetricKey | str | None) -> AttributionQuantity | None:
    """The parts of an attribution key (``…/element=C_se`` → ``AttributionQuantity('element', 'C', 'se')``), else None."""
    if isinstance(k, str):
        k = MetricKey.parse(k)
    if k is None or k.family != ATTRIBUTION:
        return None
    m = _ATTRIBUTION.match(k.quantity)
    return AttributionQuantity(m.group(1), m.group(2), m.group(3) or "") if m else None


def scalar_key(family: str, name: str) -> str:
    """``train/loss``, ``time/step_s``, ``head/deviation``, ``compute/flops_per_step``."""
    if family not in (TRAIN, TIME, HEAD, COMPUTE):
        raise ValueError(f"unknown scalar metric family {family!r}")
    return f"{family}/{name}"


def matches(
    text: str, *, family: str | None = None, term: str | None = None, quantity: str | None = None, suffix: str | None = None
) -> bool:
    """Whether a logged name is a decomposition key with the given parts (each a glob; None: any)."""
    k = MetricKey.parse(text)
    if k is None:
        return False
    for want, have in ((family, k.family), (term, k.term), (quantity, k.quantity), (suffix, k.suffix)):
        if want is not None and not fnmatch.fnmatchcase(have, want):
            return False
    return True


def suffix_sort_key(suffix: str) -> tuple:
    """Orders evaluation suffixes naturally: '' first, then ``name=<number>`` by number, then the rest."""
    if not suffix:
        return (0, 0.0, "")
    name, _, value = suffix.partition("=")
    try:
        return (1, float(value), name)
    except ValueError:
        return (2, 0.0, suffix)
