"""Knowledge distillation from the pretrained model during any method's retraining (the ``[distill]`` section).

Every method retrains a network that was already good, and drifts away from it: soft weight-sharing's
prior pulls the weights to a few values, Deep Compression prunes and re-clusters, ADMM projects. A frozen
copy of the pretrained network, the *teacher*, can hold the retrained *student* to the function it
started from (Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network", Sec. 2):

    loss = CE(student(x), y) + kd_weight * T^2 * KL( softmax(teacher(x) / T) || softmax(student(x) / T) )

with temperature ``T = kd_temp``. The T^2 keeps the soft term's gradients on the scale of the hard one's
as T changes (ibid.: the gradients of the soft term scale as 1/T^2). The term is zero when the student
reproduces the teacher, so the logged penalty reads as "how far from the pretrained function".

Yang et al. (2020)'s ADMM code distils with ``T * CE(softmax(teacher / T), log_softmax(student / T))``:
the same gradient as ``kd_weight = 1 / T`` here (the two losses differ by T times the teacher's entropy,
a constant); docs/methods.md#distill.

The teacher is the model as the retraining starts: the pretrained weights, also when a run resumes (the
checkpoint is restored after the teacher is taken). The codebook fine-tuning of ``[finish]`` does not
distil.

>>> import torch
>>> z = torch.tensor([[2.0, 0.0, -1.0]])
>>> float(distillation_loss(z, z, 2.0))  # the student reproduces the teacher: no loss
0.0
>>> round(float(distillation_loss(torch.zeros(1, 3), z, 2.0)), 4)  # T^2 KL(softmax(z/2) || uniform)
0.7706
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from weightshare.core.settings import setting

__all__ = ["DistillConfig", "Distillation", "distillation_loss"]


@dataclasses.dataclass
class DistillConfig:
    """Distillation from the pretrained model during the retraining (off unless ``kd_temp`` > 0).

    >>> DistillConfig().kd_temp, DistillConfig().kd_weight
    (0.0, 1.0)
    """

    kd_temp: float = setting(
        0.0, "distil from the pretrained model at this temperature T during the retraining (0 = off)", ge=0
    )
    kd_weight: float = setting(1.0, "weight of the distillation term kd_weight * T^2 * KL(teacher || student)", ge=0)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (Hinton et al. 2015).

    ``student`` and ``teacher`` are logits shaped (batch, classes); the gradient flows into ``student`` only.

    >>> s = torch.tensor([[1.0, 0.0]], requires_grad=True)
    >>> distillation_loss(s, torch.tensor([[0.0, 1.0]]), 1.0).backward()
    >>> [round(g, 4) for g in s.grad[0].tolist()]  # T * (softmax(s/T) - softmax(t/T))
    [0.4621, -0.4621]
    """
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student and teacher logits must both be (batch, classes); got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"the distillation temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return temperature**2 * kl


class Distillation:
    """A frozen copy of ``model`` as it is now (the teacher) and the loss that holds a student to it.

    >>> net = nn.Linear(3, 2)
    >>> kd = Distillation(net, DistillConfig(kd_temp=2.0, kd_weight=0.5))
    >>> x = torch.randn(4, 3)
    >>> float(kd.loss(x, net(x)).detach())  # the student is still the teacher
    0.0
    >>> with torch.no_grad():
    ...     _ = net.weight[0].add_(1.0)  # the student moves away
    >>> float(kd.loss(x, net(x)).detach()) > 0, kd.teacher.weight.requires_grad
    (True, False)
    """

    def __init__(self, model: nn.Module, config: DistillConfig) -> None:
        if config.kd_temp <= 0:
            raise ValueError(f"setting 'kd_temp' must be > 0 to distil, got {config.kd_temp}")
        self.config = config
        self.teacher = copy.deepcopy(model).eval()  # eval: BatchNorm statistics and dropout of the pretrained net
        self.teacher.requires_grad_(False)

    @classmethod
    def maybe(cls, model: nn.Module, config: DistillConfig) -> Distillation | None:
        """A teacher when ``config`` turns distillation on, else None."""
        return cls(model, config) if config.kd_temp > 0 else None

    def loss(self, x: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """``kd_weight * T^2 * KL(teacher || student)`` on the batch ``x``."""
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return self.config.kd_weight * distillation_loss(student_logits, teacher_logits, self.config.kd_temp)
