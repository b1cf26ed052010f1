"""EquivarianceMetric: the torchmetrics-shaped object a user's own loop (and the harness callback) accumulates.

* pooling updates gives exactly the numbers of one decomposition of the whole set, in any chunking;
* precomputed untwisted predictions and a model give the same result; reset forgets;
* the closed form of the linear point model is recovered (not just self-consistency);
* under DDP (gloo, 2 processes) compute() pools per-sample values across ranks: the result equals a single
  process holding both shards — a per-rank average of pct would differ;
* with spectrum_l_max the degree spectrum comes from the same K copies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from equivrepro.metrics import keys, twirl_decomposition, untwisted_predictions
from equivrepro.metrics.metric import EquivarianceMetric
from equivrepro.rotations import haar_rotations
from equivrepro.testing.pointcloud import LinearPointModel, NonEquivariantMLP, PointCloudTask, make_pointcloud_batch
from tests.metrics.test_decomposition import linear_closed_form, linear_matrix

TASK = PointCloudTask()
ROOT = Path(__file__).resolve().parents[2]


def _data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    batch = make_pointcloud_batch(n, 6, g)
    rot = haar_rotations(n * 5, generator=g, dtype=torch.float64).reshape(n, 5, 3, 3)
    return batch, rot


def _split(batch, rot, sizes):
    out, start = [], 0
    for s in sizes:
        out.append(({k: v[start : start + s] for k, v in batch.items()}, rot[start : start + s]))
        start += s
    return out


def test_pooled_updates_equal_one_decomposition_in_any_chunking():
    torch.manual_seed(0)
    model = NonEquivariantMLP().double()
    batch, rot = _data(24, 1)
    whole = twirl_decomposition(model, TASK, batch, rot)
    for sizes in ([24], [5, 19], [1] * 24):
        m = EquivarianceMetric(TASK, k=5, bootstrap=0)
        for b, r in _split(batch, rot, sizes):
            m.update(model, b, r)
        got = m.compute()
        for term, dec in whole.items():
            for q, v in dec.summary().items():
                assert got[keys.key(keys.EQUIV, term, q)] == pytest.approx(v, rel=1e-12, abs=1e-15), (sizes, term, q)


def test_predictions_or_model_and_reset():
    torch.manual_seed(0)
    model = NonEquivariantMLP().double()
    batch, rot = _data(8, 2)
    a = EquivarianceMetric(TASK, k=5, bootstrap=0)
    a.update(model, batch, rot)
    b = EquivarianceMetric(TASK, k=5, bootstrap=0)
    b.update(untwisted_predictions(model, TASK, batch, rot), batch, rot)
    assert a.compute() == b.compute()
    with pytest.raises(ValueError, match="need the rotations"):
        b.update(untwisted_predictions(model, TASK, batch, rot), batch)
    a.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        a.compute()


def test_drawn_rotations_recover_the_closed_form_of_the_linear_model():
    a_mat = linear_matrix(3)
    model = LinearPointModel(a_mat)
    g = torch.Generator().manual_seed(4)
    batch = make_pointcloud_batch(400, 6, g)
    m = EquivarianceMetric(TASK, k=8, seed=7)
    m.update(model, batch)  # K Haar rotations per sample drawn by the metric
    got = m.compute()
    exact = linear_closed_form(a_mat, batch)
    assert got["equiv/mse/equiv"] == pytest.approx(float(exact["equiv"].mean()), rel=0.05)
    assert got["equiv/mse/mean"] == pytest.approx(float(exact["mean"].mean()), rel=0.05)
    assert got["equiv/mse/pct_ci_lo"] < float(exact["equiv"].mean() / exact["total"].mean()) < got["equiv/mse/pct_ci_hi"]


def test_spectrum_from_the_same_copies():
    a_mat = linear_matrix(5)
    model = LinearPointModel(a_mat)
    batch, rot = _data(64, 5)
    m = EquivarianceMetric(TASK, k=5, spectrum_l_max=3, bootstrap=0)
    m.update(model, batch, rot)
    got = m.compute()
    # a linear map's traceless part: the antisymmetric part lives at l = 1, the symmetric traceless part at l = 2
    assert keys.degree_key("mse", 2) in got and keys.degree_key("l2mae", 2) not in got  # only quadratic terms
    e1, e2, e3 = (got[keys.degree_key("mse", l)] for l in (1, 2, 3))
    assert abs(e3) < 4 * got["spectrum/mse/l=3_se"] + 1e-12
    # nothing above l = 2: the remainder L_equiv − Σ_{l≤3} E_l is zero within its standard error, and E_1 + E_2 carry it all
    assert abs(got["spectrum/mse/remainder"]) < 4 * got["spectrum/mse/remainder_se"]
    assert e1 > 0 and e2 > 0 and e1 + e2 + e3 + got["spectrum/mse/remainder"] == pytest.approx(got["equiv/mse/equiv"], rel=1e-9)


_DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch, torch.distributed as dist
    from equivrepro.metrics.metric import EquivarianceMetric
    from equivrepro.rotations import haar_rotations
    from equivrepro.testing.pointcloud import NonEquivariantMLP, PointCloudTask, make_pointcloud_batch
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = NonEquivariantMLP().double()
    g = torch.Generator().manual_seed(11)
    batch = make_pointcloud_batch(20, 6, g)
    rot = haar_rotations(20 * 4, generator=g, dtype=torch.float64).reshape(20, 4, 3, 3)
    sl = slice(0, 3) if rank == 0 else slice(3, 20)            # unequal shards: averaging per-rank pct would be wrong
    m = EquivarianceMetric(PointCloudTask(), k=4, bootstrap=200, spectrum_l_max=2)
    m.update(model, {k: v[sl] for k, v in batch.items()}, rot[sl])
    out = m.compute()
    if rank == 0:
        json.dump(out, open(sys.argv[1], "w"))
    dist.destroy_process_group()
""")


def test_compute_pools_per_sample_values_across_ddp_ranks(tmp_path):
    script = tmp_path / "ddp_metric.py"
    script.write_text(_DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29541",
            str(script),
            str(tmp_path / "out.json"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    ddp = json.loads((tmp_path / "out.json").read_text())
    torch.manual_seed(0)
    model = NonEquivariantMLP().double()
    g = torch.Generator().manual_seed(11)
    batch = make_pointcloud_batch(20, 6, g)
    rot = haar_rotations(20 * 4, generator=g, dtype=torch.float64).reshape(20, 4, 3, 3)
    single = EquivarianceMetric(TASK, k=4, bootstrap=200, spectrum_l_max=2)
    single.update(model, batch, rot)
    ref = single.compute()
    assert set(ddp) == set(ref)
    for k, v in ref.items():
        assert ddp[k] == pytest.approx(v, rel=1e-10, abs=1e-14), k


def test_the_spectrum_and_attribution_cost_no_extra_forward_pass():
    """The degree spectrum and the per-entity attribution come from the same K copies as pct: the model is called
    exactly as often with them as without."""
    torch.manual_seed(0)
    model = NonEquivariantMLP().double()
    calls = {"n": 0}
    model.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    batch, rot = _data(12, 3)
    counts = {}
    for extra in ({}, {"spectrum_l_max": 4, "attribution": True}):
        calls["n"] = 0
        m = EquivarianceMetric(TASK, k=5, bootstrap=0, **extra)
        m.update(model, batch, rot)
        out = m.compute()
        counts[bool(extra)] = calls["n"]
    assert keys.degree_key("mse", 4) in out and any(keys.attribution_of(k) is not None for k in out)
    assert counts[True] == counts[False] >= 1
