"""The one owner of metric names: every logged key is made and parsed here.

A decomposition key has four parts, ``family/[suffix/]term/quantity``:

* ``family`` — what was decomposed: :data:`EQUIV` (the model under K Haar rotations), :data:`FLOOR` (the
  task's equivariant baseline through the same rotate/unrotate path: the instrument's floor),
  :data:`CUBE` (the model under the exact 24-rotation cube group), :data:`BASELINE` (the baseline's own
  decomposition), :data:`SPECTRUM` (the degree spectrum of L_equiv), :data:`ATTRIBUTION` (where in the
  sample L_equiv lives);
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
    "EQUIV", "FLOOR", "CUBE", "BASELINE", "SPECTRUM", "ATTRIBUTION", "DECOMPOSITION_FAMILIES", "TRAIN", "TIME", "HEAD", "COMPUTE",
    "MetricKey", "key", "parse", "degree_key", "degree_of", "scalar_key", "matches", "suffix_sort_key",
    "HEADLINE_QUANTITY",
]

EQUIV = "equiv"
FLOOR = "equiv_floor"
CUBE = "equiv_cube"
BASELINE = "equiv_baseline"
SPECTRUM = "spectrum"
ATTRIBUTION = "attribution"
DECOMPOSITION_FAMILIES = (EQUIV, FLOOR, CUBE, BASELINE, SPECTRUM, ATTRIBUTION)
TRAIN, TIME, HEAD, COMPUTE = "train", "time", "head", "compute"
HEADLINE_QUANTITY = "pct"

_DEGREE = re.compile(r"^l=(\d+)$")


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
    def parse(cls, text: str) -> "MetricKey | None":
        """The key of a logged name, or None for anything that is not a decomposition key."""
        parts = str(text).split("/")
        if parts[0] not in DECOMPOSITION_FAMILIES or len(parts) not in (3, 4) or not all(parts):
            return None
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2])
        return cls(parts[0], parts[2], parts[3], parts[1])

    def with_(self, **changes: str) -> "MetricKey":
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


def scalar_key(family: str, name: str) -> str:
    """``train/loss``, ``time/step_s``, ``head/deviation``, ``compute/flops_per_step``."""
    if family not in (TRAIN, TIME, HEAD, COMPUTE):
        raise ValueError(f"unknown scalar metric family {family!r}")
    return f"{family}/{name}"


def matches(text: str, *, family: str | None = None, term: str | None = None, quantity: str | None = None,
            suffix: str | None = None) -> bool:
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
