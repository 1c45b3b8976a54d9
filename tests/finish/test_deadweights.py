"""Dead-weight removal: exact counts from hand-built sparse models, unchanged outputs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightshare.core.quantized import QuantizedModel
from weightshare.finish.deadweights import remove_dead_weights
from weightshare.models.architectures import LeNet5

CODEBOOK = torch.tensor([0.0, -0.5, 0.5])


def quantize(model: nn.Module, indices: dict[str, torch.Tensor], dense: dict[str, torch.Tensor]) -> QuantizedModel:
    """Weights in ``indices`` quantized into CODEBOOK; ``dense`` overrides other state-dict entries."""
    state = model.state_dict() | {k: torch.as_tensor(v, dtype=torch.float32) for k, v in dense.items()}
    return QuantizedModel.from_assignments(state, indices, [CODEBOOK])


def logits(q: QuantizedModel, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # In float64, so that a tight tolerance measures the cleanup, not float32 summation order.
    with torch.no_grad():
        return q.load_into(copy.deepcopy(model)).double().eval()(x.double())


def assert_same(q: QuantizedModel, other: QuantizedModel) -> None:
    assert q.quantized.keys() == other.quantized.keys() and q.dense.keys() == other.dense.keys()
    for name, qt in q.quantized.items():
        assert torch.equal(qt.indices, other.quantized[name].indices), name
    for name, t in q.dense.items():
        assert torch.equal(t, other.dense[name]), name
    assert all(torch.equal(a, b) for a, b in zip(q.codebooks, other.codebooks, strict=True))
    assert q.meta == other.meta


def sparse(gen: torch.Generator, shape: tuple[int, ...], density: float) -> torch.Tensor:
    idx = torch.randint(1, len(CODEBOOK), shape, generator=gen)
    return idx * (torch.rand(shape, generator=gen) < density)


def lenet5_case() -> tuple[QuantizedModel, dict[str, torch.Tensor]]:
    """Random sparse LeNet-5 with dead units planted; returns it and the masks of weights that must go."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"conv1": (20, 1, 5, 5), "conv2": (50, 20, 5, 5), "fc1": (500, 800), "fc2": (10, 500)}
    density = {"conv1": 0.5, "conv2": 0.2, "fc1": 0.05, "fc2": 0.7}
    idx = {f"{k}.weight": sparse(gen, s, density[k]) for k, s in shapes.items()}
    bias = {f"{k}.bias": torch.randn(s[0], generator=gen) for k, s in shapes.items()}
    mask = {name: torch.zeros(t.shape, dtype=torch.bool) for name, t in idx.items()}
    ch = {c: slice(16 * c, 16 * (c + 1)) for c in (7, 20, 21)}  # fc1 columns of conv2 channel c
    # The random part must not hold dead units of its own: the expectations below are exactly the planted ones.
    assert all(t.reshape(t.shape[0], -1).ne(0).any(1).all() for t in idx.values())
    assert idx["fc2.weight"].ne(0).any(0).all() and idx["conv2.weight"].ne(0).any((0, 2, 3)).all()
    idx["conv2.weight"][:, 3] = 0  # conv1 channel 3 unread
    mask["conv1.weight"][3] = True
    idx["conv1.weight"][5], bias["conv1.bias"][5] = 0, 0.3  # constant 0.3, folded into conv2.bias
    mask["conv2.weight"][:, 5] = True
    idx["fc1.weight"][:, ch[7]] = 0  # conv2 channel 7 unread
    mask["conv2.weight"][7] = True
    idx["conv2.weight"][20], bias["conv2.bias"][20] = 0, 0.0  # constant 0: fc1 columns just dropped
    idx["conv2.weight"][21], bias["conv2.bias"][21] = 0, 0.1  # constant 0.1, folded into fc1.bias
    mask["fc1.weight"][:, ch[20]] = mask["fc1.weight"][:, ch[21]] = True
    idx["fc1.weight"][10], bias["fc1.bias"][10] = 0, -0.2  # relu(-0.2) = 0: fc2 column dropped
    idx["fc1.weight"][11], bias["fc1.bias"][11] = 0, 0.25  # relu(0.25), folded into fc2.bias
    mask["fc2.weight"][:, 10:12] = True
    idx["fc2.weight"][:, 12] = 0  # fc1 unit 12 unread
    mask["fc1.weight"][12] = True
    return quantize(LeNet5(), idx, bias), mask


