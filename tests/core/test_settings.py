import argparse

import pytest

from weightshare.cli import resolve_settings
from weightshare.core.errors import ConfigError
from weightshare.core.settings import add_arguments, apply_overrides, load_toml, validate
from weightshare.data.config import DataConfig
from weightshare.train.config import TrainConfig


def test_defaults_validate():
    assert validate(TrainConfig()).lr == 1e-3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": 0.0}, "setting 'lr' must be > 0"),
        ({"epochs": -1}, "setting 'epochs' must be >= 0"),
        ({"optimizer": "rmsprop"}, "setting 'optimizer' must be one of adam, sgd"),
        ({"momentum": 1.0}, "setting 'momentum' must be < 1"),
        ({"epochs": 2.5}, "setting 'epochs' must be an integer"),
        ({"eval_test": 1}, "setting 'eval_test' must be true or false"),
        ({"lr": "fast"}, "setting 'lr' must be a number"),
    ],
)
def test_bad_values_name_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(apply_overrides(TrainConfig(), overrides))


def test_unknown_setting_is_refused():
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) learning_rate"):
        apply_overrides(TrainConfig(), {"learning_rate": 0.1}, "flags")


def test_int_is_accepted_as_float():
    assert validate(apply_overrides(TrainConfig(), {"lr": 1})).lr == 1.0


def test_toml_sections(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[train]\nlr = 0.01\nepochs = 3\n[data]\ndataset = "digits"\n')
    assert load_toml(path, ["train", "data"]) == {"train": {"lr": 0.01, "epochs": 3}, "data": {"dataset": "digits"}}
    path.write_text("[trian]\nlr = 0.01\n")
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]"):
        load_toml(path, ["train", "data"])
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match="run.toml"):
        load_toml(path, ["train"])


def test_priority_defaults_preset_file_flags(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_arguments(parser, DataConfig)
    add_arguments(parser, TrainConfig)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nlr = 0.02\nepochs = 7\n")
    args = parser.parse_args(["--config", str(cfg), "--epochs", "9"])
    preset = {"train": {"lr": 0.5, "epochs": 1, "momentum": 0.5}}
    data_cfg, train_cfg = resolve_settings([DataConfig, TrainConfig], args, preset)
    assert (train_cfg.lr, train_cfg.epochs, train_cfg.momentum) == (0.02, 9, 0.5)
    assert data_cfg == DataConfig()


def test_flag_with_wrong_choice_fails_in_argparse():
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    with pytest.raises(SystemExit):
        parser.parse_args(["--optimizer", "rmsprop"])
