"""Probabilistic weight fixing's settings (the ``[pwfn]`` section) and its presets."""

from __future__ import annotations

import dataclasses

from weightshare.core.errors import ConfigError
from weightshare.core.settings import setting
from weightshare.methods.base import MethodConfig
from weightshare.methods.space import SearchRange
from weightshare.train.presets import Preset

__all__ = ["PWFNConfig", "PWFN_PRESETS", "check_schedule"]


PAPER_SCHEDULE = [0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0]


SIGMA_JOINS = ("std_mu", "allow_retraining", "divide_by_10", "mean_sigma")


def check_schedule(values: list[float]) -> None:
    """Cumulative fixed fractions must increase strictly and end at 1 (each lies in (0, 1], see the setting).

    >>> check_schedule([0.5, 0.9, 1.0])
    >>> check_schedule([0.5, 0.4, 1.0])
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'schedule' must be strictly increasing: 0.4 follows 0.5
    """
    for before, after in zip(values, values[1:], strict=False):
        if after <= before:
            raise ConfigError(f"setting 'schedule' must be strictly increasing: {after:g} follows {before:g}")
    if values[-1] != 1.0:
        raise ConfigError(f"setting 'schedule' must end at 1 (every weight fixed); it ends at {values[-1]:g}")


# The paper's recipe (Subia-Waud & Dasmahapatra 2023, experiments; docs/methods.md#pwfn-defaults): SGD, momentum 0.9,
# weight decay 1e-4, 1 + 9 x 3 epochs for 10 rounds, lr 1e-3. Re-tuned for small data (docs/methods.md#pwfn-presets):
# b = 9 on MNIST, since b = 7 with zero_fix sends every |mu| < 0.0078 to zero, a large share of the LeNet weights.
# reg: sigma only grows by ~reg * lr * steps, and the paper's 2^-11 was set for ~10^4 ImageNet steps per epoch; MNIST
# has ~470 and digits ~20, so reg grows accordingly. On digits (mlp, 19 epochs) reg 2^-9 -> 137 values, 5.9 bits;
# 2^-4 -> 26 values, 3.6 bits; 2^-2 -> 17 values, 3.1 bits at the pretrained test error. The MNIST presets below
# were measured in benchmarks/RESULTS.md.
_MNIST_PRESET = {
    "train": {
        "epochs": 28,
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "lr_schedule": "none",
    },
    "pwfn": {"first_epochs": 1, "rest_epochs": 3, "b": 9, "lr_sigma": 1e-3, "reg": 2.0**-5},
}


PWFN_PRESETS: dict[str, Preset] = {
    "digits": {
        "train": {
            "epochs": 19,
            "optimizer": "sgd",
            "lr": 1e-2,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "lr_schedule": "none",
        },
        "pwfn": {"first_epochs": 1, "rest_epochs": 2, "b": 8, "lr_sigma": 1e-2, "reg": 2.0**-2},
    },
    "lenet300": _MNIST_PRESET,
    "lenet5": _MNIST_PRESET,
    # The paper ran the same recipe on DeiT-Tiny/Small (README); the transformer sees the same images at the same
    # ~430 steps an epoch as the LeNets, so it takes their MNIST preset unchanged.
    "vit": _MNIST_PRESET,
}


@dataclasses.dataclass
class PWFNConfig(MethodConfig):
    """Every knob of probabilistic weight fixing (the paper's values as defaults: docs/methods.md#pwfn-defaults).

    >>> PWFNConfig(schedule=[0.5, 1.0], first_epochs=1, rest_epochs=3).total_epochs
    4
    """

    method = "pwfn"
    description = "probabilistic weight fixing (Subia-Waud & Dasmahapatra 2023)"
    presets = PWFN_PRESETS
    # reg and lr_sigma set how far the sigmas grow and so how many distinct values survive; b how small a
    # centre may be (docs/methods.md#pwfn-presets explains why both depend on the data set's size).
    search_space = {
        "pwfn": {
            "reg": SearchRange(2.0**-12, 0.5, log=True),
            "lr_sigma": SearchRange(1e-4, 1e-1, log=True),
            "b": SearchRange(6, 10, step=1),
            "delta": SearchRange(0.5, 2.0),
        }
    }

    schedule: list[float] = setting(
        PAPER_SCHEDULE,
        "cumulative fraction of the covered weights fixed after each round (strictly increasing, ends at 1)",
        gt=0,
        le=1,
    )
    first_epochs: int = setting(
        1, "training epochs before the first fixing round (0: fix on the pretrained weights)", ge=0
    )
    rest_epochs: int = setting(3, "training epochs before each later fixing round", ge=0)
    b: int = setting(7, "smallest centre power of two is 2^-b; with zero_fix, |mu| < 2^-b goes to 0", ge=1, le=30)
    max_terms: int = setting(4, "centres are sums of up to this many powers of two (powl)", ge=1, le=8)
    delta: float = setting(1.0, "initial reach of a centre, in units of each weight's sigma", gt=0)
    inc: float = setting(2.0, "factor by which the reach grows when no centre reaches a weight", gt=1)
    zero_fix: bool = setting(True, "weights with |mu| < 2^-b are at distance 0 from the zero centre")
    sigma_join: str = setting(
        "std_mu",
        "sigma of a fixed group: std of its mu, keep training it, sigma/10, or the sigma of the mean precision",
        choices=SIGMA_JOINS,
    )
    reg: float = setting(2.0**-11, "weight alpha of the regulariser that keeps sigma from collapsing", ge=0)
    prior: bool = setting(True, "initialise sigma from the distances to powers of two (else 1e-4)")
    lr_sigma: float = setting(1e-3, "learning rate of the sigmas (the paper: the model's lr)", gt=0)
    include_biases: bool = setting(False, "fix the biases of covered layers too (PWFN's code does)")
    cover_pattern: str | None = setting(None, "regex on parameter names selecting the covered tensors")
    cover_exclude: str | None = setting(None, "regex on parameter names taking tensors out of the covered ones")

    @property
    def total_epochs(self) -> int:
        """Epochs the training loop must run: the last round fixes at the end of the last epoch."""
        return self.first_epochs + (len(self.schedule) - 1) * self.rest_epochs

    def check(self) -> None:
        check_schedule(self.schedule)