def test_lenet5_planted_dead_units() -> None:
    q, mask = lenet5_case()
    before = copy.deepcopy(q)
    cleaned, removed = remove_dead_weights(LeNet5(), q, torch.zeros(1, 1, 28, 28))

    assert_same(q, before)  # the input is untouched
    expected = {name: int((qt.indices.ne(0) & mask[name]).sum()) for name, qt in q.quantized.items()}
    assert removed == expected and all(n > 0 for n in expected.values())
    for name, qt in q.quantized.items():
        assert torch.equal(cleaned.quantized[name].indices, qt.indices.masked_fill(mask[name], 0)), name

    w = q.to_state_dict()
    folded = {
        "conv1.bias": w["conv1.bias"],
        "conv2.bias": w["conv2.bias"] + 0.3 * w["conv2.weight"][:, 5].sum((1, 2)),
        "fc1.bias": w["fc1.bias"] + 0.1 * w["fc1.weight"][:, 16 * 21 : 16 * 22].sum(1),
        "fc2.bias": w["fc2.bias"] + 0.25 * w["fc2.weight"][:, 11],
    }
    assert all(w[k].ne(folded[k]).any() for k in ("conv2.bias", "fc1.bias", "fc2.bias"))
    for name, bias in folded.items():
        assert torch.allclose(cleaned.dense[name], bias, atol=1e-6), name

    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(logits(cleaned, LeNet5(), x), logits(q, LeNet5(), x), atol=1e-5, rtol=0)
    assert cleaned.codebooks[0].tolist() == CODEBOOK.tolist() and cleaned.meta == q.meta


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))


def test_mlp_cascades_in_both_directions() -> None:
    # Backward: 4.weight never reads unit 2 of layer 2 -> that row goes -> nothing reads unit 1 of layer 0.
    # Forward: unit 3 of layer 0 is relu(-1) = 0 -> row 0 of layer 2 loses its only input -> relu(0.5) is
    # folded into 4.bias. Whatever the sweep order, one of the two needs a second round.
    idx = {
        "0.weight": torch.tensor([[1, 2, 1, 2], [2, 1, 0, 1], [1, 1, 2, 2], [0, 0, 0, 0]]),
        "2.weight": torch.tensor([[0, 0, 0, 2], [1, 0, 2, 0], [2, 1, 0, 0], [1, 0, 1, 1]]),
        "4.weight": torch.tensor([[1, 2, 0, 1], [2, 0, 0, 1], [1, 1, 0, 2]]),
    }
    bias = {"0.bias": [0.1, 0.2, -0.3, -1.0], "2.bias": [0.5, -0.1, 0.3, 0.2], "4.bias": [0.0, 0.1, -0.1]}
    q = quantize(mlp(), idx, bias)
    cleaned, removed = remove_dead_weights(mlp(), q, torch.zeros(2, 4))

    assert removed == {"0.weight": 3, "2.weight": 4, "4.weight": 3}
    assert cleaned.quantized["0.weight"].indices.tolist() == [[1, 2, 1, 2], [0, 0, 0, 0], [1, 1, 2, 2], [0, 0, 0, 0]]
    assert cleaned.quantized["2.weight"].indices.tolist() == [[0, 0, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0], [1, 0, 1, 0]]
    assert cleaned.quantized["4.weight"].indices.tolist() == [[0, 2, 0, 1], [0, 0, 0, 1], [0, 1, 0, 2]]
    assert torch.allclose(cleaned.dense["4.bias"], torch.tensor([-0.25, 0.35, -0.35]))
    assert torch.equal(cleaned.dense["0.bias"], q.dense["0.bias"])  # an unread unit keeps its bias
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(logits(cleaned, mlp(), x), logits(q, mlp(), x), atol=1e-6)


class TwoReaders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.fc2(h) + self.fc3(h)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(torch.relu(h)) + h


class Tanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class Branchy(Residual):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h) if h.sum() > 0 else h  # data-dependent: torch.fx cannot trace it


