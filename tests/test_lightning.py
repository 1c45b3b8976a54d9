"""weightshare.lightning: WeightshareCallback under ``Trainer(accelerator="cpu", devices=2, strategy="ddp")``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

WORKER = Path(__file__).with_name("lightning_ddp.py")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, run_python) -> Path:
    """The worker run as ``python lightning_ddp.py OUT``; Lightning's DDP starts the second process."""
    out = tmp_path_factory.mktemp("lightning")
    done = run_python(str(WORKER), str(out), cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sws", "pwfn"])
def test_ranks_stay_identical_after_every_step(fitted, method):
    # 512 examples, 32 per rank and step, 2 ranks: 8 steps an epoch, 2 epochs.
    assert json.loads((fitted / f"{method}.json").read_text()) == {"steps": 16, "differ": [], "world": 2}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sws", "pwfn"])
def test_rank_zero_writes_the_file_and_its_report(fitted, method):
    from weightshare import load_compressed, load_quantized

    out = fitted / method
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == method and report["decoded_equals_quantized"] is True
    assert report["file"]["bytes"] == (out / "model.wsz").stat().st_size
    decoded, quantized = load_compressed(out / "model.wsz"), load_quantized(out / "quantized.safetensors")
    for name, tensor in quantized.to_state_dict().items():
        assert torch.equal(decoded.to_state_dict()[name], tensor), name
    assert decoded.codebooks[0][0].item() == 0.0 and decoded.unique_values() <= 64
    records = {"sws": "mixture_final.json", "pwfn": "pwfn_rounds.json"}[method]
    assert (out / records).is_file() and not (out / "summary.json").exists()


def test_distillation_is_refused_with_the_way_to_add_it_in_training_step(tmp_path):
    from weightshare import DistillConfig, SWSConfig
    from weightshare.core.errors import ConfigError
    from weightshare.lightning import WeightshareCallback

    config = SWSConfig(distill=DistillConfig(kd_temp=2.0))
    with pytest.raises(ConfigError, match=r"'kd_temp' \(section \[distill\]\).*Distillation\(model"):
        WeightshareCallback(config, tmp_path / "out", n_train=100)
    assert WeightshareCallback(SWSConfig(), tmp_path / "out", n_train=100).config.distill.kd_temp == 0
