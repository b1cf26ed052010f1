"""scripts/analyze.py end to end on a tiny force-field run trained here (small SPICE-format file of water and
methanol written by the test, escaip_tiny, 6 steps, decomposition every 2 steps, snapshot at step 4)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from equivrepro.analysis import (
    Landscape,
    SubsetLosses,
    hessian_spectrum,
    loss_landscape,
)
from equivrepro.train.app import compose_config
from equivrepro.train.loop import train
from equivrepro.train.restore import load_run
from tests.tasks.forcefield.files import standard_groups, write_spice

ROOT = Path(__file__).resolve().parents[1]
# vmap's per-op fallback notice for the force field's index_copy_ scatter: slower, not wrong
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def _load_script():
    spec = importlib.util.spec_from_file_location("analyze_script", ROOT / "scripts" / "analyze.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["analyze_script"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


analyze = _load_script()


def _overrides(tmp: Path, *extra: str) -> list[str]:
    return [
        "experiment=forcefield_smoke", f"paths.runs_dir={tmp / 'runs'}", f"data.path={tmp / 'tiny.h5'}", "data.generate=null",
        "data.heldout_size=3", "trainer.max_steps=6", "trainer.batch_size=4", "equivariance.every=2", "equivariance.num_samples=6",
        "equivariance.grad_norms=true", "trainer.snapshot_steps=[4]",
        # plain xavier on the direction head and a tiny learning rate keep the model near an initialisation
        # where most of the force loss is equivariance error, so the twirling check below can tell K apart
        "model.force_head_gain=1.0", "optim.lr=1e-5", *extra,
    ]


def _train(tmp: Path, *extra: str) -> Path:
    if not (tmp / "tiny.h5").exists():
        write_spice(tmp / "tiny.h5", standard_groups(n_molecules=10, m=3))
    cfg = compose_config(_overrides(tmp, *extra) + ["logger=none", "trainer.progress_bar=false"])
    return Path(train(cfg)["run_dir"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("analyze")
    return tmp, _train(tmp)


@pytest.fixture(scope="module")
def full_summary(tiny_run) -> tuple[dict, Path]:
    tmp, run_dir = tiny_run
    out = tmp / "out"
    rc = analyze.main(["--run-dir", str(run_dir), "--step", "4", "--out", str(out), "--device", "cpu", "--grid-n", "6",
                       "--twirl-draws", "12", "--reference-k", "24", "--points-per-call", "12"])
    assert rc == 0
    text = (out / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))  # strict JSON
    return summary, out


def test_overrides_resolve_to_the_trainers_run_dir(tiny_run):
    tmp, run_dir = tiny_run
    assert analyze.resolve_run_dir(None, _overrides(tmp)) == run_dir
    # a different config is a different run
    assert analyze.resolve_run_dir(None, _overrides(tmp, "seed=1")) != run_dir


def test_missing_snapshot_names_the_available_ones(tiny_run):
    _, run_dir = tiny_run
    with pytest.raises(SystemExit, match="step_00000004.pt"):
        analyze.main(["--run-dir", str(run_dir), "--step", "3", "--analyses", "twirl"])


def test_spectrum_condition_numbers_are_finite(full_summary):
    s, out = full_summary
    assert s["step"] == 4 and s["checkpoint"] == "checkpoints/step_00000004.pt"
    sp = s["spectrum"]
    assert sp["method"] == "exact" and sp["n_params"] == 99 and s["params"] == "force_head.out"
    for loss in ("mean", "equiv"):
        c = sp[loss]
        assert c["n_resolved"] == 99 and c["n_positive"] >= 1
        assert math.isfinite(c["kappa"]) and c["kappa"] >= 1.0
        assert c["lambda_max"] >= c["lambda_min_pos"] > 0
        assert c["n_negative"] == 0  # the plug-in losses are convex in a linear head
    assert sp["kappa_ratio_mean_over_equiv"] == pytest.approx(sp["mean"]["kappa"] / sp["equiv"]["kappa"], rel=1e-12)
    assert (out / "spectrum.csv").stat().st_size > 0


def test_landscape_centre_is_the_checkpoint(full_summary, tiny_run):
    s, out = full_summary
    _, run_dir = tiny_run
    la = s["landscape"]
    # the same held-out set as the training-time evaluation: the logged (float32) plug-in values of step 4
    logged = s["logged_at_step"]
    assert s["held_out"]["matches_training_eval"]
    assert la["centre"]["mean"] == pytest.approx(logged["mean_plugin"], rel=1e-4)
    assert la["centre"]["equiv"] == pytest.approx(logged["equiv_plugin"], rel=1e-4)
    # … and recomputed here from the snapshot's EMA weights
    run = load_run(run_dir, weights="ema", checkpoint=run_dir / "checkpoints" / "step_00000004.pt")
    run.model.double()
    held = analyze.build_held_out(run, analyze.parse_args(["--run-dir", str(run_dir)]), torch.device("cpu"), torch.float64)
    own = SubsetLosses(run.model, run.task, held.batches, held.rotations, "force_head.out", estimator="plugin").evaluate()
    assert la["centre"]["mean"] == pytest.approx(float(own["mean"]), rel=1e-10)
    assert la["centre"]["equiv"] == pytest.approx(float(own["equiv"]), rel=1e-10)
    # both losses are exact quadratics in a linear head: perfect fits whose constant is the centre value
    land = Landscape.load(out / "landscape.pt")
    assert land.own("equiv").shape == (6, 6)
    for loss in ("mean", "equiv"):
        assert la[loss]["r2"] > 1 - 1e-9
        assert land.stats[loss][loss]["c"] == pytest.approx(la["centre"][loss], rel=1e-8)
        assert la[loss]["c_yy_max_axis"] == pytest.approx(la[loss]["lambda_max"] / 2, rel=1e-6)


def test_linear_head_slope_is_two(full_summary):
    lh = full_summary[0]["linear_head"]
    assert lh["head"] == "force_head.out"
    assert lh["slope"] == pytest.approx(2.0, abs=1e-6) and lh["r2"] > 1 - 1e-9
    assert lh["l_equiv_at_alpha_1"] > 0


def test_twirl_mse_follows_l_mean_plus_l_equiv_over_k(full_summary):
    tw = full_summary[0]["twirl"]
    table = {r["k"]: r for r in tw["table"]}
    assert sorted(table) == [1, 2, 4, 8, 16]
    for k, r in table.items():
        assert r["predicted"] == pytest.approx(tw["l_mean"] + tw["l_equiv"] / k, rel=1e-9)
        assert abs(r["mse"] - r["predicted"]) <= 4 * r["diff_se"] + 1e-12, (k, r)
    # the check can fail: ignoring K (no twirling) would miss the prediction at K = 16 by 15/16 L_equiv,
    # far more than the tolerance used above
    assert 15 / 16 * tw["l_equiv"] > 4 * (table[1]["diff_se"] + table[16]["diff_se"])
    assert table[16]["mse"] < table[2]["mse"] < table[1]["mse"]


def test_gradient_ratio_and_figures(full_summary):
    s, out = full_summary
    g = s["gradient_ratio"]
    assert g["metric"] == "equiv/forces/grad_norm_ratio" and g["n"] == 4  # evaluations at steps 0, 2, 4, 6
    assert -1 <= g["pearson_r"] <= 1 and -1 <= g["spearman_rho"] <= 1
    for stem in ("landscape", "linear_head", "twirl", "gradient_ratio"):
        for ext in ("png", "pdf", "csv"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext}"


def test_vmapped_landscape_equals_point_by_point(tiny_run):
    _, run_dir = tiny_run
    run = load_run(run_dir)
    run.model.double()
    held = analyze.build_held_out(run, analyze.parse_args(["--run-dir", str(run_dir), "--num-samples", "3"]), torch.device("cpu"), torch.float64)
    losses = SubsetLosses(run.model, run.task, held.batches, held.rotations, "force_head.out", estimator="plugin")
    spectra = {"equiv": hessian_spectrum(losses, "equiv")}
    a = loss_landscape(losses, n=3, step=0.01, sources=("equiv",), spectra=spectra, points_per_call=1)
    b = loss_landscape(losses, n=3, step=0.01, sources=("equiv",), spectra=spectra, points_per_call=4)  # 4 + 4 + 1 points
    for name in ("mean", "equiv", "total"):
        torch.testing.assert_close(a.surfaces["equiv"][name], b.surfaces["equiv"][name], rtol=1e-12, atol=0)


def test_missing_head_and_grad_norms_are_skipped_with_a_reason(tmp_path, capsys):
    run_dir = _train(tmp_path, "equivariance.linear_head=null", "equivariance.grad_norms=false", "trainer.max_steps=2",
                     "equivariance.every=1", "trainer.snapshot_steps=[]")
    rc = analyze.main(["--run-dir", str(run_dir), "--analyses", "linear-head,gradient-ratio", "--out", str(tmp_path / "o")])
    assert rc == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert "equivariance.linear_head" in s["linear_head"]["skipped"]
    assert "grad_norms" in s["gradient_ratio"]["skipped"]
    assert not (tmp_path / "o" / "linear_head.png").exists() and not (tmp_path / "o" / "gradient_ratio.png").exists()
    assert "skipped" in capsys.readouterr().out
