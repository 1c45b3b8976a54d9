"""The Method contract, for every registered method: build -> 1 epoch on digits -> finalize -> file -> decode.

Whatever a method does inside, what it hands the pipeline must hold the common result's
invariants, and the file must give back exactly that result.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightshare.codec import inspect, load_compressed, save_compressed
from weightshare.methods import METHODS, build_method
from weightshare.methods.base import Method, MethodConfig
from weightshare.models.architectures import build_model
from weightshare.train.config import TrainConfig
from weightshare.train.loop import fit

# One epoch of each method's digits recipe: the schedules of rounds must fit in it.
ONE_EPOCH = {
    "sws": {"train": {"epochs": 1}},
    "dc": {"train": {"epochs": 1}, "dc": {"prune_rounds": 1, "prune_epochs": 1, "quant_epochs": 0}},
    "pwfn": {"train": {"epochs": 1}, "pwfn": {"schedule": [1.0], "first_epochs": 1}},
    "admm": {"train": {"epochs": 1}, "admm": {"finetune_epochs": 0}},
}


def test_every_registered_method_is_covered_here():
    assert sorted(cls.method for cls in METHODS) == sorted(ONE_EPOCH)


class TiedTokens(nn.Module):
    """An embedding tied to the output layer, as in most language models (pixels as 17 intensity tokens),
    with a bare ``nn.Parameter`` for the positions."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(17, 24)
        self.position = nn.Parameter(torch.zeros(64, 24))
        self.body = nn.Linear(24, 24)
        self.head = nn.Linear(24, 17, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = (x.flatten(1) * 16).round().long()
        hidden = torch.relu(self.body(self.embed(tokens) + self.position)).mean(1)
        return self.head(hidden)[:, : self.num_classes]


class RowAttention(nn.Module):
    """Image rows as tokens through ``nn.MultiheadAttention`` (its input projection is a bare parameter)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(x.reshape(-1, 8, 8))
        attended, _ = self.attention(hidden, hidden, hidden, need_weights=False)
        return self.head(self.norm(hidden + attended).mean(1))


ARCHITECTURES = {
    "mlp": lambda classes: build_model("mlp", classes),
    "tied": TiedTokens,
    "attention": RowAttention,
}


@pytest.fixture(scope="module")
def pretrained(digits):
    """Three epochs of each architecture on digits, built on first use."""
    states = {}

    def get(arch: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        if arch not in states:
            torch.manual_seed(0)
            model = ARCHITECTURES[arch](digits.num_classes)
            fit(model, digits, TrainConfig(epochs=3, lr=2e-3), batch_size=32, progress=False)
            states[arch] = model.state_dict()
        model = ARCHITECTURES[arch](digits.num_classes)
        model.load_state_dict(states[arch])
        return model, states[arch]

    return get


def _recipe(name: str) -> MethodConfig:
    cls = next(c for c in METHODS if c.method == name)
    return cls.preset("digits").updated(ONE_EPOCH[name])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("name", sorted(ONE_EPOCH))
def test_method_contract(name, arch, digits, pretrained, tmp_path):
    config = _recipe(name)
    model, _ = pretrained(arch)
    torch.manual_seed(0)
    method = build_method(config, model, len(digits.train))
    assert isinstance(method, Method) and method.name == name
    method.check_train(config.train)
    fit(model, digits, config.train, method=method, batch_size=64, progress=False)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    covered = method.covered_tensors()
    assert covered and set(covered) <= set(state)
    qmodel = method.finalize(model)

    # The common result: entry 0 of every codebook is exactly 0.0; indices point into their codebook;
    # a tensor takes no more distinct values than its codebook has entries.
    for codebook in qmodel.codebooks:
        assert codebook.dtype == torch.float32 and codebook[0].item() == 0.0 and not torch.signbit(codebook[0])
    for tensor_name, qt in qmodel.quantized.items():
        size = qmodel.codebooks[qt.codebook].numel()
        assert int(qt.indices.min()) >= 0 and int(qt.indices.max()) < size
        assert torch.unique(qmodel.dequantize(tensor_name)).numel() <= size
    assert set(qmodel.quantized) == set(covered)
    # What the method does not cover travels unchanged, exactly as the model holds it.
    for tensor_name, tensor in qmodel.dense.items():
        assert tensor.dtype == state[tensor_name].dtype and torch.equal(tensor, state[tensor_name]), tensor_name
    assert set(qmodel.quantized) | set(qmodel.dense) | set(qmodel.aliases) == set(state)
    assert not set(qmodel.aliases) & (set(qmodel.quantized) | set(qmodel.dense))
    reasons = method.coverage_reasons()
    assert list(reasons) == list(state) and {n for n, why in reasons.items() if why == "covered"} == set(covered)

    # The file gives back exactly this result, and the decoded network is the quantized one.
    path = tmp_path / f"{name}.wsz"
    assert save_compressed(qmodel, path) == path.stat().st_size
    decoded = load_compressed(path)
    net = decoded.load_into(ARCHITECTURES[arch](digits.num_classes))
    for key, tensor in net.state_dict().items():
        want = qmodel.to_state_dict()[key]
        assert tensor.dtype == want.dtype and torch.equal(tensor, want), key
    assert [row.name for row in inspect(path).rows] == [*qmodel.quantized, *qmodel.dense]
    _check_architecture(arch, method, qmodel, net)


def _check_architecture(arch: str, method: Method, qmodel, net: nn.Module) -> None:
    """Tied weights: covered, penalised and quantized once, stored once, shared again after loading.
    Attention: its bare input projection and its output projection are covered."""
    covered = method.covered_tensors()
    assert len({id(p) for p in covered.values()}) == len(covered)  # one entry per tensor: penalised once
    if arch == "tied":
        assert "embed.weight" in covered and "head.weight" not in covered
        assert qmodel.aliases == {"head.weight": "embed.weight"} and "embed.weight" in qmodel.quantized
        assert net.head.weight is net.embed.weight
        assert "position" in qmodel.dense and method.coverage_reasons()["position"] != "covered"
    if arch == "attention":
        assert {"attention.in_proj_weight", "attention.out_proj.weight"} <= set(qmodel.quantized)
        assert "attention.in_proj_bias" in qmodel.dense and "norm.weight" in qmodel.dense
