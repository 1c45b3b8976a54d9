"""The ``[data]`` settings: which data set, where it lives and how it is fed."""

from __future__ import annotations

import dataclasses

from weightshare.core.settings import setting

__all__ = ["DataConfig"]


@dataclasses.dataclass
class DataConfig:
    """Which data set, where it lives and how it is fed."""

    dataset: str = setting("digits", "data set", choices=("digits", "mnist", "cifar10", "cifar100"))
    data_dir: str | None = setting(None, "data directory (default: $WEIGHTSHARE_DATA, else the user cache)")
    normalize: str = setting(
        "pixels", "input scaling: pixels in [0,1] or per-channel mean/std", choices=("pixels", "standard")
    )
    val_size: int = setting(5000, "validation images carved from the training set (MNIST/CIFAR)", ge=0)
    batch_size: int = setting(128, "mini-batch size", ge=1)
    augment: bool = setting(True, "CIFAR: 4-pixel shift + horizontal flip while training")
    download: bool = setting(True, "download missing MNIST files when the network is there")
    split_seed: int = setting(0, "seed of the train/validation split", ge=0)
