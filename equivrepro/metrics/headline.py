"""The headline numbers of a run, from its logged rows: one definition for tables, summaries and dashboards.

For every ``equiv/[S/]T/pct`` key (the held-out share pct = L_equiv / L_total of loss term ``T`` at evaluation
suffix ``S``; a fraction, not per cent) a :class:`Headline` holds

* the first pct and its step, the minimum ("the dip") and its step (the earliest step on ties), the last pct
  and its step;
* ``left_step`` — the first evaluation at which the model has left its reference predictor: the first step
  with ``equiv/[S/]T/total_rel_baseline`` < 1 (L_total below the task's equivariant baseline), or, for a run
  that never logged a baseline, ``…/total_rel_null`` < 1 (below the trivial predictor); ``reference`` names
  the quantity used (``None`` when neither was logged). A model still at its reference is trivially
  equivariant, so a low pct before ``left_step`` says nothing;
* ``below_step`` — the first step ≥ ``left_step`` with pct ≤ ``threshold`` (2 % by default), ``None`` if never;
* ``total_rel_baseline`` / ``total_rel_null`` at the end (their last logged values).

Two ways to get them, which agree exactly (tested against each other):

* :func:`headlines` — a pure function over ``(step, metric, value)`` rows (``metrics.csv``, the results table);
* :class:`HeadlineTracker` — incremental, ``update(step, metrics)`` per logged dict, for a live logger.

Conventions shared by both: non-finite values count as not logged; a ``(step, metric)`` logged twice keeps the
last value (as the results file does); the tracker's updates come in non-decreasing step order.
:func:`summary` flattens headlines into ``headline/[S/]T/<quantity>`` keys made by :func:`summary_key`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from equivrepro.metrics.keys import EQUIV, HEADLINE_QUANTITY, MetricKey

__all__ = [
    "Headline",
    "HeadlineTracker",
    "headlines",
    "summary",
    "summary_key",
    "HEADLINE",
    "THRESHOLD",
    "REL_BASELINE",
    "REL_NULL",
    "summary_quantities",
    "below_quantity",
    "PCT_FIRST",
    "PCT_FIRST_STEP",
    "PCT_MIN",
    "PCT_MIN_STEP",
    "PCT_FINAL",
    "PCT_FINAL_STEP",
    "BASELINE_REFERENCE",
    "LEFT_BASELINE_STEP",
    "REL_BASELINE_FINAL",
    "REL_NULL_FINAL",
]

#: family of the summary keys (``headline/[S/]T/<quantity>``); summaries only, never a history metric
HEADLINE = "headline"
#: the paper's "pct ≤ 2 %" threshold, as a fraction
THRESHOLD = 0.02
#: quantities of the reference ratios, in order of preference
REL_BASELINE = "total_rel_baseline"
REL_NULL = "total_rel_null"
_REFERENCES = (REL_BASELINE, REL_NULL)


@dataclass(frozen=True)
class Headline:
    """Headline numbers of one pct series; pct values are fractions, steps are training steps."""

    key: MetricKey  # the pct key, e.g. equiv/t=0.4/velocity/pct
    first_step: int
    first_pct: float
    min_step: int
    min_pct: float
    final_step: int
    final_pct: float
    threshold: float
    reference: str | None  # REL_BASELINE, REL_NULL or None: which ratio decided ``left_step``
    left_step: int | None  # first evaluation with that ratio < 1
    below_step: int | None  # first step ≥ left_step with pct ≤ threshold
    total_rel_baseline: float | None = None  # last logged value
    total_rel_null: float | None = None

    @property
    def term(self) -> str:
        return self.key.term

    @property
    def suffix(self) -> str:
        return self.key.suffix

    def as_dict(self) -> dict[str, Any]:
        """Flat record (``metric``, ``term``, ``suffix`` and the numbers) for a table row."""
        d = asdict(self)
        d.pop("key")
        return {"metric": str(self.key), "term": self.term, "suffix": self.suffix, **d}


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _headline_key(text: str, family: str) -> MetricKey | None:
    k = MetricKey.parse(text)
    return k if k is not None and k.family == family and k.quantity == HEADLINE_QUANTITY else None


def _reference_key(k: MetricKey, text: str) -> tuple[MetricKey, str] | None:
    """(pct key, reference quantity) when ``text`` is a reference ratio of the same series as some pct key."""
    r = MetricKey.parse(text)
    if r is None or r.family != k.family or r.quantity not in _REFERENCES:
        return None
    return r.with_(quantity=HEADLINE_QUANTITY), r.quantity


# ------------------------------------------------------------------------------------------------------
# The pure function
# ------------------------------------------------------------------------------------------------------
def headlines(rows: Iterable[tuple[int, str, float]], threshold: float = THRESHOLD, family: str = EQUIV) -> dict[str, Headline]:
    """Headlines of every ``<family>/[S/]T/pct`` series in ``rows`` (``(step, metric, value)``), by pct key."""
    series: dict[str, dict[int, float]] = {}
    for step, metric, value in rows:
        if not _finite(value):
            continue
        k = MetricKey.parse(metric)
        if k is None or k.family != family or k.quantity not in (HEADLINE_QUANTITY, *_REFERENCES):
            continue
        series.setdefault(metric, {})[int(step)] = float(value)  # a repeated (step, metric) keeps the last
    out = {}
    for metric in sorted(series):
        k = _headline_key(metric, family)
        if k is None:
            continue
        pct = sorted(series[metric].items())
        ratios = {q: sorted(series.get(str(k.with_(quantity=q)), {}).items()) for q in _REFERENCES}
        reference = next((q for q in _REFERENCES if ratios[q]), None)
        left = next((s for s, v in ratios[reference] if v < 1.0), None) if reference else None
        below = next((s for s, v in pct if v <= threshold and s >= left), None) if left is not None else None
        lo_step, lo = min(pct, key=lambda sv: (sv[1], sv[0]))
        out[metric] = Headline(
            key=k,
            first_step=pct[0][0],
            first_pct=pct[0][1],
            min_step=lo_step,
            min_pct=lo,
            final_step=pct[-1][0],
            final_pct=pct[-1][1],
            threshold=float(threshold),
            reference=reference,
            left_step=left,
            below_step=below,
            total_rel_baseline=ratios[REL_BASELINE][-1][1] if ratios[REL_BASELINE] else None,
            total_rel_null=ratios[REL_NULL][-1][1] if ratios[REL_NULL] else None,
        )
    return out


# ------------------------------------------------------------------------------------------------------
# The incremental tracker
# ------------------------------------------------------------------------------------------------------
@dataclass
class _Ratio:
    """A reference ratio of one series: its first step below 1 and its last value (committed steps only)."""

    left_step: int | None = None
    last: float | None = None


@dataclass
class _Series:
    """Committed state of one pct series (every step before the tracker's current step)."""

    key: MetricKey
    first: tuple[int, float] | None = None
    low: tuple[int, float] | None = None
    last: tuple[int, float] | None = None
    # per reference quantity: first step ≥ its left step with pct ≤ threshold (found incrementally)
    below: dict[str, int | None] = field(default_factory=lambda: {q: None for q in _REFERENCES})
    ratios: dict[str, _Ratio] = field(default_factory=lambda: {q: _Ratio() for q in _REFERENCES})


def _fold(s: _Series, step: int, pct: float | None, ratios: Mapping[str, float], threshold: float) -> _Series:
    """``s`` after one complete evaluation step (its final pct and reference ratios; any may be missing)."""
    s = replace(s, below=dict(s.below), ratios={q: replace(r) for q, r in s.ratios.items()})
    for q, v in ratios.items():
        r = s.ratios[q]
        r.last = v
        if r.left_step is None and v < 1.0:
            r.left_step = step
    if pct is not None:
        if s.first is None:
            s.first = (step, pct)
        if s.low is None or pct < s.low[1]:
            s.low = (step, pct)
        s.last = (step, pct)
        for q in _REFERENCES:
            left = s.ratios[q].left_step
            if s.below[q] is None and left is not None and step >= left and pct <= threshold:
                s.below[q] = step
    return s


class HeadlineTracker:
    """Headlines of a run, updated one logged dict at a time (``update(step, metrics)``).

    Values of the current step are held until a later step arrives (so a value logged twice at one step, or a
    pct logged before its reference ratio at the same step, ends as in :func:`headlines`); :meth:`headlines`
    folds them in without committing. Steps must not decrease.
    """

    def __init__(self, threshold: float = THRESHOLD, family: str = EQUIV):
        self.threshold = float(threshold)
        self.family = family
        self._series: dict[str, _Series] = {}
        self._step: int | None = None
        self._pending: dict[str, float] = {}
        self._pending_refs: dict[str, dict[str, float]] = {}

    def update(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Headline]:
        """Take one logged dict at ``step``; returns the headlines so far."""
        step = int(step)
        if self._step is not None and step < self._step:
            raise ValueError(
                f"HeadlineTracker.update: step {step} is before the previous step {self._step}; updates must come in training-step order"
            )
        if self._step is not None and step > self._step:
            self._commit()
        self._step = step
        for metric, value in metrics.items():
            if not _finite(value):
                continue
            k = _headline_key(metric, self.family)
            if k is not None:
                self._series.setdefault(metric, _Series(k))
                self._pending[metric] = float(value)
                continue
            r = MetricKey.parse(metric)
            if r is not None and r.family == self.family and r.quantity in _REFERENCES:
                self._pending_refs.setdefault(str(r.with_(quantity=HEADLINE_QUANTITY)), {})[r.quantity] = float(value)
        return self.headlines()

    def update_rows(self, rows: Iterable[tuple[int, str, float]]) -> dict[str, Headline]:
        """Take ``(step, metric, value)`` rows in step order (e.g. a results file on resume)."""
        rows = sorted(rows, key=lambda r: int(r[0]))  # stable: rows of one step keep their order
        i = 0
        while i < len(rows):
            j = i
            while j < len(rows) and int(rows[j][0]) == int(rows[i][0]):
                j += 1
            self.update(int(rows[i][0]), {m: v for _, m, v in rows[i:j] if _finite(v)})  # the last finite value
            i = j
        return self.headlines()

    def _folded(self, metric: str) -> _Series:
        s = self._series[metric]
        if self._step is None or (metric not in self._pending and metric not in self._pending_refs):
            return s
        return _fold(s, self._step, self._pending.get(metric), self._pending_refs.get(metric, {}), self.threshold)

    def _commit(self) -> None:
        for metric in set(self._pending) | set(self._pending_refs):
            if metric not in self._series:  # a reference ratio whose pct was never logged: keep it waiting
                self._series[metric] = _Series(MetricKey.parse(metric))
            self._series[metric] = self._folded(metric)
        self._pending, self._pending_refs = {}, {}

    def headlines(self) -> dict[str, Headline]:
        """The headlines of every pct series seen so far, by pct key (as :func:`headlines` of the same rows)."""
        out = {}
        for metric in sorted(self._series):
            s = self._folded(metric)
            if s.first is None:
                continue
            reference = next((q for q in _REFERENCES if s.ratios[q].last is not None), None)
            out[metric] = Headline(
                key=s.key,
                first_step=s.first[0],
                first_pct=s.first[1],
                min_step=s.low[0],
                min_pct=s.low[1],
                final_step=s.last[0],
                final_pct=s.last[1],
                threshold=self.threshold,
                reference=reference,
                left_step=s.ratios[reference].left_step if reference else None,
                below_step=s.below[reference] if reference else None,
                total_rel_baseline=s.ratios[REL_BASELINE].last,
                total_rel_null=s.ratios[REL_NULL].last,
            )
        return out


# ------------------------------------------------------------------------------------------------------
# Summary keys
# ------------------------------------------------------------------------------------------------------
def summary_key(pct_key: MetricKey | str, quantity: str) -> str:
    """``headline/[S/]T/<quantity>`` for the series of a pct key (``equiv/t=0.4/velocity/pct`` →
    ``headline/t=0.4/velocity/pct_min``)."""
    k = MetricKey.parse(pct_key) if isinstance(pct_key, str) else pct_key
    if k is None:
        raise ValueError(f"summary_key: {pct_key!r} is not a decomposition metric key")
    return str(MetricKey(HEADLINE, k.term, quantity, k.suffix))


PCT_FIRST, PCT_FIRST_STEP = "pct_first", "pct_first_step"
PCT_MIN, PCT_MIN_STEP = "pct_min", "pct_min_step"
PCT_FINAL, PCT_FINAL_STEP = "pct_final", "pct_final_step"
BASELINE_REFERENCE, LEFT_BASELINE_STEP = "baseline_reference", "left_baseline_step"
REL_BASELINE_FINAL, REL_NULL_FINAL = f"{REL_BASELINE}_final", f"{REL_NULL}_final"


def below_quantity(threshold: float = THRESHOLD) -> str:
    """``first_below_2pct_step_after_baseline`` (threshold 0.02; 0.005 → ``first_below_0p5pct_…``)."""
    return f"first_below_{100 * threshold:g}pct_step_after_baseline".replace(".", "p")


def summary_quantities(threshold: float = THRESHOLD) -> tuple[str, ...]:
    """The quantities :func:`summary` writes per series, in order."""
    return (
        PCT_FIRST,
        PCT_FIRST_STEP,
        PCT_MIN,
        PCT_MIN_STEP,
        PCT_FINAL,
        PCT_FINAL_STEP,
        BASELINE_REFERENCE,
        LEFT_BASELINE_STEP,
        below_quantity(threshold),
        REL_BASELINE_FINAL,
        REL_NULL_FINAL,
    )


def summary(heads: Mapping[str, Headline]) -> dict[str, Any]:
    """Flat ``{headline/[S/]T/<quantity>: value}`` of headlines (``None`` where a number does not exist).

    ``…/baseline_reference`` says which ratio decided ``…/left_baseline_step`` (``total_rel_baseline``, or
    ``total_rel_null`` for a run without a baseline); ``…/first_below_2pct_step_after_baseline`` is the first
    step at or after it with pct ≤ 2 %.
    """
    out: dict[str, Any] = {}
    for h in heads.values():
        names = summary_quantities(h.threshold)
        values = (
            h.first_pct,
            h.first_step,
            h.min_pct,
            h.min_step,
            h.final_pct,
            h.final_step,
            h.reference,
            h.left_step,
            h.below_step,
            h.total_rel_baseline,
            h.total_rel_null,
        )
        out.update({summary_key(h.key, q): v for q, v in zip(names, values)})
    return out