def uncertain_case(model: nn.Module) -> QuantizedModel:
    """fc1 unit 0 has no input (bias 0.5), fc2 never reads unit 1: dead if fc2 were fc1's only reader."""
    idx = {name: torch.full(p.shape, 2) for name, p in model.named_parameters() if name.endswith("weight")}
    idx["fc1.weight"][0] = 0
    idx["fc2.weight"][:, 1] = 0
    bias = {name: torch.full(p.shape, 0.5) for name, p in model.named_parameters() if name.endswith("bias")}
    return quantize(model, idx, bias)


@pytest.mark.parametrize("model", [TwoReaders(), Residual(), Tanh()], ids=lambda m: type(m).__name__)
def test_uncertain_pairs_are_left_alone(model: nn.Module) -> None:
    q = uncertain_case(model)
    cleaned, removed = remove_dead_weights(model, q, torch.zeros(1, 4))
    assert removed == dict.fromkeys(q.quantized, 0)
    assert_same(cleaned, q)


def test_untraceable_model_comes_back_unchanged() -> None:
    q = uncertain_case(Branchy())
    with pytest.warns(UserWarning, match="cannot trace Branchy"):
        cleaned, removed = remove_dead_weights(Branchy(), q, torch.zeros(1, 4))
    assert removed == {"fc1.weight": 0, "fc2.weight": 0}
    assert_same(cleaned, q)
    assert cleaned is not q


def test_dense_layer_is_read_but_never_modified() -> None:
    # 2.weight stays dense: its zero column 1 still kills row 1 of 0.weight, and its all-zero row 2
    # (bias 0.7) is folded into 4.bias, but its own dead row 0 and the columns reading the
    # constant unit 3 of layer 0 are kept.
    idx = {
        "0.weight": torch.tensor([[1, 2, 1, 2], [2, 1, 2, 1], [1, 1, 2, 2], [0, 0, 0, 0]]),
        "4.weight": torch.tensor([[0, 1, 2, 1], [0, 2, 2, 1], [0, 1, 1, 1]]),
    }
    w2 = torch.tensor([[0.5, 0, -0.5, 0.5], [0.5, 0, 0.5, 0.5], [0, 0, 0, 0], [-0.5, 0, 0.5, -0.5]])
    dense = {"0.bias": [0.0, 0.0, 0.0, 0.5], "2.weight": w2, "2.bias": [0.1, 0.1, 0.7, 0.1], "4.bias": [0.0] * 3}
    q = quantize(mlp(), idx, dense)
    cleaned, removed = remove_dead_weights(mlp(), q, torch.zeros(1, 4))

    assert removed == {"0.weight": 4, "4.weight": 3}
    assert torch.equal(cleaned.dense["2.weight"], w2) and torch.equal(cleaned.dense["2.bias"], q.dense["2.bias"])
    assert cleaned.quantized["4.weight"].indices[:, 2].tolist() == [0, 0, 0]
    assert torch.allclose(cleaned.dense["4.bias"], torch.tensor([0.35, 0.35, -0.35]))
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(logits(cleaned, mlp(), x), logits(q, mlp(), x), atol=1e-6)


@pytest.mark.parametrize("padding", [0, 1])
def test_conv_constant_is_folded_only_without_padding(padding: int) -> None:
    def net() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Conv2d(3, 2, 3, padding=padding))

    gen = torch.Generator().manual_seed(4)
    idx = {"0.weight": sparse(gen, (3, 1, 3, 3), 0.8), "1.weight": torch.randint(1, 3, (2, 3, 3, 3), generator=gen)}
    idx["0.weight"][:2] = 0  # channel 0: constant 0.5, channel 1: constant 0
    q = quantize(net(), idx, {"0.bias": [0.5, 0.0, 0.2], "1.bias": [0.0, 0.0]})
    cleaned, removed = remove_dead_weights(net(), q, torch.zeros(1, 1, 8, 8))

    gone = [0, 1] if padding == 0 else [1]  # zero padding would break the constant at the border
    assert removed == {"0.weight": 0, "1.weight": 9 * 2 * len(gone)}
    assert cleaned.quantized["1.weight"].indices[:, gone].eq(0).all()
    w = q.to_state_dict()["1.weight"]
    expected_bias = 0.5 * w[:, 0].sum((1, 2)) if padding == 0 else torch.zeros(2)
    assert torch.allclose(cleaned.dense["1.bias"], expected_bias)
    x = torch.randn(4, 1, 8, 8, generator=gen)
    assert torch.allclose(logits(cleaned, net(), x), logits(q, net(), x), atol=1e-5)


