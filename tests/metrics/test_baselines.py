"""Tests of :mod:`equivrepro.metrics.baselines`: weighted least squares with the loss term's own weights.

The reference is the closed-form WLS solution on the real entries only, ``θ* = argmin Σ_j w_j (Φ_j θ − y_j)²``, computed
here independently with ``torch.linalg.lstsq`` on ``√w``-scaled rows.
"""

from __future__ import annotations

import pytest
import torch

from equivrepro.metrics.baselines import EquivariantBaseline, LinearBaseline, term_weights
from equivrepro.task import LossTerm, Task

P = 4


def _masked_weighted_mse(pred, target, batch):
    """Per sample: s_b · mean over real points of ‖Δ‖² (a per-sample scale s_b and a mask: a quadratic term)."""
    m = batch["mask"].to(pred["vec"].dtype)
    se = (pred["vec"] - target["vec"]).pow(2).sum(-1) * m
    return batch["scale"] * se.sum(-1) / m.sum(-1).clamp_min(1.0)


def _scalar_se(pred, target, batch):
    return (pred["s"] - target["s"]).pow(2)


class _SyntheticTask(Task):
    """Targets ``vec (B, N, 3)`` (masked) and ``s (B,)``; the features live in the batch."""

    name = "synthetic"
    terms = (
        LossTerm("vec", _masked_weighted_mse, quadratic=True),
        LossTerm("s", _scalar_se, quadratic=True),
        LossTerm("l1", lambda p, t, b: (p["s"] - t["s"]).abs(), quadratic=False),
    )

    def targets(self, batch):
        return {"vec": batch["y"], "s": batch["ys"]}


TASK = _SyntheticTask()


def _features(batch):
    return {"vec": batch["phi"]}


def _batch(b: int, n: int, g: torch.Generator, theta: torch.Tensor, noise: float = 0.0) -> dict:
    phi = torch.randn(b, n, 3, P, generator=g, dtype=torch.float64)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, -2:] = False
    mask[-1, -1] = False
    y = phi @ theta + noise * torch.randn(b, n, 3, generator=g, dtype=torch.float64)
    y = torch.where(mask[..., None], y, torch.full_like(y, 1e6))  # garbage on padded points: must be ignored
    return {
        "phi": phi,
        "y": y,
        "mask": mask,
        "scale": torch.rand(b, generator=g, dtype=torch.float64) + 0.5,
        "ys": torch.randn(b, generator=g, dtype=torch.float64),
    }


def _reference_wls(batches: list[dict]) -> torch.Tensor:
    rows, rhs = [], []
    for bt in batches:
        m = bt["mask"]
        w = (bt["scale"][:, None] / m.sum(-1, keepdim=True))[..., None].expand(bt["y"].shape)  # per coordinate
        keep = m[..., None].expand(bt["y"].shape)
        rows.append((bt["phi"] * w[..., None].sqrt())[keep])
        rhs.append((bt["y"] * w.sqrt())[keep])
    return torch.linalg.lstsq(torch.cat(rows), torch.cat(rhs)[:, None]).solution[:, 0]


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    theta = torch.tensor([1.5, -0.7, 0.0, 2.0], dtype=torch.float64)
    return theta, [_batch(5, 7, g, theta, noise=0.3), _batch(3, 7, g, theta, noise=0.3)], g


