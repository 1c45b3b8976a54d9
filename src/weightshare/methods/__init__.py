"""Compression methods, in a registry by name (``--method``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from weightshare.methods.admm.config import ADMM_PRESETS, AdmmConfig
from weightshare.methods.admm.method import ADMM
from weightshare.methods.base import Method, PlainTraining
from weightshare.methods.dc.config import DC_PRESETS, DCConfig
from weightshare.methods.dc.method import DeepCompression
from weightshare.methods.pwfn.config import PWFN_PRESETS, PWFNConfig
from weightshare.methods.pwfn.method import ProbabilisticWeightFixing
from weightshare.methods.sws.config import SWS_PRESETS, SWSConfig
from weightshare.methods.sws.method import SoftWeightSharing

__all__ = ["Method", "PlainTraining", "SoftWeightSharing", "SWSConfig", "MethodSpec", "METHODS", "get_method"]


@dataclass(frozen=True)
class MethodSpec:
    """How the pipeline builds a method: its config class (= TOML section), factory and presets."""

    name: str
    config_class: type
    presets: dict[str, dict[str, dict[str, Any]]]
    factory: Any  # (model, config, n_train) -> Method
    description: str


METHODS: dict[str, MethodSpec] = {
    "sws": MethodSpec("sws", SWSConfig, SWS_PRESETS, SoftWeightSharing, "soft weight-sharing (Ullrich et al. 2017)"),
    "dc": MethodSpec("dc", DCConfig, DC_PRESETS, DeepCompression, "Deep Compression (Han, Mao & Dally 2016)"),
    "pwfn": MethodSpec(
        "pwfn",
        PWFNConfig,
        PWFN_PRESETS,
        ProbabilisticWeightFixing,
        "probabilistic weight fixing (Subia-Waud & Dasmahapatra 2023)",
    ),
    "admm": MethodSpec(
        "admm",
        AdmmConfig,
        ADMM_PRESETS,
        ADMM,
        "sparsity-quantization joint learning by ADMM (Yang, Gui, Zhu & Liu 2020)",
    ),
}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, model: nn.Module, config: Any, n_train: int) -> Method:
    return get_method(name).factory(model, config, n_train)
