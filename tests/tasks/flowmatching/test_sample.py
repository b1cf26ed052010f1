"""tasks.flowmatching.sample: from a fresh model config, a harness-format checkpoint and a run directory."""

from __future__ import annotations

from pathlib import Path

import gemmi
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[3]


def _script():
    from tasks.flowmatching import sample

    return sample


def _ca_count(path: Path) -> int:
    st = gemmi.read_structure(str(path))
    return sum(1 for r in st[0][0] for a in r if a.name == "CA")


def test_sampling_from_a_fresh_model(tmp_path):
    paths = _script().main(["--model", "proteina_tiny", "--lengths", "25", "40", "--steps", "3", "--out", str(tmp_path)])
    assert [p.name for p in paths] == ["sample_000_len25.pdb", "sample_001_len40.pdb"]
    assert [_ca_count(p) for p in paths] == [25, 40]


def test_sampling_from_a_checkpoint_uses_the_ema_weights(tmp_path):
    from tasks.flowmatching.models.proteina import ProteinaTransformer

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "proteina_tiny.yaml"))
    torch.manual_seed(0)
    model = ProteinaTransformer(**{k: v for k, v in cfg.items() if k != "_target_"})
    ema = {k: v + 0.01 for k, v in model.state_dict().items()}
    ckpt = tmp_path / "last.pt"
    torch.save({"step": 7, "model": model.state_dict(), "ema": ema, "config": {"model": cfg}}, ckpt)
    script = _script()
    loaded = script.load_model(str(ckpt), None, "ema")
    assert torch.equal(loaded.coords_out.weight, ema["coords_out.weight"])
    assert torch.equal(script.load_model(str(ckpt), None, "model").coords_out.weight, model.coords_out.weight)
    (path,) = script.main(
        ["--checkpoint", str(ckpt), "--lengths", "30", "--steps", "2", "--self-conditioning", "--out", str(tmp_path / "s")]
    )
    assert _ca_count(path) == 30
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt.rename(run / "checkpoints" / "last.pt")
    (path,) = script.main(["--run-dir", str(run), "--lengths", "12", "--steps", "2", "--out", str(tmp_path / "r")])
    assert _ca_count(path) == 12
