"""Evaluate whatever a user points at: a run directory, a weights file or a .wsz file."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from weightshare.core.errors import FormatError, MismatchError, RunDirError
from weightshare.core.io import load_tensors
from weightshare.core.quantized import QuantizedModel
from weightshare.core.settings import validate
from weightshare.data.config import DataConfig
from weightshare.data.datasets import DataBundle, load_data
from weightshare.models.architectures import build_model
from weightshare.pipeline.pretrain import load_run_model
from weightshare.pipeline.rundirs import open_run, recorded, run_kind
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import COMPRESSED, CONFIG
from weightshare.train.loop import evaluate_model

__all__ = ["OpenedCheckpoint", "evaluate_checkpoint", "finished_file", "open_checkpoint"]


def _load_file(path: Path, stored: dict[str, Any] | None) -> QuantizedModel:
    """A ``.wsz`` file decoded, or a weights file as an all-dense model (both carry the model they were made for)."""
    if path.suffix == ".wsz":
        from weightshare.codec import load_compressed

        try:
            return load_compressed(path)
        except FormatError as exc:  # the codec's message does not know the file's name
            raise FormatError(f"{path}: {exc}") from None
    made_for = (stored or {}).get("train", {}).get("model")
    return QuantizedModel([torch.zeros(1)], {}, load_tensors(path), {"model": made_for} if made_for else {})


def _model_for(path: Path, weights: QuantizedModel, name: str, given: bool, classes: int) -> nn.Module:
    """Model ``name`` holding ``weights``; a model given by the user that does not fit is a :class:`MismatchError`."""
    from weightshare.codec import check_compatible

    model = build_model(name, classes)
    try:
        check_compatible(weights, model, name)
    except FormatError as exc:
        if given:  # the user's --model is what is wrong, not the file
            raise MismatchError(f"{path}: {exc}") from None
        raise
    return weights.load_into(model)


def _check_inputs(model: nn.Module, name: str, data: DataBundle, dataset: str) -> None:
    """Refuse data the model cannot take (digits' 64 pixels into LeNet's 784) in one line, not a traceback."""
    try:
        with torch.no_grad():
            model.eval()(data.test.x[:1])
    except RuntimeError as exc:  # torch's shape errors are RuntimeErrors
        shape = tuple(data.test.x.shape[1:])
        raise MismatchError(f"model {name} does not take {dataset} inputs of shape {shape} ({exc})") from None


def _data_for(stored: dict[str, Any] | None, dataset: str | None, data_dir: str | None, normalize: str | None):
    """The data settings recorded in a run directory (or the defaults), with the given ones applied."""
    data_cfg = DataConfig(**stored["data"]) if stored else DataConfig()
    if dataset:
        data_cfg.dataset = dataset
    if data_dir:
        data_cfg.data_dir = data_dir
    if normalize:
        data_cfg.normalize = normalize
    elif stored is None and data_cfg.dataset == "mnist":
        data_cfg.normalize = "pixels"
    return validate(data_cfg)


def finished_file(path: Path) -> Path:
    """What ``evaluate RUN_DIR`` evaluates: a pretraining run as is, a compression run's ``model.wsz``."""
    run = open_run(path)
    if run_kind(run.config) != "compress":
        return path
    if not run.has(COMPRESSED):
        method = recorded(run, "method")
        again = ["weightshare", "compress", method, "--from", run.config.get("source", "SOURCE"), "--out", str(path)]
        raise RunDirError(
            f"{path} is a compress run ({method}) that has not finished (no {COMPRESSED.path}); "
            f"continue it with {shlex.join([*again, '--resume'])}"
        )
    return run.path_of(COMPRESSED)


class OpenedCheckpoint(NamedTuple):
    """What a checkpoint resolves to: the file read, its weights (``None`` for a pretraining run), the model
    holding them and the data it is evaluated on."""

    path: Path
    weights: QuantizedModel | None
    model: nn.Module
    data: DataBundle


def open_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    normalize: str | None = None,
) -> OpenedCheckpoint:
    """A run directory, ``.safetensors`` or ``.wsz`` file as a model holding its weights, with its data.

    A file inside a run directory takes the model and data settings recorded there; a compression run's
    directory stands for its ``model.wsz``. A ``.wsz`` file elsewhere takes the model it records.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        path = finished_file(path)
    run_path = path if path.is_dir() else path.parent
    stored = RunDir.open(run_path).config if (run_path / CONFIG.path).is_file() else None
    data_cfg = _data_for(stored, dataset, data_dir, normalize)
    data = load_data(data_cfg)
    if path.is_dir():
        return OpenedCheckpoint(path, None, load_run_model(path, data.num_classes)[0], data)
    weights = _load_file(path, stored)
    name = model or (stored or {}).get("train", {}).get("model") or weights.meta.get("model")
    if name is None:
        raise RunDirError(f"{path}: pass --model (no run directory with a config.json around it)")
    net = _model_for(path, weights, str(name), model is not None, data.num_classes)
    _check_inputs(net, str(name), data, data_cfg.dataset)
    return OpenedCheckpoint(path, weights, net, data)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    normalize: str | None = None,
) -> dict[str, float]:
    """Validation and test error (%) of a run directory, a ``.safetensors`` or a ``.wsz`` file
    (found as :func:`open_checkpoint` says)."""
    opened = open_checkpoint(checkpoint, model=model, dataset=dataset, data_dir=data_dir, normalize=normalize)
    return evaluate_model(opened.model, opened.data)
