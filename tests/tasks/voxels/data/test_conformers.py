"""The checks on raw conformers: flat (2-D) coordinates, finite values, shortest interatomic distance."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from equivrepro.data import DataError
from tasks.voxels.data.conformers import check_coordinates, is_flat


def test_flat_means_z_zero_or_planar_around_an_sp3_centre():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3))
    assert not is_flat(x, max_degree=4)
    z0 = x.copy()
    z0[:, 2] = 0.0
    assert is_flat(z0, max_degree=1)
    rotated = z0 @ np.linalg.qr(rng.normal(size=(3, 3)))[0].T  # a 2-D depiction turned in space
    assert is_flat(rotated, max_degree=4) and not is_flat(rotated, max_degree=3)  # only an sp3 centre tells
    assert not is_flat(z0[:2], max_degree=1)  # two atoms are always on a plane


def test_shortest_distance_check_raises_or_counts():
    x = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 1.5, 0.0]])
    with pytest.raises(DataError, match=r"rec 7: two atoms are 0.500 Å apart, closer than data.min_distance=0.6"):
        check_coordinates(x, "rec 7", "error", Counter(), 0.6)
    skipped = Counter()
    assert not check_coordinates(x, "rec 7", "skip", skipped, 0.6) and skipped == {"implausible_geometry": 1}
    assert check_coordinates(x, "rec 7", "error", Counter(), 0.4)
    x[0, 0] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        check_coordinates(x, "rec 7", "error", Counter(), 0.6)
