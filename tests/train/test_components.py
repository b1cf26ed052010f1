"""Unit tests of the harness pieces: schedules, EMA, sampler, optimizer groups, atomic writes, results file."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from equivrepro.train.build import run_identity
from equivrepro.train.checkpoint import atomic_write_text
from equivrepro.train.ema import EMA
from equivrepro.train.loggers import ResultsFile, read_results
from equivrepro.train.optim import parameter_groups
from equivrepro.train.sampling import StepBatchSampler
from equivrepro.train.schedules import lr_factor


def test_cosine_warmup_schedule_matches_its_formula():
    kw = dict(total_steps=1000, warmup_steps=100, warmup_start_factor=0.2, min_factor=0.5)
    assert lr_factor(0, "cosine_warmup", **kw) == pytest.approx(0.2)
    assert lr_factor(50, "cosine_warmup", **kw) == pytest.approx(0.6)
    assert lr_factor(100, "cosine_warmup", **kw) == pytest.approx(1.0)
    assert lr_factor(550, "cosine_warmup", **kw) == pytest.approx(0.75)
    assert lr_factor(1000, "cosine_warmup", **kw) == pytest.approx(0.5)
    assert lr_factor(123, "constant", total_steps=1000) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0, "cosine", total_steps=10)


def test_ema_tracks_the_exponential_average():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model)
    # θ_t = t; ema = 0.9^3·0 + 0.1·(0.9^2·1 + 0.9·2 + 3)
    assert ema.model.weight[0, 0].item() == pytest.approx(0.1 * (0.81 + 1.8 + 3))
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_step_sampler_is_a_function_of_the_step():
    full = list(StepBatchSampler(10, 4, seed=3, max_steps=8))
    resumed = list(StepBatchSampler(10, 4, seed=3, start_step=5, max_steps=8))
    assert full[5:] == resumed
    first_epoch = [i for b in full for i in b][:10]
    assert sorted(first_epoch) == list(range(10))  # each epoch is a permutation
    r0 = list(StepBatchSampler(10, 2, seed=3, max_steps=4, rank=0, world_size=2))
    r1 = list(StepBatchSampler(10, 2, seed=3, max_steps=4, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == list(StepBatchSampler(10, 4, seed=3, max_steps=4))


def test_no_weight_decay_on_biases_norms_embeddings():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    decay, no_decay = parameter_groups(model)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0


def test_results_file_truncates_to_the_resume_step(tmp_path):
    f = ResultsFile(tmp_path, resume_step=None)
    for s in range(5):
        f.log(s, {"a": float(s), "b": math.nan})
    f.close()
    with open(tmp_path / "metrics.csv", "a") as h:
        h.write("7,a,0.")  # a torn line from a crash mid-write
    assert len(read_results(tmp_path / "metrics.csv")) == 10
    f = ResultsFile(tmp_path, resume_step=2)
    f.close()
    assert [r[0] for r in read_results(tmp_path / "metrics.csv")] == [0, 0, 1, 1, 2, 2]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")

    class Boom(Exception):
        pass

    from equivrepro.train.checkpoint import atomic_write

    def bad(f):
        f.write("partial")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(p, bad, mode="w")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["x.txt"]


def test_run_identity_survives_moving_the_data_root_but_not_changing_the_data():
    def cfg(root: str, name: str = "x.h5", lr: float = 1e-3) -> dict:
        return {
            "paths": {"root": root, "data_dir": f"{root}/data", "runs_dir": f"{root}/runs"},
            "data": {"path": f"{root}/data/{name}", "cache": f"{root}/data/cache"},
            "optim": {"lr": lr},
        }

    assert run_identity(cfg("/work/main")) == run_identity(cfg("/tmp/fresh"))
    assert run_identity(cfg("/work/main")) != run_identity(cfg("/work/main", name="y.h5"))
    assert run_identity(cfg("/work/main")) != run_identity(cfg("/work/main", lr=1e-4))
    outside = cfg("/work/main")
    outside["data"]["path"] = "/datasets/SPICE.hdf5"  # a file outside every paths.* root keeps its absolute name
    assert run_identity(outside) != run_identity({**outside, "data": {**outside["data"], "path": "/other/SPICE.hdf5"}})