def test_recovers_a_known_theta_and_the_weighted_least_squares_solution(data):
    theta, batches, g = data
    noiseless = [_batch(4, 6, g, theta), _batch(2, 6, g, theta)]
    exact = LinearBaseline("lin", _features, ridge=0.0).fit(TASK, noiseless, TASK.terms[0])
    assert torch.allclose(exact.theta, theta, rtol=0, atol=1e-10)
    assert 0.0 <= exact.fit_info["train_loss"] < 1e-9  # up to the cancellation in s − 2θᵀr + θᵀAθ
    noisy = LinearBaseline("lin", _features, ridge=0.0).fit(TASK, batches, TASK.terms[0])
    ref = _reference_wls(batches)
    assert torch.allclose(noisy.theta, ref, rtol=0, atol=1e-10)
    assert (noisy.theta - theta).abs().max() > 1e-3  # noise moves it: the check above is not trivially the truth
    # the ridge is a small per-parameter shrinkage
    ridged = LinearBaseline("lin", _features, ridge=1e-8).fit(TASK, batches, TASK.terms[0])
    assert torch.allclose(ridged.theta, ref, rtol=1e-6, atol=0)
    # the reported training loss is the fitted term summed over the training samples
    loss = sum(float(TASK.terms[0].fn(noisy(bt), TASK.targets(bt), bt).sum()) for bt in batches)
    assert noisy.fit_info["train_loss"] == pytest.approx(loss, rel=1e-9)


def test_weights_are_honoured_padding_and_per_sample_scale(data):
    """The garbage (1e6) on padded points does not move θ; an unweighted fit (all scales 1) gives a different θ, so
    the per-sample scale of the term is really used."""
    theta, batches, _ = data
    fit = LinearBaseline("lin", _features, ridge=0.0).fit(TASK, batches, TASK.terms[0])
    assert (fit.theta - theta).abs().max() < 0.5
    cleaned = [dict(bt, y=torch.where(bt["mask"][..., None], bt["y"], torch.zeros_like(bt["y"]))) for bt in batches]
    refit = LinearBaseline("lin", _features, ridge=0.0).fit(TASK, cleaned, TASK.terms[0])
    assert torch.allclose(refit.theta, fit.theta, rtol=0, atol=1e-12)
    unscaled = [dict(bt, scale=torch.ones_like(bt["scale"])) for bt in batches]
    other = LinearBaseline("lin", _features, ridge=0.0).fit(TASK, unscaled, TASK.terms[0])
    assert (other.theta - fit.theta).abs().max() > 1e-4


def test_fit_does_not_depend_on_how_the_data_are_batched(data):
    theta, batches, _ = data
    whole = {k: torch.cat([bt[k] for bt in batches]) for k in batches[0]}
    singles = [{k: v[i : i + 1] for k, v in whole.items()} for i in range(whole["y"].shape[0])]
    a = LinearBaseline("lin", _features).fit(TASK, [whole], TASK.terms[0])
    b = LinearBaseline("lin", _features).fit(TASK, singles, TASK.terms[0])
    assert torch.allclose(a.theta, b.theta, rtol=0, atol=1e-12)
    again = LinearBaseline("lin", _features).fit(TASK, [whole], TASK.terms[0])
    assert torch.equal(a.theta, again.theta)  # deterministic


def test_missing_keys_predict_zero_unused_parameters_are_zero_and_state_round_trips(data):
    theta, batches, _ = data

    def padded_features(batch):  # a fifth column that is zero everywhere (an element pair never seen)
        phi = batch["phi"]
        return {"vec": torch.cat([phi, torch.zeros_like(phi[..., :1])], dim=-1)}

    fit = LinearBaseline("lin", padded_features).fit(TASK, batches)  # term=None: every quadratic term of the task
    assert fit.theta.shape == (P + 1,) and float(fit.theta[-1]) == 0.0
    assert isinstance(fit, EquivariantBaseline)
    pred = fit(batches[0])
    assert set(pred) == {"vec", "s"} and torch.equal(pred["s"], torch.zeros_like(batches[0]["ys"]))
    state = fit.state_dict()
    fresh = LinearBaseline("lin", padded_features, task=TASK)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(batches[1])["vec"], fit(batches[1])["vec"]) and set(fresh(batches[1])) == {"vec", "s"}
    with pytest.raises(ValueError, match="cannot be loaded"):
        LinearBaseline("other", padded_features).load_state_dict(state)
    with pytest.raises(RuntimeError, match="not fitted"):
        LinearBaseline("lin", padded_features)(batches[0])


