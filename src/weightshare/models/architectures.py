"""Reference architectures, in a registry by name.

All models are ordinary ``nn.Module`` s taking N×C×H×W images; the compressed
file loads back into exactly these classes (no special layers).

| name          | data             | parameters |
|---------------|------------------|------------|
| ``lenet300``  | MNIST            | 266,610    |
| ``lenet5``    | MNIST            | 431,080    |
| ``tutorialnet`` | MNIST          | 642,460    |
| ``wrn16_4``   | CIFAR-10/100     | 2,748,890 (CIFAR-10) |
| ``mlp``       | digits (8×8)     | 17,226     |
| ``vit``       | MNIST, Fashion-MNIST | 139,018 (:mod:`weightshare.models.vit`) |
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from weightshare.models.vit import VisionTransformer, ViTConfig

__all__ = [
    "build_model",
    "MODELS",
    "count_parameters",
    "LeNet300",
    "LeNet5",
    "TutorialNet",
    "WideResNet",
    "MLP",
    "VisionTransformer",
]


class MLP(nn.Module):
    """Fully connected ReLU network on flattened images."""

    def __init__(self, sizes: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class LeNet300(MLP):
    """LeNet-300-100: 784-300-100-10 with ReLU."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__((784, 300, 100, num_classes))


class LeNet5(nn.Module):
    """LeNet-5-Caffe: no ReLU after the convolutions, as in the Caffe prototxt."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class TutorialNet(nn.Module):
    """The network of the original Keras soft weight-sharing tutorial (642K parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 25, 5, stride=2)
        self.conv2 = nn.Conv2d(25, 50, 3, stride=2)
        self.fc1 = nn.Linear(50 * 5 * 5, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class _WideBlock(nn.Module):
    """Pre-activation residual block (Zagoruyko & Komodakis 2016), no dropout."""

    def __init__(self, fan_in: int, fan_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(fan_in)
        self.conv1 = nn.Conv2d(fan_in, fan_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(fan_out)
        self.conv2 = nn.Conv2d(fan_out, fan_out, 3, 1, 1, bias=False)
        same = fan_in == fan_out and stride == 1
        self.shortcut = None if same else nn.Conv2d(fan_in, fan_out, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-width for 32×32 inputs; ``WideResNet(16, 4)`` is the paper's "ResNet light"."""

    def __init__(self, depth: int = 16, width: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        for group in range(3):
            for i in range(n):
                fan_in = widths[group] if i == 0 else widths[group + 1]
                blocks.append(_WideBlock(fan_in, widths[group + 1], (1 if group == 0 else 2) if i == 0 else 1))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "mlp": lambda classes: MLP((64, 128, 64, classes)),
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "tutorialnet": TutorialNet,
    "wrn16_4": lambda classes: WideResNet(16, 4, classes),
    "vit": lambda classes: VisionTransformer(ViTConfig(num_classes=classes)),
}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a registered architecture.

    >>> count_parameters(build_model("lenet300"))
    266610
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
