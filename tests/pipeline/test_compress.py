"""``compress`` from Python: the config's type picks the method, its sections drive training, data and finish."""

import dataclasses
import json
import shutil

import pytest
import torch

from weightshare.codec import float16_rounded, inspect, load_compressed
from weightshare.core.errors import ConfigError, RunDirError
from weightshare.data.config import DataConfig, DataOverrides
from weightshare.data.datasets import load_data
from weightshare.finish.config import FinishConfig
from weightshare.methods import DCConfig, SWSConfig
from weightshare.models.architectures import build_model
from weightshare.pipeline.compress import compress, refinish, result_warnings, stored_config
from weightshare.pipeline.pretrain import pretrain
from weightshare.train.config import TrainConfig
from weightshare.train.loop import evaluate_model


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


@pytest.fixture(scope="module")
def dc_run(tiny_run):
    """A quick Deep Compression run with float biases and one epoch of codebook fine-tuning."""
    config = DCConfig.preset("digits")
    config = dataclasses.replace(
        config, prune_rounds=1, prune_epochs=1, quant_epochs=1, train=dataclasses.replace(config.train, epochs=2),
        finish=FinishConfig(codebook_epochs=1, codebook_lr=1e-3),
    )  # fmt: skip
    out = tiny_run.parent / "dc"
    compress(tiny_run, config, out, progress=False)
    return out


def _phases(run):
    return [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]


def test_refinish_runs_the_finish_stages_again_on_a_copy(dc_run, tmp_path):
    before = (dc_run / "model.wsz").read_bytes()
    old = json.loads((dc_run / "report.json").read_text())
    finish = FinishConfig(codebook_epochs=1, codebook_lr=1e-3, dense_param_bits=4)
    report = refinish(dc_run, finish, tmp_path / "bits4", progress=False)
    stored = json.loads((tmp_path / "bits4" / "config.json").read_text())
    assert stored["finish"]["dense_param_bits"] == 4 and stored["refinished_from"] == str(dc_run)
    assert (dc_run / "model.wsz").read_bytes() == before  # the run it came from is left as it was
    assert _phases(tmp_path / "bits4") == ["pretrain"] * 4 + ["retrain"] * 2 + ["codebook"]
    # 4-bit biases: each of the MLP's biases costs at most 4 bits plus its table, not a float's bytes.
    assert report["file"]["components"]["biases"] < old["file"]["components"]["biases"] / 2
    assert report["errors"]["retrained"] == old["errors"]["retrained"]  # the same retrained network
    same = refinish(dc_run, FinishConfig(codebook_epochs=1, codebook_lr=1e-3), tmp_path / "again", progress=False)
    assert (tmp_path / "again" / "model.wsz").read_bytes() == before and same["errors"] == old["errors"]


def test_float16_stores_and_evaluates_the_rounded_model(dc_run, tmp_path):
    old = json.loads((dc_run / "report.json").read_text())
    finish = FinishConfig(codebook_epochs=1, codebook_lr=1e-3, float16=True)  # otherwise as dc_run finished
    report = refinish(dc_run, finish, tmp_path / "half", progress=False)
    half = load_compressed(tmp_path / "half" / "model.wsz")
    expected = float16_rounded(load_compressed(dc_run / "model.wsz"))
    assert inspect((tmp_path / "half" / "model.wsz").read_bytes()).float16 is True
    assert all(torch.equal(a, b) for a, b in zip(half.codebooks, expected.codebooks, strict=True))
    assert all(torch.equal(half.dense[n], t) for n, t in expected.dense.items())
    assert report["decoded_equals_quantized"] is True  # the checkpoint holds the rounded model too
    parts, old_parts = report["file"]["components"], old["file"]["components"]
    assert parts["codebooks"] == old_parts["codebooks"] / 2 and parts["biases"] < old_parts["biases"]
    data = load_data(DataConfig(**json.loads((tmp_path / "half" / "config.json").read_text())["data"]))
    assert report["errors"]["decoded"] == evaluate_model(half.load_into(build_model("mlp", 10)), data)


def test_a_finished_run_resumed_keeps_one_set_of_finish_rows(dc_run, tmp_path):
    out = tmp_path / "dc"
    shutil.copytree(dc_run, out)
    compress(dc_run.parent / "pre", stored_config(json.loads((out / "config.json").read_text())), out,
             resume=True, progress=False)  # fmt: skip
    assert _phases(out) == ["pretrain"] * 4 + ["retrain"] * 2 + ["codebook"]
    assert (out / "model.wsz").read_bytes() == (dc_run / "model.wsz").read_bytes()


def test_refinish_refuses_a_retraining_that_has_not_finished(dc_run, tmp_path):
    out = tmp_path / "dc"
    shutil.copytree(dc_run, out)
    stored = json.loads((out / "config.json").read_text())
    stored["train"]["epochs"] = 5
    (out / "config.json").write_text(json.dumps(stored))
    with pytest.raises(RunDirError, match=r"retrained 2 of 5 epochs.*compress dc --out .* --resume"):
        refinish(out, FinishConfig(dense_param_bits=4), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


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
