"""Named presets: per command, the settings that reproduce a paper's recipe.

A preset's values are defaults: the config file and the flags the user gives
always win (see :mod:`weightshare.core.settings`). Sections are the TOML sections.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRETRAIN_PRESETS", "preset_names", "get_preset"]

Preset = dict[str, dict[str, Any]]

# Pretraining recipes for the shared checkpoints every method starts from. MNIST pixels in [0, 1]
# (the soft weight-sharing reference code); Adam with a cosine decay settles the error reliably.
PRETRAIN_PRESETS: dict[str, Preset] = {
    "digits": {
        "data": {"dataset": "digits", "batch_size": 32},
        "train": {"model": "mlp", "epochs": 30, "lr": 2e-3, "lr_schedule": "cosine"},
    },
    "lenet300": {
        "data": {"dataset": "mnist"},
        "train": {"model": "lenet300", "epochs": 30, "lr": 1e-3, "lr_schedule": "cosine"},
    },
    # LeNet-5 overfits MNIST in a few epochs (training loss 2e-4 after 15), so it trains on digits shifted by up to
    # 2 pixels, LeCun et al. (1998)'s mildest distortion, for twice as long: validation error 0.82% -> 0.64% (test
    # 0.84% -> 0.52%; benchmarks/RESULTS.md, "A LeNet-5 pretrain that does not overfit"). The compression runs
    # inherit the shift from this checkpoint ([data] shift), so their retraining sees the same distortions.
    "lenet5": {
        "data": {"dataset": "mnist", "shift": 2},
        "train": {"model": "lenet5", "epochs": 30, "lr": 1e-3, "lr_schedule": "cosine"},
    },
    # The Keras tutorial's own pretraining (docs/methods.md#sws-tutorial): 100 epochs of constant Adam 1e-3 at batch
    # 256. Its soft weight-sharing reproduction needs this checkpoint: from a 20-epoch cosine one
    # (0.95% test error) the decoded error was 1.09%, from this one (0.80%) 0.91% (RESULTS.md).
    "tutorialnet": {
        "data": {"dataset": "mnist", "batch_size": 256},
        "train": {"model": "tutorialnet", "epochs": 100, "lr": 1e-3, "lr_schedule": "none"},
    },
    # The small vision transformer (models/vit.py): Adam 1e-3 with a one-epoch linear warm-up (transformers train
    # unstably from a cold start at the full rate, Dosovitskiy et al. 2021 Sec. 4.1) and a cosine decay.
    # `--dataset fashion-mnist` trains it on Fashion-MNIST with the same recipe.
    "vit": {
        "data": {"dataset": "mnist"},
        "train": {"model": "vit", "epochs": 15, "lr": 1e-3, "lr_schedule": "cosine", "warmup_epochs": 1},
    },
    "wrn16_4": {
        "data": {"dataset": "cifar10"},
        "train": {
            "model": "wrn16_4",
            "epochs": 200,
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "lr_schedule": "cosine",
        },
    },
}


def preset_names(table: dict[str, Preset]) -> list[str]:
    return sorted(table)


def get_preset(table: dict[str, Preset], name: str | None, what: str) -> Preset:
    if name is None:
        return {}
    if name not in table:
        raise KeyError(f"unknown {what} preset {name!r}; known: {', '.join(sorted(table))}")
    return table[name]
