"""The command line end to end on the built-in digits data."""

import json
import shutil

import pytest
import torch

from weightshare.cli import build_parser, main, resolve_method_config
from weightshare.core.errors import ConfigError
from weightshare.core.io import load_tensors
from weightshare.methods import CONFIGS, DCConfig, PWFNConfig, SWSConfig
from weightshare.pipeline.compress import stored_config


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
    # The whole digits preset (150 epochs, ~7 s; the one `weightshare demo` runs): a shorter run assigns every
    # weight to the zero spike (3 epochs: decoded test error 90.6-91.7 %, no weight left, over seeds 0-5).
    out = tmp_path / "sws"
    args = ["compress", "sws", "--from", str(pretrained), "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "decoded from model.wsz" in printed and "paper-style" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["file"]["bytes"] == (out / "model.wsz").stat().st_size
    assert report["decoded_equals_quantized"] is True and report["warnings"] == []
    assert report["errors"]["pretrained"]["test_error"] < 10
    # Measured over pretraining seeds 0-5 (6 pretraining epochs, then the preset, which distils from this weaker
    # teacher and quantizes the biases): decoded test error 3.3-8.1 % (the pretrained 5.3-6.9 %), 7.6-8.1 % of the
    # weights non-zero, 9-11 distinct values. The bounds lie outside that spread (before the preset narrowed the
    # zero spike: 6.4-12.5 %, under a bound of 20 %).
    assert report["errors"]["decoded"]["test_error"] <= 10.0
    assert 0.03 <= report["totals"]["nonzero_fraction"] <= 0.10 and report["totals"]["unique_values"] <= 17
    removed = report["method_summary"]["dead_weights_removed"]  # remove_dead is on by default
    assert (
        set(removed) == {layer["name"] for layer in report["layers"] if layer["weight"]} and min(removed.values()) >= 0
    )
    # the preset's 4-bit biases ([finish] dense_param_bits) are quantized tensors too, not weights
    assert {layer["name"] for layer in report["layers"] if not layer["weight"]} <= {
        "net.0.bias",
        "net.2.bias",
        "net.4.bias",
    }
    assert main(["evaluate", str(out / "model.wsz")]) == 0
    evaluated = capsys.readouterr().out
    assert f"test error {report['errors']['decoded']['test_error']:.2f}%" in evaluated
    # the pretraining rows are kept in front of the retraining rows
    phases = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert phases == ["pretrain"] * 6 + ["retrain"] * 150
    assert len(list((out / "mixture_epochs").glob("epoch_*.json"))) == 150


def test_encode_decode_inspect(pretrained, tmp_path, capsys):
    out = tmp_path / "sws"
    # the former spelling, --method sws, still works
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
    assert "pos b/nz  v2 gaps b/nz  val b/nz" in table and " + positions " in table  # the format-3 accounting


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-1"], "setting 'lr' must be > 0"),
        (["--epochs", "-2"], "setting 'epochs' must be >= 0"),
        (["--epochs", "0"], "setting 'epochs' must be > 0; got 0"),  # a random network is no pretrained one
        (["--batch-size", "0"], "setting 'batch_size' must be >= 1"),
        (["--optimizer", "sgd", "--momentum", "1.5"], "setting 'momentum' must be < 1"),
    ],
)
def test_bad_settings_fail_before_work(tmp_path, capsys, argv, message):
    code = main(["pretrain", "--preset", "digits", "--out", str(tmp_path / "x"), "--quiet", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_bad_sws_settings(pretrained, tmp_path, capsys):
    for argv, message in (
        (["--pi0", "1.5"], "pi0"),
        (["--num-components", "1"], "num_components"),
        (["--tau", "-1"], "tau"),
        (["--tau", "0"], "setting 'tau' must be > 0; got 0.0"),  # an untrained mixture: all weights on zero
        (["--epochs", "0"], "setting 'epochs' must be > 0; got 0"),
        (["--cover-pattern", "nothing_matches"], "matches no parameter"),
    ):
        code = main(["compress", "sws", "--from", str(pretrained), "--out", str(tmp_path / "y"), "--quiet", *argv])
        assert code == 2, argv
        assert message in capsys.readouterr().err.splitlines()[-1], argv
        assert not (tmp_path / "y").exists()
    assert main(["compress", "admm", "--from", str(pretrained), "--out", str(tmp_path / "y"), "--epochs", "0"]) == 2
    assert "setting 'epochs' must be > 0; got 0" in capsys.readouterr().err


def test_existing_output_is_refused(pretrained, capsys):
    assert main(["pretrain", "--preset", "digits", "--out", str(pretrained), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_a_fashion_mnist_run_records_its_dataset_and_is_evaluated_on_it(fake_idx, tmp_path, capsys):
    # --model lenet300 picks the lenet300 recipe (MNIST); --dataset wins over it, and the run directory says so.
    fake_idx(tmp_path / "data", "fashion-mnist")
    pre = tmp_path / "pre"
    argv = ["pretrain", "--model", "lenet300", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data")]
    assert main([*argv, "--val-size", "5", "--epochs", "1", "--out", str(pre), "--quiet"]) == 0
    assert "pretrained lenet300 on fashion-mnist" in capsys.readouterr().out
    config = json.loads((pre / "config.json").read_text())
    assert config["data"]["dataset"] == "fashion-mnist" and config["train"]["model"] == "lenet300"
    result = json.loads((pre / "result.json").read_text())
    assert main(["evaluate", str(pre)]) == 0  # reads the 10 fake Fashion-MNIST test images the run recorded
    assert f"test error {result['test_error']:.2f}%" in capsys.readouterr().out


def test_compress_val_size_zero_retrains_on_every_training_image(mnist_dir, tmp_path):
    pre, out = tmp_path / "pre", tmp_path / "sws"
    common = ["--data-dir", str(mnist_dir), "--epochs", "1", "--quiet"]
    assert main(["pretrain", "--model", "lenet300", "--dataset", "mnist", "--out", str(pre), *common]) == 0
    # One epoch leaves every weight on the zero spike: the run collapses (exit code 3) but writes everything.
    assert main(["compress", "sws", "--from", str(pre), "--out", str(out), "--val-size", "0", *common]) == 3
    assert json.loads((pre / "config.json").read_text())["data"]["val_size"] == 5000
    assert json.loads((out / "config.json").read_text())["data"]["val_size"] == 0
    report = json.loads((out / "report.json").read_text())
    # No validation split: its error is absent (null), never a made-up 0%.
    assert report["errors"]["decoded"]["val_error"] is None and report["errors"]["retrained"]["val_error"] is None
    assert 0 < report["errors"]["retrained"]["test_error"] < 20  # one epoch is too short to quantize well
    last = (out / "metrics.csv").read_text().splitlines()[-1].split(",")
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert last[header.index("val_error")] == "nan"


# --- compress: one subcommand per method ------------------------------------------------------------------


def test_a_setting_of_another_method_is_refused_in_one_line(pretrained, tmp_path, capsys):
    out = tmp_path / "dc"
    assert main(["compress", "dc", "--from", str(pretrained), "--out", str(out), "--tau", "0.1"]) == 2
    assert capsys.readouterr().err == "weightshare compress dc: error: --tau is a setting of sws, not of dc\n"
    assert not out.exists()
    argv = ["compress", "--method", "admm", "--from", str(pretrained), "--out", str(out), "--no-include-biases"]
    assert main(argv) == 2  # the former spelling, and a switch's --no- form
    assert capsys.readouterr().err.splitlines() == [
        "weightshare compress admm: error: --no-include-biases is a setting of sws and pwfn, not of admm"
    ]
    assert not out.exists()


def test_compress_help_lists_the_methods_and_a_method_all_its_settings(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    listing = capsys.readouterr().out
    assert all(f"    {name}  " in listing for name in CONFIGS)
    with pytest.raises(SystemExit):
        main(["compress", "sws", "--help"])
    listing = capsys.readouterr().out
    for section in SWSConfig().sections().values():
        for name in set(section) - {"model"}:  # the model is always the source run's
            assert f"--{name.replace('_', '-')} " in listing, name
    assert "--kept" not in listing and "--tau" in listing


def _resolve(cls, *flags, model="mlp"):
    args = build_parser().parse_args(["compress", cls.method, "--from", "pre", "--out", "out", *flags])
    return resolve_method_config(cls, args, {"train": {"model": model, "seed": 3}, "data": {}})


def test_settings_resolve_defaults_source_preset_file_flags(tmp_path):
    cfg = _resolve(SWSConfig)  # the preset named after the source run's model: mlp -> digits
    assert (cfg.train.epochs, cfg.tau, cfg.train.seed) == (150, 3e-2, 3)
    toml = tmp_path / "c.toml"
    toml.write_text("[sws]\ntau = 0.04\n[train]\nepochs = 7\nseed = 1\n[finish]\ncodebook_epochs = 1\n")
    cfg = _resolve(SWSConfig, "--preset", "lenet5", "--config", str(toml), "--epochs", "9", model="lenet5")
    assert (cfg.tau, cfg.train.epochs, cfg.train.seed, cfg.train.lr_schedule) == (0.04, 9, 1, "cosine")
    assert (cfg.finish.codebook_epochs, cfg.finish.codebook_lr, cfg.data.val_size) == (1, 1e-3, 0)
    assert _resolve(SWSConfig, "--preset", "lenet5", "--val-size", "5000").data.val_size == 5000


def test_config_files_name_an_unknown_section_or_key(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("[sws]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=rf"config file {toml}: unknown setting\(s\) bogus for \[sws\]"):
        _resolve(SWSConfig, "--config", str(toml))
    toml.write_text("[dc]\nkept = [0.5]\n")
    with pytest.raises(ConfigError, match=rf"config file {toml}: unknown section \[dc\]"):
        _resolve(SWSConfig, "--config", str(toml))
    toml.write_text('[data]\ndataset = "mnist"\n')  # the data set is always the source run's
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) dataset for \[data\]"):
        _resolve(SWSConfig, "--config", str(toml))


def test_list_settings_round_trip_through_toml_flags_python_and_the_run(tmp_path):
    toml = tmp_path / "dc.toml"
    toml.write_text("[dc]\nkept = [0.08, 0.09, 0.26]\n")
    from_file = _resolve(DCConfig, "--config", str(toml))
    from_flags = _resolve(DCConfig, "--kept", "0.08,0.09,0.26")
    from_python = DCConfig.preset("digits").updated({"dc": {"kept": [0.08, 0.09, 0.26]}})
    assert from_file.kept == from_flags.kept == from_python.kept == [0.08, 0.09, 0.26]
    data = {"dataset": "digits", "val_size": 0, "batch_size": 32, "data_dir": None}
    stored = json.loads(json.dumps({"method": "dc", **from_flags.sections(), "data": data}))
    assert stored_config(stored).sections()["dc"] == from_flags.sections()["dc"]
    assert _resolve(PWFNConfig, "--schedule", "0.5,1").schedule == [0.5, 1.0]


@pytest.mark.parametrize(
    ("flags", "toml", "message"),
    [
        (["--kept", "0.5,x"], None, "setting 'kept': 'x' is not a number (in '0.5,x')"),
        (["--kept", "0.5,1.5"], None, "setting 'kept' must be <= 1; got 1.5"),
        ([], '[dc]\nkept = "0.5,0.6"\n', "setting 'kept' must be a list, got '0.5,0.6'"),
        ([], "[dc]\nquality = [-1]\n", "setting 'quality' must be >= 0; got -1.0"),
    ],
)
def test_bad_lists_are_refused_naming_the_setting(tmp_path, flags, toml, message):
    if toml:
        (tmp_path / "c.toml").write_text(toml)
        flags = [*flags, "--config", str(tmp_path / "c.toml")]
    with pytest.raises(ConfigError) as error:
        _resolve(DCConfig, *flags)
    assert message in str(error.value)


def test_a_finish_section_in_a_config_file_is_honoured(pretrained, tmp_path):
    toml, out = tmp_path / "finish.toml", tmp_path / "sws"
    # init_sigma 0.02: from the preset's 0.25 two epochs leave no weight (decoded error ~91 %, chance).
    toml.write_text(
        "[sws]\ninit_sigma = 0.02\n[train]\nepochs = 2\n[finish]\ncodebook_epochs = 1\nremove_dead = false\n"
    )
    assert (
        main(["compress", "sws", "--from", str(pretrained), "--out", str(out), "--config", str(toml), "--quiet"]) == 0
    )
    config = json.loads((out / "config.json").read_text())
    # the file's two settings over the digits preset's; the preset's own dense_param_bits (4) stays
    assert config["finish"] == {
        "remove_dead": False, "dense_param_bits": 4, "codebook_epochs": 1, "codebook_lr": 1e-4, "float16": False
    }  # fmt: skip
    phases = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert phases[-3:] == ["retrain", "retrain", "codebook"]
    report = json.loads((out / "report.json").read_text())
    assert "snapped" in report["errors"] and "dead_weights_removed" not in report["method_summary"]
    # Measured over seeds 0-5: decoded test error 5.8-12.8 %, 30.0-34.4 % non-zero; bounds outside that spread.
    assert report["errors"]["decoded"]["test_error"] <= 20.0
    assert 0.2 <= report["totals"]["nonzero_fraction"] <= 0.45


def test_a_bogus_key_in_a_config_file_is_refused_before_any_work(pretrained, tmp_path, capsys):
    toml, out = tmp_path / "bogus.toml", tmp_path / "sws"
    toml.write_text("[sws]\nbogus = 1\n")
    assert main(["compress", "sws", "--from", str(pretrained), "--out", str(out), "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert str(toml) in err and "[sws]" in err and "bogus" in err and not out.exists()


def test_resume_finds_the_source_in_the_run_without_from(compressed, tmp_path):
    out = tmp_path / "sws"
    shutil.copytree(compressed[0], out)
    first = json.loads((out / "report.json").read_text())
    assert main(["compress", "sws", "--out", str(out), "--quiet", "--resume"]) == 0
    assert json.loads((out / "report.json").read_text())["file"] == first["file"]


def test_resume_names_a_recorded_source_that_is_gone(compressed, tmp_path, capsys):
    out = tmp_path / "sws"
    shutil.copytree(compressed[0], out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "source": str(tmp_path / "moved")}))
    assert main(["compress", "sws", "--out", str(out), "--quiet", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "moved" in err and "give --from" in err


def test_refinish_changes_only_the_finish_settings_it_is_given(compressed, tmp_path, capsys):
    source, out = compressed[0], tmp_path / "bits4"
    ran = json.loads((source / "config.json").read_text())
    capsys.readouterr()
    assert main(["refinish", "--from", str(source), "--out", str(out), "--dense-param-bits", "4", "--quiet"]) == 0
    assert "decoded" in capsys.readouterr().out  # the run's summary
    stored = json.loads((out / "config.json").read_text())
    assert stored["finish"] == {**ran["finish"], "dense_param_bits": 4}
    assert {k: v for k, v in stored.items() if k not in ("finish", "refinished_from")} == {
        k: v for k, v in ran.items() if k != "finish"
    }
    report = json.loads((out / "report.json").read_text())
    assert report["method_summary"]["dense_params_quantized"]["bits"] == 4


def test_compress_without_from_is_refused(tmp_path, capsys):
    assert main(["compress", "sws", "--out", str(tmp_path / "x")]) == 2
    assert "--from is required" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_resume_keeps_the_stored_settings(compressed, pretrained, sws_quick, tmp_path):
    out = tmp_path / "sws"
    shutil.copytree(compressed[0], out)
    first = json.loads((out / "report.json").read_text())
    common = ["compress", "sws", "--from", str(pretrained), "--out", str(out), "--quiet", "--resume"]
    assert main([*common, *sws_quick, "--data-dir", str(tmp_path)]) == 0  # finished: its settings, the same result
    assert json.loads((out / "config.json").read_text())["sws"]["assign"] == "ml"
    assert json.loads((out / "report.json").read_text())["file"] == first["file"]