def test_module_ops_and_flatten_columns() -> None:
    # nn.MaxPool2d / nn.ReLU / nn.Flatten modules; after flattening 2×3×3 maps, channel c is columns 9c ... 9c+8.
    def net() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 2))

    gen = torch.Generator().manual_seed(5)
    idx = {"0.weight": torch.randint(1, 3, (2, 1, 3, 3), generator=gen), "4.weight": sparse(gen, (2, 18), 0.8)}
    idx["4.weight"][:, :9] = 0  # channel 0 unread
    idx["0.weight"][1] = 0  # channel 1: relu(-0.4) = 0
    q = quantize(net(), idx, {"0.bias": [0.3, -0.4], "4.bias": [0.1, 0.2]})
    cleaned, removed = remove_dead_weights(net(), q, torch.zeros(1, 1, 8, 8))

    assert removed == {"0.weight": 9, "4.weight": int(idx["4.weight"][:, 9:].ne(0).sum())}
    assert cleaned.quantized["0.weight"].nnz == 0 and cleaned.quantized["4.weight"].nnz == 0
    assert torch.equal(cleaned.dense["4.bias"], q.dense["4.bias"])
    x = torch.randn(4, 1, 8, 8, generator=gen)
    assert torch.allclose(logits(cleaned, net(), x), logits(q, net(), x), atol=1e-6)


# --- constant units: every input weight zero, the bias alone reaches the next layer -------------------
#
# The logits are compared in float64 after the cleanup. Where no constant is folded (a zero constant, or
# ReLU of a non-positive bias) the removed weights multiplied an exact 0, so the logits must be identical
# (torch.equal). Where one is folded, the sum is reordered (w * c moves from B's product into B's bias)
# and the new bias is rounded once to float32 (<= 6e-8 relative), so they agree to ~1e-7: 1e-6 is the
# bound, while a lost constant (|c| >= 0.3 times a weight of 0.5 here) changes a logit by >= 0.15.
CONSTANTS = {"negative": -0.4, "zero": 0.0, "positive": 0.3}


def assert_same_logits(cleaned: QuantizedModel, q: QuantizedModel, net: nn.Module, x: torch.Tensor, exact: bool):
    got, want = logits(cleaned, net, x), logits(q, net, x)
    if exact:
        assert torch.equal(got, want)
    else:
        assert float((got - want).abs().max()) <= 1e-6 * max(1.0, float(want.abs().max()))


class LinearPair(nn.Module):
    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.relu = relu
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(torch.relu(h) if self.relu else h)


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("constant", CONSTANTS.values(), ids=CONSTANTS.keys())
def test_linear_constant_unit_is_folded_exactly(relu: bool, constant: float) -> None:
    gen = torch.Generator().manual_seed(10)
    idx = {
        "fc1.weight": torch.randint(1, 3, (4, 3), generator=gen),
        "fc2.weight": torch.randint(1, 3, (2, 4), generator=gen),
    }
    idx["fc1.weight"][1] = 0  # unit 1 has no input: it outputs f(bias_1), f = ReLU or the identity
    bias = {"fc1.bias": [0.2, constant, -0.1, 0.5], "fc2.bias": [0.05, -0.05]}
    q = quantize(LinearPair(relu), idx, bias)
    cleaned, removed = remove_dead_weights(LinearPair(relu), q, torch.zeros(1, 3))

    # By hand: the 2 weights of fc2 reading unit 1 go (folded or multiplying 0); nothing else is dead.
    assert removed == {"fc1.weight": 0, "fc2.weight": 2}
    assert cleaned.quantized["fc2.weight"].indices[:, 1].eq(0).all()
    value = max(constant, 0.0) if relu else constant
    w2 = q.to_state_dict()["fc2.weight"]
    expected = q.dense["fc2.bias"].double() + value * w2[:, 1].double()
    assert torch.allclose(cleaned.dense["fc2.bias"].double(), expected, rtol=0, atol=1e-7)
    assert torch.equal(cleaned.dense["fc1.bias"], q.dense["fc1.bias"])
    x = torch.randn(64, 3, generator=gen)
    assert_same_logits(cleaned, q, LinearPair(relu), x, exact=value == 0)


