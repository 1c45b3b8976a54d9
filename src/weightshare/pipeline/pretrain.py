"""The pipeline, one function per stage: pretrain, load a run, evaluate.

These are what the CLI calls; they are also the Python API for scripted
experiments. Compression stages live in :mod:`weightshare.pipeline.compress`.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightshare.core.errors import RunDirError
from weightshare.core.io import load_tensors, save_tensors, write_json
from weightshare.core.settings import validate
from weightshare.data.config import DataConfig
from weightshare.data.datasets import DataBundle, load_data
from weightshare.methods.base import AT_LEAST_ONE_EPOCH
from weightshare.models.architectures import build_model
from weightshare.pipeline.rundirs import check_new, interruptible, open_run, recorded, training_run
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import PRETRAINED, RESULT
from weightshare.train.config import TrainConfig
from weightshare.train.distributed import Distributed, session
from weightshare.train.loop import evaluate, fit

__all__ = ["pretrain", "load_run_model", "open_pretrain_run", "open_source_run", "set_threads", "data_config_of"]


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def pretrain(
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    data: DataBundle | None = None,
) -> dict[str, Any]:
    """Train a model from scratch into run directory ``out``; returns the final metrics row.

    Writes ``config.json``, ``env.json``, ``metrics.csv``, ``checkpoints/`` and the final
    weights ``model.safetensors``. Launched by ``torchrun``, it trains data-parallel and rank 0 alone
    writes (:mod:`weightshare.train.distributed`); the other ranks return an empty dict.
    """
    validate(data_cfg)
    validate(train_cfg, AT_LEAST_ONE_EPOCH)  # zero epochs would "pretrain" a random network
    set_threads(train_cfg.threads)
    config = {"command": "pretrain", "data": asdict(data_cfg), "train": asdict(train_cfg)}
    with session() as dist:
        writer = dist is None or dist.is_main
        if resume:
            open_pretrain_run(out)
        else:
            check_new(out)
        if dist is not None:
            dist.barrier()  # every rank has looked at ``out`` before rank 0 creates it
        run = training_run(out, config, resume=resume, writer=writer)
        with interruptible(run, "pretrain", train_cfg.epochs):
            return _train(run, data_cfg, train_cfg, resume=resume, progress=progress, data=data, dist=dist)


def _train(
    run: RunDir,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    *,
    resume: bool,
    progress: bool,
    data: DataBundle | None,
    dist: Distributed | None,
) -> dict[str, Any]:
    """The training of :func:`pretrain` in its run directory, then the final weights and errors."""
    data = data or load_data(data_cfg)
    torch.manual_seed(train_cfg.seed)
    model = build_model(train_cfg.model, data.num_classes)
    if dist is not None:
        model.to(dist.device)
    fit(model, data, train_cfg, run=run, phase="pretrain", resume=resume,
        batch_size=data_cfg.batch_size, progress=progress, dist=dist)  # fmt: skip
    if dist is not None and not dist.is_main:
        return {}
    save_tensors(run.path_of(PRETRAINED), model.state_dict())
    final = {"val_error": evaluate(model, data.val)["error"], "test_error": evaluate(model, data.test)["error"]}
    write_json(run.path_of(RESULT), {**final, "epochs": train_cfg.epochs, "model": train_cfg.model})
    return final


def open_pretrain_run(out: str | os.PathLike, *, write: bool = False) -> RunDir:
    """The pretraining run in ``out`` to continue; a run another command made is refused."""
    why = "pretrain --resume continues a run made by weightshare pretrain"
    return open_run(out, "pretrain", why=why, write=write, resuming=True)


def open_source_run(path: str | os.PathLike) -> RunDir:
    """A run to start from (``compress --from``, ``sensitivity``); a run another command made is refused."""
    return open_run(path, "pretrain", why="compress and sensitivity start from a model made by weightshare pretrain")


def data_config_of(run: RunDir) -> DataConfig:
    """The data settings a run was made with (so every method starting from it sees the same data)."""
    return DataConfig(**run.config["data"])


def load_run_model(source: str | os.PathLike, num_classes: int | None = None) -> tuple[nn.Module, RunDir]:
    """The final model of a run directory (``model.safetensors`` + ``config.json``)."""
    run = open_source_run(source)
    model_name = recorded(run, "train", "model")
    dataset = recorded(run, "data", "dataset")
    classes = num_classes or run.config.get("num_classes") or (100 if dataset == "cifar100" else 10)
    model = build_model(model_name, classes)
    weights = Path(run.path_of(PRETRAINED))
    if not weights.is_file():
        raise RunDirError(
            f"{weights} does not exist: the run in {run.path} has not finished; "
            f"continue it with weightshare pretrain --out {shlex.quote(str(run.path))} --resume"
        )
    model.load_state_dict(load_tensors(weights))
    return model, run
