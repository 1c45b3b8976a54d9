"""Distillation from the pretrained model (train/distill.py): the loss, the frozen teacher, the loop and compress."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from weightshare.core.io import load_tensors
from weightshare.data.datasets import DataBundle, Split
from weightshare.methods import AdmmConfig, DCConfig
from weightshare.models.architectures import build_model
from weightshare.pipeline.compress import compress
from weightshare.train.config import TrainConfig
from weightshare.train.distill import Distillation, DistillConfig, distillation_loss
from weightshare.train.loop import fit


def test_loss_is_t_squared_kl_and_its_gradient_is_t_times_the_softmax_gap():
    torch.manual_seed(0)
    student = torch.randn(5, 4, requires_grad=True)
    teacher = torch.randn(5, 4)
    for temperature in (1.0, 2.0, 4.0):
        p_t = torch.softmax(teacher / temperature, 1)
        p_s = torch.softmax(student.detach() / temperature, 1)
        want = temperature**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
        loss = distillation_loss(student, teacher, temperature)
        assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
        student.grad = None
        loss.backward()
        # Hinton et al. 2015, Sec. 2: dC/dz_i = (q_i - p_i) / T for the soft cross-entropy; times T^2, per example
        assert torch.allclose(student.grad, temperature * (p_s - p_t) / 5, atol=1e-6)


def test_loss_refuses_mismatched_logits_and_a_zero_temperature():
    with pytest.raises(ValueError, match=r"\(batch, classes\); got \(2, 3\) and \(2, 4\)"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), 2.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="'kd_temp' must be > 0"):
        Distillation(torch.nn.Linear(2, 2), DistillConfig())
    assert Distillation.maybe(torch.nn.Linear(2, 2), DistillConfig()) is None


def test_the_teacher_is_frozen_in_evaluation_mode_and_stays_what_the_model_was():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    kd = Distillation(model, DistillConfig(kd_temp=2.0, kd_weight=0.5))
    x = torch.randn(16, 4)
    before = kd.teacher(x).clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        loss = F.cross_entropy(model(x), torch.zeros(16, dtype=torch.long)) + kd.loss(x, model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not kd.teacher.training and all(not p.requires_grad and p.grad is None for p in kd.teacher.parameters())
    assert torch.equal(kd.teacher(x), before)  # neither the student's steps nor its BatchNorm statistics reach it
    logits = model(x)
    want = 0.5 * float(distillation_loss(logits.detach(), before, 2.0))
    assert float(kd.loss(x, logits).detach()) == pytest.approx(want)


def _kl_to(teacher: torch.nn.Module, student: torch.nn.Module, split: Split) -> float:
    with torch.no_grad():
        return float(distillation_loss(student(split.x), teacher(split.x), 1.0))


def test_fit_with_distillation_keeps_the_student_near_the_pretrained_function(digits):
    torch.manual_seed(0)
    pretrained = build_model("mlp")
    fit(pretrained, digits, TrainConfig(epochs=6, lr=2e-3), batch_size=32, progress=False)
    # Retraining on 64 images at a high rate drifts away from what the pretrained network computes.
    few = DataBundle("digits", Split(digits.train.x[:64], digits.train.y[:64]), digits.val, digits.test, 10)
    drift = TrainConfig(epochs=15, lr=1e-2)
    kl = {}
    for temp in (0.0, 2.0):
        student = build_model("mlp")
        student.load_state_dict(pretrained.state_dict())
        distill = Distillation.maybe(student, DistillConfig(kd_temp=temp))
        result = fit(student, few, drift, batch_size=16, progress=False, distill=distill)
        kl[temp] = _kl_to(pretrained, student, digits.test)
        if temp:  # the distillation term is in the logged penalty; plain training logs none
            assert all(row["penalty"] > 0 for row in result.history)
        else:
            assert all(row["penalty"] == 0 for row in result.history)
    # Measured: KL(pretrained || student) on the test images 0.36 without, 0.044 with (T = 2); seed 3: 0.29, 0.049.
    assert kl[2.0] < 0.3 * kl[0.0]


def test_compress_distils_from_the_pretrained_model_before_the_method_touches_it(pretrained, tmp_path, monkeypatch):
    """ADMM prunes the model as it is built: the teacher must be taken before, and recorded in config.json."""
    teachers = []
    original = Distillation.__init__

    def record(self, model, config):
        original(self, model, config)
        teachers.append({k: v.clone() for k, v in self.teacher.state_dict().items()})

    monkeypatch.setattr(Distillation, "__init__", record)
    config = AdmmConfig.preset("digits")
    config = dataclasses.replace(
        config,
        finetune_epochs=0,
        train=dataclasses.replace(config.train, epochs=1, warmup_epochs=0),
        distill=DistillConfig(kd_temp=2.0, kd_weight=0.5),
    )
    compress(pretrained, config, tmp_path / "admm", progress=False)
    pretrained = load_tensors(tmp_path / "admm" / "model_init.safetensors")
    assert len(teachers) == 1
    assert all(torch.equal(teachers[0][k], pretrained[k]) for k in pretrained)
    assert any(int((v == 0).sum()) == 0 for k, v in pretrained.items() if k.endswith("weight"))  # dense teacher
    stored = json.loads((tmp_path / "admm" / "config.json").read_text())
    assert stored["distill"] == {"kd_temp": 2.0, "kd_weight": 0.5}


def test_compress_without_distillation_builds_no_teacher(pretrained, tmp_path, monkeypatch):
    monkeypatch.setattr(Distillation, "__init__", lambda *a: pytest.fail("no teacher without kd_temp"))
    config = DCConfig.preset("digits")
    config = dataclasses.replace(
        config, prune_rounds=1, prune_epochs=1, quant_epochs=1, train=dataclasses.replace(config.train, epochs=2)
    )
    report = compress(pretrained, config, tmp_path / "dc", progress=False)
    assert report["method"] == "dc"
