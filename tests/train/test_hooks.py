"""The loop's contract: which hooks run when, with which context."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightshare.data.datasets import DataBundle, Split
from weightshare.train.config import TrainConfig
from weightshare.train.hooks import TrainContext, TrainingHooks
from weightshare.train.loop import fit


class _Recorder(TrainingHooks):
    progress_keys = ("calls",)

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, int, float]] = []
        self.epochs: list[tuple[int, int, bool]] = []

    def after_step(self, model: nn.Module, ctx: TrainContext) -> None:
        self.steps.append((ctx.epoch, ctx.step, ctx.global_step, ctx.lr))

    def on_epoch_end(self, model: nn.Module, ctx: TrainContext) -> None:
        self.epochs.append((ctx.epoch, ctx.epochs, ctx.last_step_of_epoch))

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        return {"calls": float(len(self.steps))}


def _data(n: int) -> DataBundle:
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randn(n, 4, generator=gen), torch.randint(0, 2, (n,), generator=gen))
    return DataBundle("toy", split, split, split, num_classes=2)


def test_the_loop_hands_every_hook_where_training_stands():
    hooks = _Recorder()
    cfg = TrainConfig(epochs=2, lr=0.1, lr_schedule="cosine", eval_test=False)
    result = fit(nn.Linear(4, 2), _data(10), cfg, method=hooks, batch_size=4, progress=False)
    assert [(e, s, g) for e, s, g, _ in hooks.steps] == [
        (0, 0, 0),
        (0, 1, 1),
        (0, 2, 2),
        (1, 0, 3),
        (1, 1, 4),
        (1, 2, 5),
    ]
    assert hooks.steps[0][3] == pytest.approx(0.1)  # cosine: full rate at the start ...
    assert hooks.steps[-1][3] == pytest.approx(0.1 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 5 / 6)).item()))
    assert hooks.epochs == [(0, 2, True), (1, 2, True)]
    assert [row["calls"] for row in result.history] == [3.0, 6.0]


def test_lr_of_finds_the_group_holding_a_parameter():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.7}])
    ctx = TrainContext(opt)
    assert ctx.lr == pytest.approx(0.1) and ctx.lr_of(b) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="does not update"):
        ctx.lr_of(nn.Parameter(torch.zeros(1)))


def test_plain_hooks_change_nothing():
    torch.manual_seed(0)
    plain, hooked = nn.Linear(4, 2), nn.Linear(4, 2)
    hooked.load_state_dict(plain.state_dict())
    cfg = TrainConfig(epochs=1, eval_test=False)
    fit(plain, _data(8), cfg, batch_size=4, progress=False)
    fit(hooked, _data(8), cfg, method=TrainingHooks(), batch_size=4, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), hooked.parameters(), strict=True))
