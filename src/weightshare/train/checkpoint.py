"""Training checkpoints: one file per checkpoint, written atomically, checked when read.

A checkpoint is a single safetensors file (``checkpoints/last.safetensors``). Its tensors are
the model's state, the method's tensor state, the optimizer's tensor state and the torch RNG;
its header metadata holds, as JSON, everything else (epoch, optimizer groups, the method's
small non-tensor state, the metrics rows so far). One file, replaced in one ``os.replace``,
so an interruption at any moment leaves either the previous checkpoint or the new one, never
a mix of the two. On load it is cross-checked against the model, the optimizer and the phase
it is resumed into; anything that does not fit is refused with a message that says what.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from weightshare.core.errors import RunDirError
from weightshare.core.io import atomic_write_bytes
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import CHECKPOINTS
from weightshare.train.hooks import TrainingHooks

__all__ = [
    "CHECKPOINT_NAME",
    "Checkpoint",
    "checkpointed_epochs",
    "has_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_NAME = "last.safetensors"
_FORMAT, _VERSION = "weightshare.checkpoint", "2"


class Checkpoint(dict):
    """What :func:`load_checkpoint` restored besides the objects: ``epoch`` (0-based, finished) and ``history``."""


def has_checkpoint(run: RunDir) -> bool:
    return run.path_of(CHECKPOINTS, CHECKPOINT_NAME).is_file()


def checkpointed_epochs(run: RunDir, phase: str) -> int:
    """How many epochs of ``phase`` the run's checkpoint holds (0 without one), read from its header only."""
    if not has_checkpoint(run):
        return 0
    meta, _ = _read(run.path_of(CHECKPOINTS, CHECKPOINT_NAME), header_only=True)
    return int(meta["epoch"]) + 1 if meta.get("phase") == phase else 0


def save_checkpoint(
    run: RunDir,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    hooks: TrainingHooks,
    *,
    epoch: int,
    phase: str,
    history: list[dict[str, Any]],
) -> None:
    """Write the state after epoch ``epoch`` (0-based) of ``phase`` as one atomic file."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    method_json: dict[str, Any] = {}
    for key, value in hooks.state_dict().items():
        if isinstance(value, torch.Tensor):
            tensors[f"method.{key}"] = value
        else:
            method_json[key] = value
    opt_json = _split_optimizer(optimizer.state_dict(), tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"format": _FORMAT, "version": _VERSION, "epoch": str(epoch), "phase": phase}
    meta |= {k: json.dumps(v) for k, v in (("optimizer", opt_json), ("method", method_json), ("history", history))}
    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(run.path_of(CHECKPOINTS, CHECKPOINT_NAME), save(clean, metadata=meta))


def _split_optimizer(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The optimizer's tensors go into ``tensors``; the rest (groups, plain numbers) is returned as JSON."""
    out: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        out["state"][str(pid)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                out["state"][str(pid)][key] = value
    return out


def load_checkpoint(
    run: RunDir, model: nn.Module, optimizer: torch.optim.Optimizer, hooks: TrainingHooks, *, phase: str
) -> Checkpoint:
    """Restore model, optimizer, hooks and RNG from ``run``'s checkpoint; refuse one that does not fit."""
    path = run.path_of(CHECKPOINTS, CHECKPOINT_NAME)
    meta, tensors = _read(path)
    if meta.get("phase") != phase:
        raise RunDirError(
            f"{path} is a checkpoint of the {meta.get('phase')!r} phase, not of {phase!r}: "
            f"this run directory was made by another command"
        )
    _load_model(path, model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    method_state = dict(json.loads(meta["method"]))
    method_state.update({k[7:]: v for k, v in tensors.items() if k.startswith("method.")})
    hooks.load_state_dict(method_state)
    _load_optimizer(path, optimizer, json.loads(meta["optimizer"]), tensors)
    torch.set_rng_state(tensors["rng.torch"])
    return Checkpoint(epoch=int(meta["epoch"]), history=list(json.loads(meta["history"])))


def _read(path, header_only: bool = False) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if header_only:
                return meta, {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(f"{path} is not a readable checkpoint ({exc}); remove it to start the run over") from None
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise RunDirError(
            f"{path} is not a weightshare checkpoint of version {_VERSION} "
            f"(format {meta.get('format')!r}, version {meta.get('version')!r})"
        )
    missing = [k for k in ("epoch", "optimizer", "method", "history") if k not in meta] + (
        [] if "rng.torch" in tensors else ["rng.torch"]
    )
    if missing:
        raise RunDirError(f"{path} is incomplete: it lacks {', '.join(missing)}")
    return meta, tensors


def _load_model(path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    if set(state) != set(expected):
        extra, lacking = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
        raise RunDirError(f"{path} does not fit the model: extra tensors {extra}, missing tensors {lacking}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise RunDirError(
                f"{path} does not fit the model: {name} has shape {tuple(tensor.shape)} in the checkpoint, "
                f"{tuple(expected[name].shape)} in the model"
            )
    model.load_state_dict(state)


def _load_optimizer(path, optimizer: torch.optim.Optimizer, opt: dict[str, Any], tensors: dict) -> None:
    if len(opt["param_groups"]) != len(optimizer.param_groups):
        raise RunDirError(
            f"{path} holds {len(opt['param_groups'])} optimizer groups but the run builds "
            f"{len(optimizer.param_groups)}: it was written with other settings"
        )
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in opt["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, entry = key.split(".", 2)
            state.setdefault(int(pid), {})[entry] = value
    optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
