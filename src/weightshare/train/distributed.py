"""Data-parallel training under ``torchrun``: everything the one loop needs to run on N processes.

``torchrun --nproc_per_node=N -m weightshare compress ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in the environment; :func:`session` joins them into one
process group (gloo on CPU, NCCL on CUDA). Without those variables (or with ``WORLD_SIZE=1``) it yields
None and every stage runs exactly as in one process. How the pieces keep N processes equal to one:

* **Batches.** ``batch_size`` stays the *global* batch: each rank takes ``batch_size / N`` examples per
  step from a :class:`~torch.utils.data.DistributedSampler` seeded like the one-process shuffling
  (:func:`weightshare.data.datasets.batches`: ``randperm`` seeded with ``seed + epoch``, reshuffled every
  epoch by ``set_epoch``). Its shards interleave, so step s of the N ranks together covers exactly the
  examples of step s of one process with the whole batch.
* **Model gradients.** The model is wrapped in DistributedDataParallel, which averages its gradients.
  Every rank adds the method's penalty *in full*: the penalty is the same on every rank (it depends on
  the weights only), so the average of N (task_r + penalty) is mean task + penalty, as in one process
  (adding it on rank 0 alone would give penalty / N; dividing it by N likewise).
* **Method parameters** (the mixture, DC's centroids, PWFN's sigmas) stay *outside* DDP and their
  gradients are averaged here (:meth:`Distributed.average_gradients`). Inside DDP they would break it:
  the penalty is computed outside the module's forward, and a parameter that gets no gradient in a step
  (a method that skips its penalty, e.g. ADMM while fine-tuning) fails DDP's reduction unless
  ``find_unused_parameters``, which in turn refuses a gradient arriving from outside the forward.
* **Buffers** (batch-norm statistics) follow rank 0's, as DDP broadcasts them before every forward; at the
  end of each epoch every rank takes rank 0's (:meth:`Distributed.broadcast_buffers`).
* **Method state** (masks, duals, projections, fixed sets) is updated by every rank from equal weights
  with the same deterministic code, so it stays equal; :meth:`Distributed.check_identical` verifies it
  (and the model) at the end of every epoch rather than assuming it.
* **Evaluation** shards the split without padding (contiguous ranges) and sums the correct counts and
  losses over the ranks: each image is seen exactly once.
* **Files.** Only rank 0 (:attr:`Distributed.is_main`) writes the run directory; the others only read
  its checkpoint on ``--resume``.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from weightshare.core.errors import ConfigError
from weightshare.data.datasets import Augmentation, Split

__all__ = ["Distributed", "is_main_process", "launched", "session"]

# Rank 0 evaluates and writes files while the others wait in the next collective: give it time.
_TIMEOUT = timedelta(hours=2)


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` launch, or a process started on its own: the one that writes and prints."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run: rank, number of ranks, and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- batches ---------------------------------------------------------------------------------------
    def local_batch(self, batch_size: int) -> int:
        """Examples per rank and step; the global ``batch_size`` must split evenly over the ranks."""
        if batch_size % self.world_size:
            raise ConfigError(
                f"setting 'batch_size' is {batch_size}, which does not split over {self.world_size} processes: "
                f"use a multiple of {self.world_size} (it is the global batch; each process takes 1/{self.world_size})"
            )
        return batch_size // self.world_size

    def batches(
        self, split: Split, batch_size: int, *, seed: int, epoch: int, augment: Augmentation | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's mini-batches of epoch ``epoch``: its share of what one process gets with ``seed + epoch``."""
        local = self.local_batch(batch_size)
        sampler = DistributedSampler(
            range(len(split)), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed
        )
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64)
        generator = torch.Generator().manual_seed((seed + epoch) * self.world_size + self.rank)
        for start in range(0, len(order), local):
            idx = order[start : start + local]
            x = split.x[idx]
            if augment is not None:  # each rank draws its own shifts and flips
                x = augment(x, generator)
            yield x, split.y[idx]

    def steps(self, n: int, batch_size: int) -> int:
        """Steps per epoch: the sampler pads n to a multiple of the ranks, so every rank takes as many."""
        per_rank = -(-n // self.world_size)
        return -(-per_rank // self.local_batch(batch_size))

    # --- model and gradients -------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """The model in DistributedDataParallel (its parameters and buffers broadcast from rank 0)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    @torch.no_grad()
    def average_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Average the gradients of parameters outside DDP over the ranks, as DDP does for the model's.

        A parameter without a gradient on every rank keeps none (an optimizer then skips it, as in one
        process); one with a gradient on some ranks only gets their sum / N, DDP's rule for unused ones.
        """
        if not params:
            return
        flat = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
        present = torch.tensor([p.grad is not None for p in params], dtype=flat[0].dtype, device=flat[0].device)
        buffer = torch.cat([*flat, present])
        torch_dist.all_reduce(buffer)
        buffer /= self.world_size
        offset = 0
        for p, has in zip(params, buffer[-len(params) :].tolist(), strict=True):
            part = buffer[offset : offset + p.numel()].view_as(p)
            p.grad = part.to(p.dtype, copy=True) if has > 0 else None
            offset += p.numel()

    @torch.no_grad()
    def broadcast_buffers(self, model: nn.Module) -> None:
        """Every rank takes rank 0's buffers (e.g. batch-norm running statistics, which each rank updates from
        its own examples). DDP does the same at the start of every forward; at the end of an epoch it makes the
        evaluation, the checks and the checkpoint see one model."""
        for buffer in model.buffers():
            torch_dist.broadcast(buffer, src=0)

    def sum(self, values: Sequence[float]) -> list[float]:
        """The sums over the ranks of a few numbers (float64)."""
        total = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(total)
        return total.tolist()

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n items; the parts cover each item exactly once (no padding)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    # --- consistency ------------------------------------------------------------------------------------
    def check_identical(self, state: dict[str, Any], when: str) -> None:
        """Refuse ranks whose ``state`` (tensors and plain values) differs, naming the entries that differ."""
        digests = {name: _digest(value) for name, value in state.items()}
        gathered: list[dict[str, str]] = [{} for _ in range(self.world_size)]
        torch_dist.all_gather_object(gathered, digests)
        differ = sorted(name for name in digests if any(g.get(name) != digests[name] for g in gathered))
        if differ:
            shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
            raise RuntimeError(f"the {self.world_size} processes disagree {when} on {shown}")

    def barrier(self) -> None:
        torch_dist.barrier()


def _digest(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        return hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
    return repr(value)


def _device() -> torch.device:
    """CUDA device ``LOCAL_RANK`` where CUDA is present (NCCL), else the CPU (gloo)."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


@contextmanager
def session() -> Iterator[Distributed | None]:
    """The process group of a ``torchrun`` launch for the block (None when started on its own).

    Joins the group from torchrun's environment (one made by the caller, e.g. Lightning, is used as is
    and left open) and leaves it when the block ends, once every rank has got there.
    """
    if not launched():
        yield None
        return
    device = _device()
    created = not torch_dist.is_initialized()
    if created:
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=_TIMEOUT)
    try:
        yield Distributed(torch_dist.get_rank(), torch_dist.get_world_size(), device)
        # Nobody tears down its connections while another rank may still be in a collective with it (rank 0
        # writes the results while the others wait here). Not after an exception: the others may be inside
        # a collective, and torchrun stops them all once one process fails.
        torch_dist.barrier()
    finally:
        if created:
            # DDP wrappers hold the group and sit in reference cycles; freed only at interpreter shutdown, the
            # gloo group's worker threads drop their tensors without a live interpreter and the process aborts
            # ("terminate called without an active exception", seen once in a loaded test run after every
            # result was written). Collect them now, then leave the group.
            gc.collect()
            torch_dist.destroy_process_group()
