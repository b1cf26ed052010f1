"""Headline numbers of a run: the pure function on designed series, and the incremental tracker against it."""

from __future__ import annotations

import math
import random

import pytest

from equivrepro.metrics import keys
from equivrepro.metrics.headline import (
    HEADLINE,
    PCT_MIN,
    REL_BASELINE,
    REL_NULL,
    HeadlineTracker,
    below_quantity,
    headlines,
    summary,
    summary_key,
    summary_quantities,
)

PCT = keys.key(keys.EQUIV, "forces", "pct")
BASE = keys.key(keys.EQUIV, "forces", REL_BASELINE)
NULL = keys.key(keys.EQUIV, "forces", REL_NULL)


def _rows(series: dict[str, list[float]], steps: list[int]) -> list[tuple[int, str, float]]:
    return [(s, m, v) for m, vals in series.items() for s, v in zip(steps, vals)]


STEPS = [0, 10, 20, 30, 40]
# pct is low at initialisation (a model at its reference is trivially equivariant), rises, then dips below 2 %
PCTS = [0.01, 0.30, 0.015, 0.005, 0.02]


def test_first_min_final_and_below_after_leaving_the_baseline():
    rows = _rows({PCT: PCTS, BASE: [1.5, 1.2, 1.1, 0.9, 0.8], NULL: [1.2, 0.9, 0.7, 0.5, 0.4]}, STEPS)
    (h,) = headlines(rows).values()
    assert (h.first_step, h.first_pct) == (0, 0.01)
    assert (h.min_step, h.min_pct) == (30, 0.005)
    assert (h.final_step, h.final_pct) == (40, 0.02)
    # the baseline wins over the null predictor when both are logged: left at 30, not at 10 (null)
    assert h.reference == REL_BASELINE and h.left_step == 30
    assert h.below_step == 30  # step 0 (still at the baseline) and step 20 (before leaving it) do not count
    assert h.total_rel_baseline == 0.8 and h.total_rel_null == 0.4


def test_falls_back_to_the_null_predictor_and_says_so():
    rows = _rows({PCT: PCTS, NULL: [1.2, 0.9, 0.7, 0.5, 0.4]}, STEPS)
    (h,) = headlines(rows).values()
    assert h.reference == REL_NULL and h.left_step == 10 and h.below_step == 20
    assert h.total_rel_baseline is None
    s = summary({str(h.key): h})
    assert s[summary_key(PCT, "baseline_reference")] == REL_NULL


def test_never_leaving_or_never_below():
    never_left = headlines(_rows({PCT: PCTS, BASE: [1.5] * 5}, STEPS))[PCT]
    assert never_left.left_step is None and never_left.below_step is None
    no_reference = headlines(_rows({PCT: PCTS}, STEPS))[PCT]
    assert no_reference.reference is None and no_reference.below_step is None
    high = headlines(_rows({PCT: [0.5, 0.4, 0.3, 0.2, 0.1], BASE: [0.5] * 5}, STEPS))[PCT]
    assert high.left_step == 0 and high.below_step is None
    # a pct exactly at the threshold counts (≤)
    at = headlines([(5, PCT, 0.02), (5, BASE, 0.5)], threshold=0.02)[PCT]
    assert at.below_step == 5


def test_nonfinite_ignored_repeats_keep_the_last_and_suffixes_are_separate():
    flow = keys.key(keys.EQUIV, "velocity", "pct", "t=0.4")
    rows = [
        (0, PCT, 0.5),
        (10, PCT, float("nan")),
        (20, PCT, 0.1),
        (20, PCT, 0.2),
        (30, PCT, float("inf")),
        (0, flow, 0.05),
        (10, flow, 0.01),
        (0, keys.key(keys.CUBE, "forces", "pct"), 1e-9),
    ]
    out = headlines(rows)
    assert set(out) == {PCT, flow}  # only the equiv family
    assert out[PCT].final_step == 20 and out[PCT].final_pct == 0.2 and out[PCT].min_pct == 0.2
    assert out[flow].suffix == "t=0.4" and out[flow].term == "velocity" and out[flow].min_step == 10


def test_tracker_rejects_steps_going_back():
    t = HeadlineTracker()
    t.update(10, {PCT: 0.1})
    with pytest.raises(ValueError, match="step 5 is before the previous step 10"):
        t.update(5, {PCT: 0.1})


def _random_log(rng: random.Random) -> list[tuple[int, dict[str, float]]]:
    """Logged dicts as a training loop emits them: steps in order, several dicts per step (a metric may be
    logged twice at one step, a pct before its ratio), NaN now and then, several terms and suffixes."""
    names = []
    for suffix in ("", "t=0.1", "t=0.7")[: rng.randint(1, 3)]:
        for term in ("forces", "energy")[: rng.randint(1, 2)]:
            names.append(keys.key(keys.EQUIV, term, "pct", suffix))
            if rng.random() < 0.7:
                names.append(keys.key(keys.EQUIV, term, REL_NULL, suffix))
            if rng.random() < 0.5:
                names.append(keys.key(keys.EQUIV, term, REL_BASELINE, suffix))
    names.append(keys.scalar_key(keys.TRAIN, "loss"))
    log, step = [], 0
    for _ in range(rng.randint(1, 30)):
        step += rng.choice([0, 1, 5, 10])
        for _ in range(rng.randint(1, 3)):
            chosen = rng.sample(names, rng.randint(1, len(names)))
            values = {}
            for n in chosen:
                v = rng.choice([rng.uniform(0, 0.05), rng.uniform(0, 2), 0.02, 1.0])
                values[n] = float("nan") if rng.random() < 0.05 else v
            log.append((step, values))
    return log


@pytest.mark.parametrize("seed", range(40))
def test_tracker_matches_the_pure_function(seed):
    rng = random.Random(seed)
    log = _random_log(rng)
    threshold = rng.choice([0.02, 0.05, 0.5])
    tracker = HeadlineTracker(threshold=threshold)
    rows = []
    for i, (step, values) in enumerate(log):
        got = tracker.update(step, values)
        rows.extend((step, m, v) for m, v in values.items())
        if i % 7 == 0 or i == len(log) - 1:  # at any point, not only at the end
            assert got == headlines(rows, threshold=threshold)
    assert tracker.headlines() == headlines(rows, threshold=threshold)
    assert HeadlineTracker(threshold=threshold).update_rows(rows) == headlines(rows, threshold=threshold)


def test_summary_keys():
    assert summary_key(keys.key(keys.EQUIV, "velocity", "pct", "t=0.4"), PCT_MIN) == f"{HEADLINE}/t=0.4/velocity/{PCT_MIN}"
    assert below_quantity(0.02) == "first_below_2pct_step_after_baseline"
    assert below_quantity(0.005) == "first_below_0p5pct_step_after_baseline"
    heads = headlines(_rows({PCT: PCTS, BASE: [1.5, 1.2, 1.1, 0.9, 0.8]}, STEPS))
    s = summary(heads)
    assert set(s) == {summary_key(PCT, q) for q in summary_quantities()}
    assert s[summary_key(PCT, PCT_MIN)] == min(PCTS)
    assert s[summary_key(PCT, below_quantity())] == 30
    assert all(v is None or isinstance(v, (int, float, str)) and not (isinstance(v, float) and math.isnan(v)) for v in s.values())
