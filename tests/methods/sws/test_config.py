"""Soft weight-sharing's recipe: presets are complete configs, [finish] holds the steps after quantizing."""

import dataclasses

import pytest

from weightshare.core.errors import ConfigError
from weightshare.data.config import DataOverrides
from weightshare.finish.config import FinishConfig
from weightshare.methods.sws.config import SWSConfig
from weightshare.train.config import TrainConfig


def test_lenet5_preset_is_a_whole_recipe():
    cfg = SWSConfig.preset("lenet5")
    assert (cfg.tau, cfg.lr_w) == (5e-2, 1e-3)
    assert cfg.data.val_size == 0  # the paper's protocol: retrain on every training image
    assert cfg.finish == FinishConfig(
        remove_dead=True, dense_param_bits=4, codebook_epochs=3, codebook_lr=1e-3, float16=True
    )  # fmt: skip
    assert (cfg.train.epochs, cfg.train.lr_schedule) == (100, "cosine")


def test_lenet300_preset_is_the_searched_recipe():
    cfg = SWSConfig.preset("lenet300")
    expected = dataclasses.replace(
        SWSConfig(),
        tau=3.76e-2,
        lr_w=1.35e-3,
        train=TrainConfig(epochs=100, lr_schedule="cosine"),
        finish=FinishConfig(remove_dead=True, dense_param_bits=4, float16=True),
    )
    assert cfg == expected
    assert cfg.data == DataOverrides()


def test_finish_settings_live_in_the_finish_section_only():
    own = SWSConfig().sections()["sws"]
    assert not {"remove_dead", "codebook_epochs", "codebook_lr"} & set(own)
    assert SWSConfig().finish.remove_dead and SWSConfig().finish.codebook_epochs == 0


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown sws preset 'lenet7'; known: digits, lenet300, lenet5, tutorialnet"):
        SWSConfig.preset("lenet7")


def test_presets_are_fresh_objects():
    a, b = SWSConfig.preset("digits"), SWSConfig.preset("digits")
    a.train.epochs = 1
    assert b.train.epochs == 150 and SWSConfig.preset("digits").train.epochs == 150
