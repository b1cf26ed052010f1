"""``equivrepro-analyze`` (:mod:`equivrepro.analysis.report`) end to end on a tiny force-field run trained here (small
SPICE-format file of water and methanol written by the test, escaip_tiny, 6 steps, decomposition every 2 steps,
snapshot at step 4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equivrepro.analysis import Landscape, SubsetLosses, hessian_spectrum, loss_landscape
from equivrepro.analysis import report as analyze
from equivrepro.analysis.structure import EQUAL, NOT_TIED
from equivrepro.metrics import keys
from equivrepro.runs import RunDir
from equivrepro.train.app import compose_config
from equivrepro.train.loop import train
from equivrepro.train.restore import load_run
from tests.tasks.forcefield.files import standard_groups, write_spice

ROOT = Path(__file__).resolve().parents[2]
# vmap's per-op fallback notice for the force field's index_copy_ scatter: slower, not wrong
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")

HEAD = "force_head.out"  # EScAIP's linear direct-force head (3 × 32 + 3 = 99 parameters)
TRUNK = "force_head.ffn"  # the FFN in front of it: not structurally tied
SMALL = [
    "--device",
    "cpu",
    "--grid-n",
    "4",
    "--redrawn-grid-n",
    "3",
    "--centre-draws",
    "3",
    "--lanczos-steps",
    "12",
    "--slq-probes",
    "2",
    "--structure-steps",
    "16",
    "--bootstrap",
    "200",
]


def _overrides(tmp: Path, *extra: str) -> list[str]:
    return [
        "experiment=forcefield_smoke",
        f"paths.runs_dir={tmp / 'runs'}",
        f"data.path={tmp / 'tiny.h5'}",
        "data.generate=null",
        "data.heldout_size=3",
        "trainer.max_steps=6",
        "trainer.batch_size=4",
        "equivariance.every=2",
        "equivariance.log_points=0",
        "equivariance.num_samples=6",
        "equivariance.grad_norms=true",
        "trainer.snapshot_steps=[4]",
        # plain xavier on the direction head and a tiny learning rate keep the model near an initialisation
        # where most of the force loss is equivariance error, so the twirling check below can tell K apart
        "model.force_head_gain=1.0",
        "optim.lr=1e-5",
        *extra,
    ]


def _train(tmp: Path, *extra: str) -> Path:
    if not (tmp / "tiny.h5").exists():
        write_spice(tmp / "tiny.h5", standard_groups(n_molecules=10, m=3))
    cfg = compose_config(_overrides(tmp, *extra) + ["logger=none", "trainer.progress_bar=false"])
    return Path(train(cfg)["run_dir"])


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))  # strict JSON


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("analyze")
    return tmp, _train(tmp)


@pytest.fixture(scope="module")
def full_summary(tiny_run) -> tuple[dict, Path]:
    tmp, run_dir = tiny_run
    out = tmp / "out"
    rc = analyze.main(
        [
            "--run-dir",
            str(run_dir),
            "--step",
            "4",
            "--out",
            str(out),
            "--params",
            HEAD,
            "--twirl-draws",
            "12",
            "--reference-k",
            "24",
            "--points-per-call",
            "8",
            *SMALL,
        ]
    )
    assert rc == 0
    return _summary(out), out


def test_overrides_resolve_to_the_trainers_run_dir(tiny_run):
    tmp, run_dir = tiny_run
    assert analyze.resolve_run_dir(None, _overrides(tmp)).path == run_dir.resolve()
    # a different config is a different run
    assert analyze.resolve_run_dir(None, _overrides(tmp, "seed=1")).path != run_dir.resolve()
    with pytest.raises(SystemExit, match="not both"):
        analyze.resolve_run_dir(run_dir, ["seed=0"])


def test_missing_snapshot_names_the_available_ones(tiny_run):
    _, run_dir = tiny_run
    with pytest.raises(SystemExit, match="step_00000004.pt"):
        analyze.main(["--run-dir", str(run_dir), "--step", "3", "--analyses", "twirl"])


def test_the_head_is_structurally_equal_and_its_kappa_ratio_is_not_reported(full_summary):
    s, out = full_summary
    assert s["step"] == 4 and s["checkpoint"] == "checkpoints/step_00000004.pt" and s["params"] == HEAD
    sp = s["spectrum"]
    assert sp["n_params"] == 99 and sp["structure"]["verdict"] == EQUAL and sp["structure"]["method"] == "cube-exact"
    for form in ("hessian", "ggn"):
        f = sp["forms"][form]
        assert f["method"] == "exact" and f["kappa_ratio_mean_over_equiv"] is None
        for loss in ("mean", "equiv"):
            c = f[loss]["condition"]
            assert c["n_values"] == 99 and c["n_resolved_negative"] == 0  # plug-in losses and the GGN: PSD on a linear head
            assert c["kappa"] >= 1 and c["n_resolved_positive"] >= 1
            assert f[loss]["density"]["n"] == 99 and 1 <= f[loss]["density"]["entropy_rank"] <= 99
    # a linear head: the GGN is the Hessian of the plug-in losses
    for loss in ("mean", "equiv"):
        h, g = (sp["forms"][form][loss]["top_eigenvalues"][0]["eigenvalue"] for form in ("hessian", "ggn"))
        assert g == pytest.approx(h, rel=1e-8)
    for stem in ("spectral_density", "top_eigenvalues"):
        for ext in ("png", "pdf", "csv"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0
    assert (out / "spectrum.csv").stat().st_size > 0


def test_a_trunk_block_is_not_tied_and_gets_a_kappa_ratio(tiny_run):
    tmp, run_dir = tiny_run
    out = tmp / "trunk"
    assert (
        analyze.main(
            [
                "--run-dir",
                str(run_dir),
                "--out",
                str(out),
                "--analyses",
                "spectrum",
                "--params",
                TRUNK,
                "--forms",
                "ggn",
                "--exact-max",
                "0",
                *SMALL,
            ]
        )
        == 0
    )
    sp = _summary(out)["spectrum"]
    assert sp["structure"]["verdict"] == NOT_TIED and sp["structure"]["method"] == "cube-lanczos"
    f = sp["forms"]["ggn"]
    assert f["method"] == "lanczos" and f["mean"]["density"]["probes"] == 2
    assert f["mean"]["condition"]["n_resolved_negative"] == 0 and f["kappa_ratio_mean_over_equiv"] > 0


def test_landscapes_frozen_at_the_checkpoint_and_redrawn(full_summary, tiny_run):
    s, out = full_summary
    _, run_dir = tiny_run
    la = s["landscape"]
    # the same held-out set as the training-time evaluation: the logged (float32) plug-in values of step 4
    logged = s["logged_at_step"]
    assert s["held_out"]["matches_training_eval"]
    assert la["centre"]["mean"] == pytest.approx(logged["mean_plugin"], rel=1e-4)
    assert la["centre"]["equiv"] == pytest.approx(logged["equiv_plugin"], rel=1e-4)
    # both losses are exact quadratics in a linear head: perfect frozen fits whose constant is the centre value
    land = Landscape.load(out / "landscape.pt")
    assert land.own("equiv").shape == (4, 4)
    for loss in ("mean", "equiv"):
        assert la["frozen"][loss]["r2"] > 1 - 1e-9
        assert land.stats[loss][loss]["c"] == pytest.approx(la["centre"][loss], rel=1e-8)
        assert la["frozen"][loss]["c_yy_max_axis"] == pytest.approx(la["frozen"][loss]["lambda_max"] / 2, rel=1e-6)
    # redrawn: new samples, noise and rotations at every point — noisy, so no longer a perfect quadratic
    rd = la["redrawn"]
    assert rd["n"] == 3 and Landscape.load(out / "landscape_redrawn.pt").config["redrawn"]
    for loss in ("mean", "equiv"):
        assert rd["noise_sd"][loss] > 0 and rd[loss]["r2"] < la["frozen"][loss]["r2"]
    for ext in ("png", "pdf", "csv"):
        assert (out / f"landscape_frozen_redrawn.{ext}").stat().st_size > 0


def test_head_deviation_against_l_equiv_over_training(full_summary, tiny_run):
    s, out = full_summary
    _, run_dir = tiny_run
    hd = s["head_deviation"]
    assert hd["x"] == keys.scalar_key(keys.HEAD, "deviation") and hd["y"] == keys.key(keys.EQUIV, "forces", "equiv")
    assert hd["n"] == 4  # evaluations at steps 0, 2, 4, 6
    assert -1 <= hd["pearson_r"] <= 1 and -1 <= hd["spearman_rho"] <= 1
    lo, hi = hd["bootstrap"]["pearson_r_ci"]
    assert -1 <= lo <= hi <= 1
    assert keys.scalar_key(keys.HEAD, "row_variance") in hd["by_metric"]
    for ext in ("png", "pdf", "csv"):
        assert (out / f"head_deviation.{ext}").stat().st_size > 0
    assert "linear_head" not in s  # the α² identity is a unit test, not a finding


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
    assert g["metric"] == keys.key(keys.EQUIV, "forces", "grad_norm_ratio") and g["n"] == 4  # evaluations at steps 0, 2, 4, 6
    assert -1 <= g["pearson_r"] <= 1 and -1 <= g["spearman_rho"] <= 1
    for stem in ("landscape", "twirl", "gradient_ratio"):
        for ext in ("png", "pdf", "csv"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext}"


def test_vmapped_landscape_equals_point_by_point(tiny_run):
    _, run_dir = tiny_run
    run = load_run(run_dir)
    run.model.double()
    args = analyze.parse_args(["--run-dir", str(run_dir), "--num-samples", "3"])
    _, _, batches, rotations, _ = analyze.held_out_for(run, args, torch.device("cpu"), torch.float64, None)
    losses = SubsetLosses(run.model, run.task, batches, rotations, HEAD, estimator="plugin")
    spectra = {"equiv": hessian_spectrum(losses, "equiv")}
    a = loss_landscape(losses, n=3, step=0.01, sources=("equiv",), spectra=spectra, points_per_call=1)
    b = loss_landscape(losses, n=3, step=0.01, sources=("equiv",), spectra=spectra, points_per_call=4)  # 4 + 4 + 1 points
    for name in ("mean", "equiv", "total"):
        torch.testing.assert_close(a.surfaces["equiv"][name], b.surfaces["equiv"][name], rtol=1e-12, atol=0)


def test_missing_head_and_grad_norms_are_skipped_with_a_reason(tmp_path, capsys):
    run_dir = _train(
        tmp_path,
        "equivariance.linear_head=null",
        "equivariance.grad_norms=false",
        "trainer.max_steps=2",
        "equivariance.every=1",
        "equivariance.log_points=0",
        "trainer.snapshot_steps=[]",
    )
    rc = analyze.main(["--run-dir", str(run_dir), "--analyses", "head-deviation,gradient-ratio", "--out", str(tmp_path / "o")])
    assert rc == 0
    s = _summary(tmp_path / "o")
    assert "equivariance.linear_head" in s["head_deviation"]["skipped"]
    assert "grad_norms" in s["gradient_ratio"]["skipped"]
    assert not (tmp_path / "o" / "head_deviation.png").exists() and not (tmp_path / "o" / "gradient_ratio.png").exists()
    assert "skipped" in capsys.readouterr().out
    assert RunDir(run_dir).is_finished()


def test_the_script_is_a_thin_entry_point():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "analyze.py"), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "equivrepro-analyze" in res.stdout and "--redrawn-grid-n" in res.stdout
