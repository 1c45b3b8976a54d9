"""Evaluate whatever a user points at: a run directory, a weights file or a .wsz file."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from weightshare.core.errors import RunDirError
from weightshare.core.io import load_tensors
from weightshare.core.settings import validate
from weightshare.data.config import DataConfig
from weightshare.data.datasets import load_data
from weightshare.models.architectures import build_model
from weightshare.pipeline.pretrain import data_config_of, load_run_model
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import CONFIG
from weightshare.train.loop import evaluate_model

__all__ = ["evaluate_checkpoint"]


def _model_from_file(path: Path, model_name: str, classes: int) -> nn.Module:
    model = build_model(model_name, classes)
    if path.suffix == ".wsz":
        from weightshare.codec import load_compressed

        load_compressed(path).load_into(model)
    else:
        model.load_state_dict(load_tensors(path))
    return model


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    normalize: str | None = None,
) -> dict[str, float]:
    """Validation and test error (%) of a run directory, a ``.safetensors`` or a ``.wsz`` file.

    A file inside a run directory takes the model and data settings recorded there.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    run_path = path if path.is_dir() else path.parent
    stored = RunDir.open(run_path).config if (run_path / CONFIG.path).is_file() else None
    data_cfg = DataConfig(**stored["data"]) if stored else DataConfig()
    if dataset:
        data_cfg.dataset = dataset
    if data_dir:
        data_cfg.data_dir = data_dir
    if normalize:
        data_cfg.normalize = normalize
    elif stored is None and data_cfg.dataset == "mnist":
        data_cfg.normalize = "pixels"
    data = load_data(validate(data_cfg))
    if path.is_dir():
        net, run = load_run_model(path, data.num_classes)
        data_cfg = data_config_of(run)
    else:
        name = model or (stored or {}).get("train", {}).get("model")
        if name is None:
            raise RunDirError(f"{path}: pass --model (no run directory with a config.json around it)")
        net = _model_from_file(path, name, data.num_classes)
    return evaluate_model(net, data)