class ConvPair(nn.Module):
    """conv1 -> chain -> conv2 -> linear head; the chain uses functional ops, as LeNet-5 does."""

    def __init__(self, chain: str) -> None:
        super().__init__()
        self.chain = chain
        self.conv1, self.conv2, self.fc = nn.Conv2d(2, 3, 3), nn.Conv2d(3, 2, 3), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        if "pool" in self.chain:
            h = F.max_pool2d(h, 2)
        if "relu" in self.chain:
            h = torch.relu(h)
        return self.fc(self.conv2(h).flatten(1))


@pytest.mark.parametrize("chain", ["none", "relu", "pool", "pool+relu"])
@pytest.mark.parametrize("constant", CONSTANTS.values(), ids=CONSTANTS.keys())
def test_conv_constant_channel_is_folded_exactly(chain: str, constant: float) -> None:
    # 10x10 input -> conv1 8x8 -> pool 4x4 -> conv2 2x2, or 6x6 -> conv1 4x4 -> conv2 2x2: fc reads 2 x 2 x 2 = 8.
    net = ConvPair(chain)
    size = 10 if "pool" in chain else 6
    gen = torch.Generator().manual_seed(11)
    idx = {
        "conv1.weight": torch.randint(1, 3, (3, 2, 3, 3), generator=gen),
        "conv2.weight": torch.randint(1, 3, (2, 3, 3, 3), generator=gen),
        "fc.weight": torch.randint(1, 3, (3, 8), generator=gen),
    }
    idx["conv1.weight"][2] = 0  # channel 2 has no input: a constant map f(bias_2)
    bias = {"conv1.bias": [0.1, -0.2, constant], "conv2.bias": [0.3, -0.1], "fc.bias": [0.0, 0.1, -0.1]}
    q = quantize(net, idx, bias)
    cleaned, removed = remove_dead_weights(net, q, torch.zeros(1, 2, size, size))

    # By hand: conv2's 2 x 3 x 3 taps on channel 2 go, constant folded into conv2.bias (no padding).
    assert removed == {"conv1.weight": 0, "conv2.weight": 18, "fc.weight": 0}
    assert cleaned.quantized["conv2.weight"].indices[:, 2].eq(0).all()
    value = max(constant, 0.0) if "relu" in chain else constant  # max-pooling keeps a constant map
    w2 = q.to_state_dict()["conv2.weight"]
    expected = q.dense["conv2.bias"].double() + value * w2[:, 2].double().sum((1, 2))
    assert torch.allclose(cleaned.dense["conv2.bias"].double(), expected, rtol=0, atol=1e-6)
    x = torch.randn(16, 2, size, size, generator=gen)
    assert_same_logits(cleaned, q, net, x, exact=value == 0)


def test_lenet5_negative_constant_conv1_channel() -> None:
    # LeNet-5-Caffe has no ReLU after conv1: a conv1 channel without input carries its (negative) bias,
    # max-pooled unchanged, into conv2. Dropping conv2's taps without folding -0.3 would change the logits.
    gen = torch.Generator().manual_seed(12)
    shapes = {"conv1": (20, 1, 5, 5), "conv2": (50, 20, 5, 5), "fc1": (500, 800), "fc2": (10, 500)}
    idx = {f"{k}.weight": torch.randint(1, 3, s, generator=gen) for k, s in shapes.items()}
    bias = {f"{k}.bias": 0.1 * torch.randn(s[0], generator=gen) for k, s in shapes.items()}
    idx["conv1.weight"][4], bias["conv1.bias"][4] = 0, -0.3
    q = quantize(LeNet5(), idx, bias)
    cleaned, removed = remove_dead_weights(LeNet5(), q, torch.zeros(1, 1, 28, 28))

    assert removed == {"conv1.weight": 0, "conv2.weight": 50 * 25, "fc1.weight": 0, "fc2.weight": 0}
    w2 = q.to_state_dict()["conv2.weight"]
    expected = q.dense["conv2.bias"].double() - 0.3 * w2[:, 4].double().sum((1, 2))
    assert torch.allclose(cleaned.dense["conv2.bias"].double(), expected, rtol=0, atol=1e-6)
    x = torch.rand(8, 1, 28, 28, generator=gen)
    assert_same_logits(cleaned, q, LeNet5(), x, exact=False)
