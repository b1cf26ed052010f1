"""The checkpoint analysis of the degree spectrum: with the run's own held-out set it reproduces what the run logged at
that step (spectrum, attribution, angle curve); with a larger K it still partitions L_equiv; the CLI writes it all."""

from __future__ import annotations

import json
import math

import pytest

from equivrepro.analysis.degree_spectrum import degree_spectrum_analysis, main
from equivrepro.analysis.heldout import freeze_heldout
from equivrepro.metrics import keys
from equivrepro.runs import RunDir
from equivrepro.train.app import compose_config
from equivrepro.train.loop import train
from equivrepro.train.restore import load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    out = train(
        compose_config(
            [
                "task=points",
                "logger=none",
                "trainer.progress_bar=false",
                f"paths.runs_dir={tmp}",
                "equivariance.spectrum_l_max=3",
                "trainer.snapshot_steps=[20]",
            ]
        )
    )
    return out["run_dir"]


def _logged(run_dir, step: int) -> dict[str, float]:
    return {m: v for s, m, v in RunDir(run_dir).read_metrics() if s == step}


def _heldout(run, **change):
    e = run.config.equivariance
    use = {"num_samples": e.num_samples, "k": e.k, "batch_size": e.batch_size, "seed": e.seed} | change
    return freeze_heldout(
        run.task, run.datamodule.heldout_dataset, run.datamodule.collate, use["num_samples"], use["k"], use["batch_size"], use["seed"]
    )


@pytest.mark.parametrize("step", [None, 20])
def test_the_runs_own_held_out_set_reproduces_the_logged_values(run_dir, step):
    run = load_run(run_dir, checkpoint=step)
    assert run.step == (step or 40)
    # the callback's angle curve: 2 rotations per sample from seed equivariance.seed + 2 (logged at the last step only)
    res = degree_spectrum_analysis(run, _heldout(run), l_max=3, angle_rotations=2, seed=int(run.config.equivariance.seed) + 2)
    logged = _logged(run_dir, run.step)
    compared = 0
    for name, v in res["metrics"].items():
        family = keys.parse(name).family
        if family in (keys.SPECTRUM, keys.ATTRIBUTION, keys.ANGLE) and name in logged and v is not None:
            assert math.isclose(v, logged[name], rel_tol=1e-6, abs_tol=1e-12), name
            compared += 1
    wanted = (keys.SPECTRUM, keys.ANGLE, keys.ATTRIBUTION)
    fams = {keys.parse(m).family for m in logged if keys.parse(m) is not None and keys.parse(m).family in wanted}
    assert fams == ({keys.SPECTRUM, keys.ATTRIBUTION, keys.ANGLE} if step is None else {keys.SPECTRUM, keys.ATTRIBUTION})
    assert compared >= (60 if step is None else 30)
    entry = res["suffixes"][""]["terms"]["mse"]
    assert math.isclose(entry["pct"], logged["equiv/mse/pct"], rel_tol=1e-6)


def test_a_larger_k_partitions_l_equiv_and_is_json_ready(run_dir, tmp_path):
    run = load_run(run_dir)
    res = degree_spectrum_analysis(run, _heldout(run, k=30), l_max=6, angle_rotations=3, out=tmp_path)
    assert res["k"] == 30 and res["l_max"] == 6 and res["step"] == 40
    assert res["removed_degrees"] == {"cube": [1, 2, 3, 5], "icosahedral": [1, 2, 3, 4, 5]}
    spec = res["suffixes"][""]["terms"]["mse"]["spectrum"]
    assert list(spec["degrees"]) == ["1", "2", "3", "4", "5", "6"] and spec["k"] == 30
    total = sum(d["share_of_equiv"] for d in spec["degrees"].values()) + spec["remainder_share_of_equiv"]
    assert math.isclose(total, 1.0, rel_tol=1e-9)
    assert "spectrum" not in res["suffixes"][""]["terms"]["l2mae"]  # not quadratic: no spectrum
    shares = res["suffixes"][""]["terms"]["mse"]["attribution"]["descriptors"]["centroid_distance"]
    assert math.isclose(sum(b["share"] for b in shares.values()), 1.0, rel_tol=1e-9)
    angle = res["suffixes"][""]["terms"]["mse"]["angle"]
    assert angle["degrees"][-1] == 180.0 and all(m > 0 for m in angle["measured"])
    written = json.loads((tmp_path / "degree_spectrum.json").read_text())
    assert written["suffixes"] == res["suffixes"] and not res["figures_skipped"]
    for stem in ("spectrum", "angle", "attribution"):
        for ext in ("png", "pdf", "csv"):
            assert (tmp_path / f"{stem}.{ext}").stat().st_size > 0, (stem, ext)


def test_the_command_line(run_dir, tmp_path, capsys):
    assert main(["--run-dir", str(run_dir), "--out", str(tmp_path), "--k", "12", "--step", "20", "--angle-rotations", "1"]) == 0
    text = capsys.readouterr().out
    assert "[spectrum] step 20 - mse: pct" in text and "l=3:" in text and "K = 12" in text
    res = json.loads((tmp_path / "degree_spectrum.json").read_text())
    assert res["k"] == 12 and res["step"] == 20 and res["l_max"] == 3  # the run's equivariance.spectrum_l_max
    with pytest.raises(SystemExit, match="no such run directory"):
        main(["--run-dir", str(tmp_path / "nope"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not among"):
        main(["--run-dir", str(run_dir), "--out", str(tmp_path), "--eval-suffix", "t=0.5"])
