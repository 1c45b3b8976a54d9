"""The ``[train]`` settings of the one training loop: optimizer, schedule, epochs, seed."""

from __future__ import annotations

import dataclasses

from weightshare.core.settings import setting

__all__ = ["TrainConfig"]


@dataclasses.dataclass
class TrainConfig:
    """The one training loop: optimizer, schedule, epochs, seed."""

    model: str = setting("mlp", "architecture", choices=("mlp", "lenet300", "lenet5", "tutorialnet", "wrn16_4", "vit"))
    epochs: int = setting(20, "training epochs", ge=0)
    optimizer: str = setting("adam", "optimizer", choices=("adam", "sgd"))
    lr: float = setting(1e-3, "learning rate of the model's weights", gt=0)
    momentum: float = setting(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = setting(0.0, "L2 weight decay", ge=0)
    lr_schedule: str = setting("none", "learning-rate schedule", choices=("none", "cosine", "step"))
    lr_step_epochs: int = setting(10, "step schedule: epochs between decays", ge=1)
    lr_step_gamma: float = setting(0.1, "step schedule: decay factor", gt=0, le=1)
    warmup_epochs: int = setting(0, "linear learning-rate warm-up (epochs)", ge=0)
    grad_clip: float = setting(
        0.0, "clip the norm of the model weights' gradient to this before each step (0 = off; Yang's gclip)", ge=0
    )
    seed: int = setting(0, "random seed (initialisation, shuffling)", ge=0)
    eval_test: bool = setting(True, "also evaluate on the test set every epoch (for reporting only)")
    threads: int = setting(0, "torch CPU threads (0 = torch's default)", ge=0)