def test_only_quadratic_terms_and_matching_shapes_are_accepted(data):
    _, batches, _ = data
    with pytest.raises(ValueError, match="quadratic"):
        LinearBaseline("lin", _features).fit(TASK, batches, TASK.terms[2])
    with pytest.raises(ValueError, match="shape"):
        LinearBaseline("lin", lambda b: {"vec": b["phi"][:, :-1]}).fit(TASK, batches, TASK.terms[0])
    with pytest.raises(ValueError, match="no training batches"):
        LinearBaseline("lin", _features).fit(TASK, [], TASK.terms[0])
    # the summed weights of several terms: each key gets its own term's weights
    w = term_weights(TASK.terms[:2], TASK.targets(batches[0]), batches[0])
    assert set(w) == {"vec", "s"} and torch.equal(w["s"], torch.ones_like(w["s"]))
    assert float(w["vec"][0, -1].abs().max()) == 0.0  # padded points weigh nothing


def _scalar_features_batch(b: int, p: int, g: torch.Generator, theta: torch.Tensor, noise: float) -> dict:
    """A scalar target with ``p`` features per sample: few samples per parameter overfit without a ridge."""
    phi = torch.randn(b, p, generator=g, dtype=torch.float64)
    ys = phi @ theta + noise * torch.randn(b, generator=g, dtype=torch.float64)
    return {
        "phi_s": phi,
        "ys": ys,
        "y": torch.zeros(b, 1, 3, dtype=torch.float64),
        "mask": torch.ones(b, 1, dtype=torch.bool),
        "scale": torch.ones(b, dtype=torch.float64),
    }


def test_the_ridge_is_chosen_by_leave_one_batch_out_loss_and_beats_an_overfitted_fit():
    g = torch.Generator().manual_seed(3)
    p, grid = 24, (1e-8, 1e-2, 1.0, 100.0)
    theta = 0.1 * torch.randn(p, generator=g, dtype=torch.float64)  # weak signal, strong noise: shrinkage pays
    train = [_scalar_features_batch(8, p, g, theta, noise=1.0) for _ in range(4)]  # 32 samples for 24 parameters
    test = [_scalar_features_batch(256, p, g, theta, noise=1.0)]
    feats = lambda batch: {"s": batch["phi_s"]}
    term = TASK.terms[1]

    def held_out(base):
        return float(torch.cat([term.fn(base(bt), TASK.targets(bt), bt) for bt in test]).mean())

    chosen = LinearBaseline("lin", feats, ridge=grid).fit(TASK, train, term)
    losses = {lam: chosen.fit_info[f"cv_loss_{lam:g}"] for lam in grid}
    assert chosen.fit_info["ridge_cv"] == 1.0 and chosen.ridge == min(losses, key=losses.get)
    # the validation loss of one candidate, recomputed by refitting on three batches and scoring the fourth
    lam = grid[1]
    direct = 0.0
    for i, left_out in enumerate(train):
        fit = LinearBaseline("lin", feats, ridge=lam).fit(TASK, [b for j, b in enumerate(train) if j != i], term)
        direct += float(term.fn(fit(left_out), TASK.targets(left_out), left_out).sum())
    assert losses[lam] == pytest.approx(direct, rel=1e-9)
    overfitted = LinearBaseline("lin", feats, ridge=1e-8).fit(TASK, train, term)
    assert chosen.ridge > 1e-8 and held_out(chosen) < held_out(overfitted)
    # with one batch there is nothing to validate on: the smallest candidate, and fit_info says so
    single = LinearBaseline("lin", feats, ridge=grid).fit(TASK, train[:1], term)
    assert single.ridge == 1e-8 and single.fit_info["ridge_cv"] == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        LinearBaseline("lin", feats, ridge=(1.0, -1.0))
