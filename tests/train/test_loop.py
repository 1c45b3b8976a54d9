import math

import pytest
import torch

from weightshare.core.errors import TrainingDiverged
from weightshare.core.io import load_tensors
from weightshare.data.datasets import Split
from weightshare.methods.base import Method
from weightshare.models.architectures import build_model
from weightshare.runs.rundir import RunDir
from weightshare.train.config import TrainConfig
from weightshare.train.loop import evaluate, fit, lr_factor


def _small(digits, n=256):
    from weightshare.data.datasets import DataBundle

    return DataBundle("digits", Split(digits.train.x[:n], digits.train.y[:n]), digits.val, digits.test, 10)


def test_loss_falls_on_a_small_subset(digits):
    torch.manual_seed(0)
    model = build_model("mlp")
    before = evaluate(model, digits.train)["loss"]
    result = fit(model, _small(digits), TrainConfig(epochs=8, lr=3e-3), batch_size=32, progress=False)
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    assert evaluate(model, digits.train)["loss"] < 0.5 * before
    assert result.last["val_error"] < 20.0


class _Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted(digits, tmp_path):
    cfg = TrainConfig(epochs=4, lr=2e-3, lr_schedule="cosine", warmup_epochs=1)
    data = _small(digits)

    torch.manual_seed(1)
    whole = build_model("mlp")
    fit(whole, data, cfg, run=RunDir.create(tmp_path / "a", {}), batch_size=32, progress=False)

    torch.manual_seed(1)
    first = build_model("mlp")
    run_b = RunDir.create(tmp_path / "b", {})

    def stop_after_two(epoch, model):
        if epoch == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        fit(first, data, cfg, run=run_b, batch_size=32, progress=False, on_epoch=stop_after_two)
    torch.manual_seed(123)  # a fresh process: different RNG state, fresh model
    second = build_model("mlp")
    result = fit(second, data, cfg, run=run_b, resume=True, batch_size=32, progress=False)
    for (name, a), b in zip(whole.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert len(run_b.read_metrics()) == 4


class _Explode(Method):
    def penalty(self, model):
        return torch.tensor(float("nan"))

    def divergence_hint(self):
        return "Likely cause: a test that makes it explode."


def test_divergence_names_the_epoch_and_keeps_the_checkpoint(digits, tmp_path):
    run = RunDir.create(tmp_path / "run", {})
    model = build_model("mlp")
    fit(model, _small(digits), TrainConfig(epochs=1), run=run, batch_size=64, progress=False)
    saved = load_tensors(run.file("checkpoints", "last.safetensors"))
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch 1: .*not finite.*a test that makes it explode"):
        fit(model, _small(digits), TrainConfig(epochs=1), method=_Explode(), run=run, batch_size=64, progress=False)
    after = load_tensors(run.file("checkpoints", "last.safetensors"))
    assert all(torch.equal(saved[k], after[k]) for k in saved)


def test_grad_clip_bounds_every_step_of_the_weights(digits):
    data = _small(digits, 64)
    steps = []
    for clip in (0.0, 0.05):
        torch.manual_seed(0)
        model = build_model("mlp")
        before = [p.detach().clone() for p in model.parameters()]
        cfg = TrainConfig(epochs=1, optimizer="sgd", lr=1.0, momentum=0.0, grad_clip=clip)
        fit(model, data, cfg, batch_size=64, progress=False)  # one step: the change is lr x the (clipped) gradient
        steps.append(
            math.sqrt(
                sum(float(((p.detach() - b) ** 2).sum()) for p, b in zip(model.parameters(), before, strict=True))
            )
        )
    assert steps[0] > 0.2 and steps[1] == pytest.approx(0.05, rel=1e-4)  # unclipped: 0.207


def test_lr_schedule_shapes():
    cosine = TrainConfig(epochs=10, lr_schedule="cosine", warmup_epochs=2)
    assert lr_factor(cosine, 0, 0, 10) == pytest.approx(0.05)
    assert lr_factor(cosine, 2, 0, 10) == pytest.approx(1.0)
    assert lr_factor(cosine, 6, 0, 10) == pytest.approx(0.5)
    step = TrainConfig(epochs=30, lr_schedule="step", lr_step_epochs=10, lr_step_gamma=0.1)
    assert [lr_factor(step, e, 0, 5) for e in (0, 10, 25)] == pytest.approx([1, 0.1, 0.01])
    assert math.isclose(lr_factor(TrainConfig(), 3, 4, 5), 1.0)


def test_existing_run_directory_is_not_overwritten(tmp_path):
    RunDir.create(tmp_path / "r", {"a": 1})
    from weightshare.core.errors import RunDirError

    with pytest.raises(RunDirError, match="already exists and is not empty"):
        RunDir.create(tmp_path / "r", {"a": 2})
    assert RunDir.open(tmp_path / "r").config == {"a": 1}


def test_an_empty_split_has_no_error_figure():
    result = evaluate(torch.nn.Linear(2, 3), Split(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))
    assert math.isnan(result["error"]) and math.isnan(result["loss"])
