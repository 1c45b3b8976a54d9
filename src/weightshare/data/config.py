"""The ``[data]`` settings: which data set, where it lives and how it is fed."""

from __future__ import annotations

import dataclasses

from weightshare.core.settings import setting

__all__ = ["DataConfig"]


@dataclasses.dataclass
class DataConfig:
    """Which data set, where it lives and how it is fed."""

    dataset: str = setting("digits", "data set", choices=("digits", "mnist", "fashion-mnist", "cifar10", "cifar100"))
    data_dir: str | None = setting(None, "data directory (default: $WEIGHTSHARE_DATA, else the user cache)")
    normalize: str = setting(
        "pixels", "input scaling: pixels in [0,1] or per-channel mean/std", choices=("pixels", "standard")
    )
    val_size: int = setting(5000, "validation images carved from the training set (MNIST, Fashion-MNIST, CIFAR)", ge=0)
    batch_size: int = setting(128, "mini-batch size", ge=1)
    augment: bool = setting(True, "CIFAR: 4-pixel shift + horizontal flip while training")
    shift: int = setting(
        0, "MNIST, Fashion-MNIST, digits: shift each training image by up to this many pixels (0: off)", ge=0, le=8
    )
    download: bool = setting(True, "download missing MNIST / Fashion-MNIST files when the network is there")
    split_seed: int = setting(0, "seed of the train/validation split", ge=0)


@dataclasses.dataclass
class DataOverrides:
    """The ``[data]`` settings a compression run may change from its source run (None: the source's).

    The data set, its scaling and its split seed always come from the pretrained run, so
    every method sees the same images; a preset may retrain on every training image
    (``val_size = 0``, the papers' protocol).

    >>> DataOverrides(val_size=0).apply(DataConfig(dataset="mnist")).val_size
    0
    """

    val_size: int | None = setting(
        None,
        "validation images carved from the training set (default: the source run's; 0 retrains on every "
        "training image, the papers' protocol)",
        ge=0,
    )
    batch_size: int | None = setting(None, "mini-batch size (default: the source run's)", ge=1)
    shift: int | None = setting(
        None,
        "MNIST, Fashion-MNIST, digits: random shift of the training images (default: the source run's)",
        ge=0,
        le=8,
    )
    data_dir: str | None = setting(None, "data directory (default: the source run's)")

    def apply(self, data: DataConfig) -> DataConfig:
        """``data`` with every setting given here replacing the source run's."""
        given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(data, **given)
