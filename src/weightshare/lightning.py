"""Any weightshare method inside a user's own Lightning ``Trainer`` (``pip install 'weightshare[lightning]'``).

:class:`WeightshareCallback` drives the same :class:`~weightshare.methods.base.Method` hooks as the one loop
(``docs/architecture.md``, the Method contract), on the user's ``LightningModule``:

* ``on_fit_start``: the method is built on the module (already on its device, inside DDP if the strategy is
  one) and its own parameters join the first optimizer as extra groups;
* every training step: the method's penalty is added to the loss ``training_step`` returns (inside DDP's
  forward, so every rank adds it in full; :mod:`weightshare.train.distributed`), and before each optimizer
  step the gradients of the method's own parameters, which are outside DDP, are averaged over the ranks;
* after each optimizer step ``after_step`` (projections, masks), after each epoch ``on_epoch_end`` (schedules)
  and the method's epoch metrics logged as ``weightshare/<name>``;
* at the end of fit ``finalize``: every rank loads the quantized weights into the module (so
  ``trainer.test`` measures what the file holds), rank 0 writes the run directory ``out`` with
  ``quantized.safetensors``, ``model.wsz`` and ``report.json`` (built from the file; its ``errors`` are
  empty, as the callback has no test set: ``trainer.test`` after fit measures the file's accuracy).

Not applied: batch-dependent extra losses (``extra_loss``), which need the module's logits; the ``[finish]``
stages, which need a data set. Distillation (``[distill] kd_temp``) is refused with a pointer to
:class:`~weightshare.train.distill.Distillation`, whose ``loss(x, logits)`` a ``training_step`` adds itself.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("weightshare.lightning needs Lightning: pip install 'weightshare[lightning]'") from exc

from weightshare.codec import save_compressed
from weightshare.core.errors import ConfigError
from weightshare.core.io import write_json
from weightshare.core.quantized import QuantizedModel, save_quantized
from weightshare.core.settings import validate
from weightshare.methods import build_method, method_class
from weightshare.methods.base import Method, MethodConfig
from weightshare.report.run_report import build_report
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import COMPRESSED, QUANTIZED, REPORT
from weightshare.train.distributed import Distributed
from weightshare.train.hooks import TrainContext

__all__ = ["WeightshareCallback"]


class WeightshareCallback(Callback):
    """Compress a ``LightningModule`` with the method of ``config`` while a ``Trainer`` fits it.

    ``config``'s type picks the method (``SWSConfig`` -> soft weight-sharing); its method settings apply,
    its ``[train]`` section only says how many epochs a schedule of rounds needs (the Trainer's
    ``max_epochs`` must match it). ``n_train``: the number of training examples (soft weight-sharing
    scales its prior by tau / n_train). ``out``: the run directory rank 0 writes at the end of fit. Under
    DDP, seed every process alike (``lightning.pytorch.seed_everything``) so that a method's noise (PWFN)
    is drawn alike on every rank, as one process would draw it for the whole batch.

    >>> from weightshare import DCConfig
    >>> callback = WeightshareCallback(DCConfig.preset("digits"), "runs/lightning-dc", n_train=1257)
    >>> callback.method is None  # built when fitting starts, on the module the Trainer fits
    True
    """

    def __init__(self, config: MethodConfig, out: str | os.PathLike, *, n_train: int) -> None:
        method_class(config)  # not a method's config: refused at once
        self.config = validate(copy.deepcopy(config))
        if self.config.distill.kd_temp > 0:  # refused, not skipped: the callback never sees the batch's logits
            raise ConfigError(
                "setting 'kd_temp' (section [distill]) is not applied by WeightshareCallback, which does not see "
                "the batch's logits: set it to 0 here and add weightshare.Distillation(model, DistillConfig(...))"
                ".loss(x, logits) to the loss your training_step returns"
            )
        self.out, self.n_train = Path(out), n_train
        self.method: Method | None = None
        self.qmodel: QuantizedModel | None = None
        self.report: dict[str, Any] | None = None
        self._stashed: dict[str, Any] | None = None
        self._outside: list[nn.Parameter] = []
        self._steps_seen = 0

    # --- start: the method on the module, its parameters in the optimizer -----------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            RunDir.check_new(self.out)  # refused before any training, not after it

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.method = build_method(self.config, pl_module, self.n_train)
        # A schedule of rounds needs a fixed number of epochs: the Trainer's.
        self.method.check_train(dataclasses.replace(self.config.train, epochs=trainer.max_epochs))
        if self._stashed is not None:
            self.method.load_state_dict(self._stashed)
        optimizer = trainer.optimizers[0]
        for group in self.method.parameters():
            optimizer.add_param_group({"weight_decay": 0.0, **group})
        self._outside = [p for group in self.method.parameters() for p in group["params"]]
        self._steps_seen = trainer.global_step
        self._add_penalty(pl_module)

    def _add_penalty(self, pl_module: LightningModule) -> None:
        """``training_step`` returns its loss plus the method's penalty (run inside DDP's forward)."""
        user_step, method = type(pl_module).training_step.__get__(pl_module), self.method

        def training_step(*args: Any, **kwargs: Any) -> Any:
            out = user_step(*args, **kwargs)
            penalty = method.penalty(pl_module)
            if penalty is None or out is None:
                return out
            if isinstance(out, dict):
                return {**out, "loss": out["loss"] + penalty}
            return out + penalty

        pl_module.training_step = training_step

    # --- every step and epoch ----------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if trainer.world_size > 1:
            Distributed(trainer.global_rank, trainer.world_size, pl_module.device).average_gradients(self._outside)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._steps_seen:
            return  # gradients being accumulated: no optimizer step yet
        self._steps_seen = trainer.global_step
        self.method.after_step(pl_module, self._context(trainer, batch_idx))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        steps = max(int(trainer.num_training_batches), 1)
        self.method.on_epoch_end(pl_module, self._context(trainer, steps - 1))
        metrics = {f"weightshare/{k}": float(v) for k, v in self.method.epoch_metrics(pl_module).items()}
        pl_module.log_dict(metrics, on_epoch=True, on_step=False, sync_dist=True)  # alike on every rank anyway

    @staticmethod
    def _context(trainer: Trainer, step: int) -> TrainContext:
        steps = max(int(trainer.num_training_batches), 1)
        return TrainContext(trainer.optimizers[0], trainer.current_epoch, step, steps, int(trainer.max_epochs))

    # --- end: the common result, the file, the report -------------------------------------------------------
    @torch.no_grad()
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.__dict__.pop("training_step", None)  # the user's own again
        self.qmodel = self.method.finalize(pl_module)
        self.qmodel.meta.setdefault("method", self.config.method)
        self.qmodel.load_into(pl_module)  # every rank: the module now holds what the file holds
        if trainer.is_global_zero:
            self.report = self._write(self.qmodel)

    def _write(self, qmodel: QuantizedModel) -> dict[str, Any]:
        record = {"command": "lightning", "method": self.config.method, **self.config.sections()}
        run = RunDir.create(self.out, record)
        for name, value in self.method.records().items():
            run.write_record(name, value)
        save_quantized(qmodel, run.path_of(QUANTIZED))
        nbytes = save_compressed(qmodel, run.path_of(COMPRESSED))
        report = build_report(run, errors={}, written_bytes=nbytes)
        report["method_summary"] = self.method.summary()
        write_json(run.path_of(REPORT), report)  # no summary.json: no error was measured here
        return report

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pl_module.__dict__.pop("training_step", None)  # also when fit stopped early

    # --- Lightning checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.method.state_dict() if self.method is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._stashed = dict(state_dict) or None  # applied once the method is built (on_fit_start)
