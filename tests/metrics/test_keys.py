"""Metric names are made and parsed in one place, and the two are inverse."""

from __future__ import annotations

import pytest

from equivrepro.metrics import keys


@pytest.mark.parametrize(
    "family,term,quantity,suffix,text",
    [
        (keys.EQUIV, "velocity", "pct", "t=0.4", "equiv/t=0.4/velocity/pct"),
        (keys.CUBE, "denoise", "pct", "", "equiv_cube/denoise/pct"),
        (keys.FLOOR, "forces", "equiv", "", "equiv_floor/forces/equiv"),
        (keys.SPECTRUM, "forces", "l=2", "", "spectrum/forces/l=2"),
    ],
)
def test_make_and_parse_are_inverse(family, term, quantity, suffix, text):
    assert keys.key(family, term, quantity, suffix) == text
    assert keys.parse(text) == keys.MetricKey(family, term, quantity, suffix)
    assert str(keys.parse(text)) == text


def test_non_decomposition_names_and_bad_parts():
    assert keys.parse("train/loss") is None and keys.parse("equiv/pct") is None and keys.parse("equiv//x/pct") is None
    assert keys.scalar_key(keys.TIME, "step_s") == "time/step_s"
    with pytest.raises(ValueError, match="without '/'"):
        keys.key(keys.EQUIV, "a/b", "pct")
    with pytest.raises(ValueError, match="unknown scalar metric family"):
        keys.scalar_key("equiv", "x")


def test_degrees_matching_and_suffix_order():
    assert keys.degree_key("forces", 3, "t=0.2") == "spectrum/t=0.2/forces/l=3"
    assert keys.degree_of("spectrum/forces/l=12") == 12 and keys.degree_of("spectrum/forces/remainder") is None
    assert keys.degree_of("equiv/forces/pct") is None
    assert keys.matches("equiv/t=0.4/velocity/pct", family=keys.EQUIV, quantity="pct", suffix="t=*")
    assert not keys.matches("equiv/t=0.4/velocity/pct", term="forces")
    assert sorted(["t=0.99", "", "t=0.2", "t=0", "other"], key=keys.suffix_sort_key) == ["", "t=0", "t=0.2", "t=0.99", "other"]


def test_angle_and_attribution_keys_round_trip():
    k = keys.angle_key("forces", "measured", 30, "t=0.4", "se")
    assert k == "angle/t=0.4/forces/measured_deg=30_se"
    assert keys.parse(k) == keys.MetricKey(keys.ANGLE, "forces", "measured_deg=30_se", "t=0.4")
    assert keys.angle_of(k) == keys.AngleQuantity("measured", 30.0, "se")
    assert keys.angle_of(keys.angle_key("v", "predicted", 22.5, stat="upper")) == keys.AngleQuantity("predicted", 22.5, "upper")
    assert keys.angle_of("spectrum/forces/l=2") is None and keys.angle_of("angle/forces/pct") is None
    with pytest.raises(ValueError, match="measured' or 'predicted"):
        keys.angle_key("forces", "guessed", 30)
    with pytest.raises(ValueError, match="plain non-negative angle"):
        keys.angle_key("forces", "measured", -30)
    for bin_label, stat in (("C", ""), ("2-4", "se"), ("8+", "per_entity"), ("0.8-1", "count"), ("other", "")):
        text = keys.attribution_key("forces", "centroid_distance_A", bin_label, "t=0.2", stat)
        assert keys.parse(text).family == keys.ATTRIBUTION and str(keys.parse(text)) == text
        assert keys.attribution_of(text) == keys.AttributionQuantity("centroid_distance_A", bin_label, stat)
    assert keys.attribution_key("forces", "element", "Cl") == "attribution/forces/element=Cl"
    for bad in (("element", "a=b"), ("element", "x_se"), ("2nd", "C"), ("element", "a/b")):
        with pytest.raises(ValueError):
            keys.attribution_key("forces", *bad)
    with pytest.raises(ValueError, match="statistic"):
        keys.attribution_key("forces", "element", "C", stat="median")
    assert keys.attribution_of("equiv/forces/pct") is None
