"""Worker of tests/train/test_distributed.py: a few digits steps of every method, in one process or under torchrun.

``python ddp_equivalence.py OUT`` (one process, batch B) or ``torchrun --nproc_per_node=2 ddp_equivalence.py OUT``
(two ranks, B / 2 each) writes per method ``OUT/<method>_<who>.safetensors``: the model's and the method's state
after the last step, ``who`` = ``single`` or ``rank<r>``. Under torchrun, after every optimizer step the ranks
all_gather every tensor of the model, of the method's state and of the method's own parameters and compare them
exactly; ``OUT/<method>_rank<r>.json`` says how many steps were compared and which differed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist
from safetensors.torch import save_file

from weightshare.data.config import DataConfig
from weightshare.data.datasets import DataBundle, Split, load_data
from weightshare.methods import AdmmConfig, DCConfig, PWFNConfig, SWSConfig, build_method
from weightshare.models.architectures import build_model
from weightshare.train.distributed import session
from weightshare.train.loop import fit

BATCH = 32
STEPS_PER_EPOCH = 4


def recipes() -> dict[str, object]:
    """Short recipes that reach every kind of method state: the mixture, both DC phases (masks, tied
    centroids), ADMM's penalty, projections and fine-tuning (no penalty), PWFN's sigmas and fixing rounds."""
    sws = SWSConfig.preset("digits")
    sws.train.epochs = 2
    sws.tau = 3.0  # a strong prior: its gradient dominates, so a wrongly scaled penalty shows
    dc = DCConfig.preset("digits")
    dc.prune_rounds, dc.prune_epochs, dc.quant_epochs, dc.train.epochs = 2, 1, 1, 3
    admm = AdmmConfig.preset("digits")
    admm.prox, admm.finetune_epochs, admm.train.epochs, admm.train.warmup_epochs = False, 1, 3, 0
    admm.projint = admm.dualint = 3
    pwfn = PWFNConfig.preset("digits")
    pwfn.schedule, pwfn.first_epochs, pwfn.rest_epochs, pwfn.train.epochs = [0.3, 0.6, 1.0], 1, 1, 3
    return {"sws": sws, "dc": dc, "admm": admm, "pwfn": pwfn}


def small_digits() -> DataBundle:
    """4 full batches of training data (no padded last batch), odd-sized validation and test splits."""
    data = load_data(DataConfig(dataset="digits"))
    n = BATCH * STEPS_PER_EPOCH
    return dataclasses.replace(
        data, train=Split(data.train.x[:n], data.train.y[:n]), val=Split(data.val.x[:61], data.val.y[:61])
    )


def _flat_state(model, method) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.detach() for k, v in model.state_dict().items()}
    state |= {f"method.{k}": v.detach() for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}
    for i, group in enumerate(method.parameters()):
        state |= {f"param.{i}.{j}": p.detach() for j, p in enumerate(group["params"])}
    return state


def _watch(method, model, world: int, log: dict) -> None:
    """After every step, all_gather every value of ``_flat_state`` and record the names that differ."""
    inner = method.after_step

    def after_step(net, ctx):
        inner(net, ctx)
        state = _flat_state(model, method)
        flat = torch.cat([v.double().reshape(-1) for v in state.values()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        torch_dist.all_gather(gathered, flat)
        offset, differ = 0, []
        for name, value in state.items():
            part = slice(offset, offset + value.numel())
            if any(not torch.equal(g[part], flat[part]) for g in gathered):
                differ.append(name)
            offset += value.numel()
        log["steps"] += 1
        log["differ"] += [f"step {log['steps']}: {name}" for name in differ]

    method.after_step = after_step


def _train_with_batch_norm(data: DataBundle, dist, path: Path) -> None:
    """Plain training of a network with batch norm: its running statistics, buffers that each rank updates
    from its own examples, must not make the ranks differ at the end of an epoch (fit checks it)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    fit(model, data, dataclasses.replace(recipes()["sws"].train, epochs=2), batch_size=BATCH, progress=False, dist=dist)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def run(out: Path) -> None:
    data = small_digits()
    with session() as dist:
        who = "single" if dist is None else f"rank{dist.rank}"
        for name, config in recipes().items():
            torch.manual_seed(0)
            model = build_model("mlp", data.num_classes)
            method = build_method(config, model, len(data.train))
            method.check_train(config.train)
            log = {"steps": 0, "differ": []}
            if dist is not None:
                _watch(method, model, dist.world_size, log)
            fit(model, data, config.train, method=method, batch_size=BATCH, progress=False, dist=dist)
            tensors = {k: v.contiguous().clone() for k, v in _flat_state(model, method).items()}
            save_file(tensors, str(out / f"{name}_{who}.safetensors"))
            (out / f"{name}_{who}.json").write_text(json.dumps(log))
        _train_with_batch_norm(data, dist, out / f"batchnorm_{who}.safetensors")
        if dist is not None:  # the per-epoch check of fit must notice ranks that differ
            try:
                dist.check_identical({"same": torch.ones(3), "differs": torch.full((2,), float(dist.rank))}, "here")
            except RuntimeError as exc:
                (out / f"check_{who}.txt").write_text(str(exc))


if __name__ == "__main__":
    run(Path(sys.argv[1]))
