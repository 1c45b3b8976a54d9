import argparse
import dataclasses
import re

import pytest

from weightshare.cli import resolve_settings
from weightshare.core.errors import ConfigError
from weightshare.core.settings import (
    add_arguments,
    add_recipe_arguments,
    apply_overrides,
    apply_sections,
    load_toml,
    section,
    sections_from_args,
    setting,
    setting_flags,
    to_sections,
    validate,
)
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


# --- list settings and recipes (settings by section) -----------------------------------------------


@dataclasses.dataclass
class _Inner:
    lr: float = setting(1e-3, "learning rate", gt=0)


@dataclasses.dataclass
class _Recipe:
    kept: list[float] = setting([0.5], "kept fractions", gt=0, le=1)
    train: _Inner = section(_Inner)


def test_list_settings_are_coerced_copied_and_checked_element_by_element():
    default_a, default_b = _Recipe(), _Recipe()
    assert default_a.kept is not default_b.kept  # no list shared between configs
    assert validate(_Recipe(kept=(1, 0.25))).kept == [1.0, 0.25]
    for value, message in (
        ([0.5, 1.5], "setting 'kept' must be <= 1; got 1.5"),
        ([0.0], "setting 'kept' must be > 0; got 0.0"),
        ([], "setting 'kept' must hold at least one value"),
        ("0.5", "setting 'kept' must be a list, got '0.5'"),
        (0.5, "setting 'kept' must be a list, got 0.5"),
        ([True], "setting 'kept' must be a number, got True"),
        ([float("inf")], "setting 'kept' must be a finite number"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate(_Recipe(kept=value))


def test_validate_checks_every_section_of_a_recipe():
    with pytest.raises(ConfigError, match="setting 'lr' must be > 0"):
        validate(_Recipe(train=_Inner(lr=-1.0)))
    with pytest.raises(ConfigError, match=r"section \[train\] must be a _Inner"):
        validate(_Recipe(train={"lr": 1.0}))


def test_sections_apply_and_round_trip():
    recipe = apply_sections(_Recipe(), {"m": {"kept": [0.2, 0.3]}, "train": {"lr": 0.5}}, "test", own="m")
    assert recipe == _Recipe(kept=[0.2, 0.3], train=_Inner(lr=0.5))
    assert to_sections(recipe, own="m") == {"m": {"kept": [0.2, 0.3]}, "train": {"lr": 0.5}}
    assert apply_sections(_Recipe(), to_sections(recipe, own="m"), "again", own="m") == recipe
    with pytest.raises(ConfigError, match=r"c.toml: unknown section \[data\]; expected one of m, train"):
        apply_sections(_Recipe(), {"data": {}}, "config file c.toml", own="m")
    with pytest.raises(ConfigError, match=r"c.toml: unknown setting\(s\) train for \[m\]"):  # a section is no setting
        apply_sections(_Recipe(), {"m": {"train": 1}}, "config file c.toml", own="m")


def test_a_preset_list_is_never_changed_through_a_config():
    preset = {"m": {"kept": [0.2]}}
    recipe = apply_sections(_Recipe(), preset, "preset", own="m")
    recipe.kept.append(0.9)
    assert preset == {"m": {"kept": [0.2]}}


def test_list_flags_take_one_comma_separated_value():
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser, _Recipe, "m")
    args = parser.parse_args(["--kept", "0.2, 0.3", "--lr", "0.1"])
    assert sections_from_args(args, _Recipe, "m") == {"m": {"kept": [0.2, 0.3]}, "train": {"lr": 0.1}}
    assert "(a comma-separated list; default 0.5)" in " ".join(parser.format_help().split())
    with pytest.raises(ConfigError, match=re.escape("setting 'kept': 'x' is not a number (in '0.2,x')")):
        sections_from_args(parser.parse_args(["--kept", "0.2,x"]), _Recipe, "m")
    with pytest.raises(ConfigError, match="setting 'kept' must be a comma-separated list"):
        sections_from_args(parser.parse_args(["--kept", "0.2,,0.3"]), _Recipe, "m")
    assert setting_flags(_Recipe) == {"--kept"}  # a section's flags are not the recipe's own


def test_toml_arrays_are_list_settings(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[m]\nkept = [0.2, 1]\n[train]\nlr = 0.5\n")
    recipe = validate(apply_sections(_Recipe(), load_toml(path, ["m", "train"]), f"config file {path}", own="m"))
    assert recipe == _Recipe(kept=[0.2, 1.0], train=_Inner(lr=0.5))
    path.write_text('[m]\nkept = "0.2,1"\n')
    with pytest.raises(ConfigError, match="setting 'kept' must be a list"):
        validate(apply_sections(_Recipe(), load_toml(path, ["m", "train"]), f"config file {path}", own="m"))
