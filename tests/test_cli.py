"""The command line end to end on the built-in digits data."""

import json

import pytest
import torch

from weightshare.cli import main
from weightshare.core.io import load_tensors


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "pre"
    assert main(["pretrain", "--preset", "digits", "--epochs", "6", "--out", str(out), "--quiet"]) == 0
    return out


def test_pretrain_writes_a_run_directory(pretrained):
    for name in ("config.json", "env.json", "metrics.csv", "model.safetensors", "checkpoints/last.safetensors"):
        assert (pretrained / name).is_file(), name
    config = json.loads((pretrained / "config.json").read_text())
    assert config["train"]["epochs"] == 6 and config["data"]["dataset"] == "digits"
    assert config["train"]["lr_schedule"] == "cosine"  # from the preset
    env = json.loads((pretrained / "env.json").read_text())
    assert env["torch"] == torch.__version__
    assert len((pretrained / "metrics.csv").read_text().splitlines()) == 7


def test_compress_sws_end_to_end(pretrained, tmp_path, capsys):
    out = tmp_path / "sws"
    args = ["compress", "--method", "sws", "--from", str(pretrained), "--out", str(out), "--epochs", "3", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "decoded from model.wsz" in printed and "paper-style" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["file"]["bytes"] == (out / "model.wsz").stat().st_size
    assert report["decoded_equals_quantized"] is True
    assert report["errors"]["pretrained"]["test_error"] < 10
    removed = report["method_summary"]["dead_weights_removed"]  # remove_dead is on by default
    assert set(removed) == {layer["name"] for layer in report["layers"]} and min(removed.values()) >= 0
    assert main(["evaluate", str(out / "model.wsz")]) == 0
    evaluated = capsys.readouterr().out
    assert f"test error {report['errors']['decoded']['test_error']:.2f}%" in evaluated
    # the pretraining rows are kept in front of the retraining rows
    phases = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert phases == ["pretrain"] * 6 + ["retrain"] * 3
    assert len(list((out / "mixture_epochs").glob("epoch_*.json"))) == 3


def test_encode_decode_inspect(pretrained, tmp_path, capsys):
    out = tmp_path / "sws"
    main(["compress", "--method", "sws", "--from", str(pretrained), "--out", str(out), "--epochs", "1", "--quiet"])
    capsys.readouterr()
    assert main(["encode", str(out), "--out", str(tmp_path / "again.wsz")]) == 0
    assert (tmp_path / "again.wsz").read_bytes() == (out / "model.wsz").read_bytes()  # deterministic
    assert main(["decode", str(out / "model.wsz"), "--out", str(tmp_path / "w.safetensors")]) == 0
    weights = load_tensors(tmp_path / "w.safetensors")
    assert set(weights) == set(load_tensors(out / "model_final.safetensors"))
    capsys.readouterr()
    assert main(["inspect", str(out / "model.wsz")]) == 0
    table = capsys.readouterr().out
    assert "net.0.weight" in table and "CR_all" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-1"], "setting 'lr' must be > 0"),
        (["--epochs", "-2"], "setting 'epochs' must be >= 0"),
        (["--batch-size", "0"], "setting 'batch_size' must be >= 1"),
        (["--optimizer", "sgd", "--momentum", "1.5"], "setting 'momentum' must be < 1"),
    ],
)
def test_bad_settings_fail_before_work(tmp_path, capsys, argv, message):
    code = main(["pretrain", "--preset", "digits", "--out", str(tmp_path / "x"), "--quiet", *argv])
    assert code in (1, 2)
    assert message in capsys.readouterr().err


def test_bad_sws_settings(pretrained, tmp_path, capsys):
    for argv, message in (
        (["--pi0", "1.5"], "pi0"),
        (["--num-components", "1"], "num_components"),
        (["--tau", "-1"], "tau"),
        (["--cover-pattern", "nothing_matches"], "matches no parameter"),
    ):
        code = main(
            ["compress", "--method", "sws", "--from", str(pretrained), "--out", str(tmp_path / "y"), "--quiet", *argv]
        )
        assert code in (1, 2), argv
        assert message in capsys.readouterr().err, argv


def test_existing_output_is_refused(pretrained, capsys):
    assert main(["pretrain", "--preset", "digits", "--out", str(pretrained), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_compress_val_size_zero_retrains_on_every_training_image(mnist_dir, tmp_path):
    pre, out = tmp_path / "pre", tmp_path / "sws"
    common = ["--data-dir", str(mnist_dir), "--epochs", "1", "--quiet"]
    assert main(["pretrain", "--model", "lenet300", "--dataset", "mnist", "--out", str(pre), *common]) == 0
    assert main(["compress", "--method", "sws", "--from", str(pre), "--out", str(out), "--val-size", "0", *common]) == 0
    assert json.loads((pre / "config.json").read_text())["data"]["val_size"] == 5000
    assert json.loads((out / "config.json").read_text())["data"]["val_size"] == 0
    report = json.loads((out / "report.json").read_text())
    # No validation split: its error is absent (null), never a made-up 0%.
    assert report["errors"]["decoded"]["val_error"] is None and report["errors"]["retrained"]["val_error"] is None
    assert 0 < report["errors"]["retrained"]["test_error"] < 20  # one epoch is too short to quantize well
    last = (out / "metrics.csv").read_text().splitlines()[-1].split(",")
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert last[header.index("val_error")] == "nan"
