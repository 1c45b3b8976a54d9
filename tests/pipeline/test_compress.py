"""``compress`` from Python: the config's type picks the method, its sections drive training, data and finish."""

import dataclasses
import json

import pytest

from weightshare.core.errors import ConfigError
from weightshare.data.config import DataConfig, DataOverrides
from weightshare.finish.config import FinishConfig
from weightshare.methods import DCConfig, SWSConfig
from weightshare.pipeline.compress import compress, result_warnings, stored_config
from weightshare.pipeline.pretrain import pretrain
from weightshare.train.config import TrainConfig


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A digits MLP pretrained for 4 epochs."""
    out = tmp_path_factory.mktemp("compress") / "pre"
    pretrain(DataConfig(dataset="digits", batch_size=32), TrainConfig(epochs=4, lr=2e-3), out, progress=False)
    return out


def test_compress_with_a_preset_from_python(tiny_run, tmp_path):
    config = SWSConfig.preset("digits")
    config.train.epochs = 2  # tiny
    config.init_sigma = 0.02  # from the preset's 0.25, two epochs leave no weight (decoded error ~91 %, chance)
    out = tmp_path / "sws"
    report = compress(tiny_run, config, out, progress=False)
    assert (out / "model.wsz").stat().st_size == report["file"]["bytes"] and (out / "report.json").is_file()
    assert report["method"] == "sws" and report["decoded_equals_quantized"] is True
    stored = json.loads((out / "config.json").read_text())
    assert stored["method"] == "sws" and stored["sws"]["tau"] == 3e-2 and stored["train"]["epochs"] == 2
    assert stored["train"]["model"] == "mlp" and stored["finish"]["remove_dead"] is True
    assert stored["data"]["batch_size"] == 32  # the preset's own (the source run also trained at 32)
    assert "dead_weights_removed" in report["method_summary"]
    # Measured over pretraining seeds 0-5: decoded test error 5.6-8.9 %, 32.6-35.5 % non-zero; bounds outside it.
    assert report["errors"]["decoded"]["test_error"] <= 20.0
    assert 0.2 <= report["totals"]["nonzero_fraction"] <= 0.45
    # --resume reads the recipe back; the data settings that ran come back as overrides that give them again
    overrides = DataOverrides(val_size=stored["data"]["val_size"], batch_size=32, shift=stored["data"]["shift"])
    assert stored_config(stored) == dataclasses.replace(config, data=overrides)


def test_data_and_finish_sections_drive_the_run(tiny_run, tmp_path):
    config = DCConfig.preset("digits")
    config = dataclasses.replace(
        config,
        prune_rounds=1,
        prune_epochs=1,
        quant_epochs=1,
        train=dataclasses.replace(config.train, epochs=2),
        data=DataOverrides(batch_size=64),
        finish=FinishConfig(codebook_epochs=1, codebook_lr=1e-3),
    )
    out = tmp_path / "dc"
    report = compress(tiny_run, config, out, progress=False)
    assert json.loads((out / "config.json").read_text())["data"]["batch_size"] == 64
    assert set(report["errors"]) == {"pretrained", "retrained", "pruned", "snapped", "decoded"}
    # Measured over seeds 0-5: decoded test error 5.6-10.8 %; DC keeps exactly its preset's fractions.
    assert report["errors"]["decoded"]["test_error"] <= 16.0
    assert report["totals"]["nonzero_fraction"] == pytest.approx(0.3, abs=0.002)
    phases = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert phases == ["pretrain"] * 4 + ["retrain"] * 2 + ["codebook"]


def test_bad_configs_are_refused_before_any_work(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="not a method's config: TrainConfig"):
        compress(tiny_run, TrainConfig(), tmp_path / "x")
    with pytest.raises(ConfigError, match="setting 'codebook_lr' must be > 0"):
        compress(tiny_run, SWSConfig(finish=FinishConfig(codebook_lr=0.0)), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_source_runs_shift_is_inherited_unless_overridden(tmp_path):
    source = tmp_path / "pre"
    pretrain(DataConfig(dataset="digits", batch_size=32, shift=1), TrainConfig(epochs=1), source, progress=False)
    assert json.loads((source / "config.json").read_text())["data"]["shift"] == 1
    config = DCConfig.preset("digits")
    config = dataclasses.replace(config, prune_rounds=1, prune_epochs=1, quant_epochs=0)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1))
    for overrides, expected in ((DataOverrides(), 1), (DataOverrides(shift=0), 0)):
        out = tmp_path / f"dc{expected}"
        compress(source, dataclasses.replace(config, data=overrides), out, progress=False)
        stored = json.loads((out / "config.json").read_text())
        assert stored["data"]["shift"] == expected
        assert stored_config(stored).data.shift == expected  # --resume trains on what ran, not the source's


def test_the_assignment_gap_warning_says_whether_the_zeros_lost_it():
    errors = {"retrained": {"test_error": 1.65}, "pruned": {"test_error": 22.34}, "decoded": {"test_error": 26.1}}
    report = {"totals": {"weights": 10, "nnz": 3}, "errors": errors}
    (warning,) = result_warnings(report, 10, "narrow the zero spike")
    assert warning["kind"] == "assignment_gap"
    assert warning["message"] == (
        "the decoded test error 26.10% is far above the retrained 1.65% (with only the weights assigned to zero "
        "set to zero, the trained network is at 22.34%): narrow the zero spike"
    )
