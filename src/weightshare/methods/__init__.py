"""Compression methods, in a registry from config type to method class.

A method's config (``SWSConfig``, ``DCConfig``, ...) carries its name, description and presets,
so the registry only says which :class:`Method` each config builds; :data:`CONFIGS` finds a
config class by name (the CLI subcommand, the section of a run's ``config.json``).
"""

from __future__ import annotations

from torch import nn

from weightshare.core.errors import ConfigError
from weightshare.methods.admm.config import AdmmConfig
from weightshare.methods.admm.method import ADMM
from weightshare.methods.base import Method, MethodConfig, PlainTraining
from weightshare.methods.dc.config import DCConfig
from weightshare.methods.dc.method import DeepCompression
from weightshare.methods.pwfn.config import PWFNConfig
from weightshare.methods.pwfn.method import ProbabilisticWeightFixing
from weightshare.methods.sws.config import SWSConfig
from weightshare.methods.sws.method import SoftWeightSharing

__all__ = [
    "ADMM",
    "CONFIGS",
    "METHODS",
    "AdmmConfig",
    "DCConfig",
    "DeepCompression",
    "Method",
    "MethodConfig",
    "PWFNConfig",
    "PlainTraining",
    "ProbabilisticWeightFixing",
    "SWSConfig",
    "SoftWeightSharing",
    "build_method",
    "config_class",
    "method_class",
]

METHODS: dict[type[MethodConfig], type[Method]] = {
    SWSConfig: SoftWeightSharing,
    DCConfig: DeepCompression,
    PWFNConfig: ProbabilisticWeightFixing,
    AdmmConfig: ADMM,
}

CONFIGS: dict[str, type[MethodConfig]] = {cls.method: cls for cls in METHODS}
"""Config classes by method name: ``CONFIGS["sws"] is SWSConfig``."""


def config_class(name: str) -> type[MethodConfig]:
    """The config class of method ``name``.

    >>> config_class("dc").__name__
    'DCConfig'
    >>> config_class("xyz")
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: unknown method 'xyz'; known: sws, dc, pwfn, admm
    """
    if name not in CONFIGS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]


def method_class(config: MethodConfig) -> type[Method]:
    """The method a config builds, by its type (a subclass of a method's config builds that method).

    >>> method_class(SWSConfig()).__name__
    'SoftWeightSharing'
    """
    for cls in type(config).__mro__:
        if cls in METHODS:
            return METHODS[cls]
    known = ", ".join(cls.__name__ for cls in METHODS)
    raise ConfigError(f"not a method's config: {type(config).__name__} (expected one of {known})")


def build_method(config: MethodConfig, model: nn.Module, n_train: int) -> Method:
    """The method of ``config``, ready to train ``model`` on ``n_train`` examples."""
    return method_class(config)(model, config, n_train)
