"""Quantizing the float parameters left dense: codebooks, which tensors, aliases, the file, fine-tuning after."""

import json

import pytest
import torch
from torch import nn

from weightshare.codec import decode, encode, inspect
from weightshare.core.quantized import NOT_WEIGHTS, QuantizedModel, load_quantized
from weightshare.finish.codebook_tuning import CodebookTuning, tune_codebooks
from weightshare.finish.densequant import quantize_dense_params
from weightshare.models.architectures import build_model
from weightshare.train.config import TrainConfig


def _quantized(net: nn.Module, seed: int = 0) -> QuantizedModel:
    """``net`` with every 2-D weight quantized into one codebook, the rest dense (in state-dict order)."""
    gen = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.3
    state = net.state_dict()
    codebook = torch.tensor([0.0, -0.3, -0.1, 0.1, 0.3])
    index = {n: (t.unsqueeze(-1) - codebook).abs().argmin(-1) for n, t in net.named_parameters() if t.dim() == 2}
    return QuantizedModel.from_assignments(state, index, [codebook])


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_codebook_starts_with_zero_and_holds_at_most_two_to_the_bits_values(bits):
    net = _mlp()
    q = _quantized(net)
    q.dense["1.bias"][:3] = 0.0  # exact zeros must be entry 0
    out, done = quantize_dense_params(net, q, bits)
    qt = out.quantized["1.bias"]
    codebook = out.codebooks[qt.codebook]
    assert codebook[0].item() == 0.0 and 2 <= codebook.numel() <= 2**bits
    assert qt.indices[:3].tolist() == [0, 0, 0]
    assert torch.equal(out.to_state_dict()["1.bias"], codebook[qt.indices])
    assert torch.equal(torch.unique(qt.indices), torch.arange(codebook.numel()))  # every entry is used
    assert done["1.bias"]["levels"] == codebook.numel() and done["1.bias"]["values"] == 40
    change = (out.to_state_dict()["1.bias"] - q.dense["1.bias"]).abs().max().item()
    assert done["1.bias"]["max_abs_change"] == pytest.approx(change)
    # k-means: about the Lloyd-Max distortion of a Gaussian with 2**bits levels (0.36, 0.12, 0.035, 0.0025 of
    # the variance), and never above the all-zero codebook's (1.0)
    relative = done["1.bias"]["rms_change"] ** 2 / float(q.dense["1.bias"].pow(2).mean())
    assert relative < {1: 0.6, 2: 0.2, 3: 0.06, 5: 0.005}[bits]


def test_many_levels_reproduce_few_distinct_values_exactly():
    net = _mlp()
    q = _quantized(net)
    q.dense["1.bias"] = torch.tensor([0.5, -0.25, 0.0, 1.0] * 10)
    out, done = quantize_dense_params(net, q, 4)
    assert torch.equal(out.to_state_dict()["1.bias"], q.dense["1.bias"])
    assert out.codebooks[-1].tolist() == [0.0, -0.25, 0.5, 1.0] and done["1.bias"]["max_abs_change"] == 0.0


def test_the_method_keeps_its_codebooks_and_weights_and_the_input_is_untouched():
    net = _mlp()
    q = _quantized(net)
    before = {n: t.clone() for n, t in q.to_state_dict().items()}
    out, done = quantize_dense_params(net, q, 3)
    assert list(done) == ["1.bias", "3.bias"] and list(q.dense) == ["1.bias", "3.bias"]
    assert all(torch.equal(before[n], t) for n, t in q.to_state_dict().items())
    assert torch.equal(out.codebooks[0], q.codebooks[0]) and len(out.codebooks) == 3
    assert [out.quantized[n].codebook for n in ("1.weight", "3.weight", "1.bias", "3.bias")] == [0, 0, 1, 2]
    assert out.meta[NOT_WEIGHTS] == ["1.bias", "3.bias"]
    assert [n for n in out.quantized if out.is_weight(n)] == ["1.weight", "3.weight"]


def test_buffers_integer_tensors_and_small_tensors_stay_as_they_are():
    net = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.LayerNorm(32), nn.Linear(32, 3))
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    q = _quantized(net)
    out, done = quantize_dense_params(net, q, 4)
    # Parameters with at least 16 values: the first bias, BatchNorm's and LayerNorm's weight and bias.
    assert sorted(done) == ["0.bias", "1.bias", "1.weight", "2.bias", "2.weight"]
    assert sorted(out.dense) == ["1.num_batches_tracked", "1.running_mean", "1.running_var", "3.bias"]
    for name in out.dense:  # buffers, the int64 counter and the 3-value bias: bit for bit
        assert torch.equal(out.dense[name], q.dense[name]) and out.dense[name].dtype == q.dense[name].dtype
    assert quantize_dense_params(net, q, 6)[1].keys() == set()  # 63 float32 values of codebook: nothing shrinks
    assert quantize_dense_params(net, q, 6)[0] is q


@pytest.mark.parametrize(("bits", "smallest"), [(2, 4), (4, 18), (6, 78)])
def test_a_tensor_is_quantized_only_if_a_full_codebook_and_bits_per_value_are_smaller(bits, smallest):
    # 4 bits: 15 x 4 + n / 2 bytes < 4 n for n >= 18; 6 bits: 63 x 4 + 6 n / 8 < 4 n for n >= 78
    for n, quantized in ((smallest - 1, False), (smallest, True)):
        net = nn.Linear(4, n)
        q = _quantized(net)
        assert ("bias" in quantize_dense_params(net, q, bits)[1]) is quantized, n


def test_a_tensor_reached_under_two_names_is_quantized_once():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.head = nn.Linear(16, 16), nn.Linear(16, 4)
            self.b = self.a  # the same module under a second name: its bias too

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))))

    net = Twice()
    q = _quantized(net)
    assert q.aliases == {"b.weight": "a.weight", "b.bias": "a.bias"}
    out, done = quantize_dense_params(net, q, 3)
    assert list(done) == ["a.bias"] and len(out.codebooks) == 2 and out.aliases == q.aliases
    loaded = out.load_into(Twice())
    assert loaded.a.bias is loaded.b.bias
    assert torch.equal(loaded.b.bias.detach(), out.dequantize("a.bias"))


def test_round_trip_through_the_codec_is_bit_exact():
    net = nn.Sequential(nn.Linear(8, 64), nn.LayerNorm(64), nn.Linear(64, 20))
    q = _quantized(net)
    q.dense["1.weight"] = q.dense["1.weight"].to(torch.bfloat16)  # a parameter of its own dtype
    out, _ = quantize_dense_params(net, q, 4)
    back = decode(encode(out))
    assert back.meta == out.meta and back.aliases == out.aliases
    for (name, a), b in zip(out.to_state_dict().items(), back.to_state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert out.quantized["1.weight"].dtype == torch.bfloat16


def test_the_file_of_a_trained_digits_model_gets_smaller(compressed):
    run, _ = compressed
    q = load_quantized(run / "quantized.safetensors")
    net = build_model(json.loads((run / "config.json").read_text())["train"]["model"])
    out, done = quantize_dense_params(net, q, 4)
    assert [t.numel() for t in out.dense.values()] == [10]  # the output bias: fewer values than 16 levels
    quantized = sum(d["values"] for d in done.values())
    assert quantized == sum(t.numel() for t in q.dense.values()) - 10
    before, after = inspect(encode(q)), inspect(encode(out))
    as_floats = sum(r.total_bytes for r in before.rows if r.name in done)  # stored exactly (format v3: byte planes)
    assert as_floats > 3 * quantized  # float32 mantissas hardly compress: more than 3 bytes a value
    # After, at most 4 bits each, but also per tensor a codebook of up to 15 floats, its count table and its
    # name in the meta: the file loses more than half of what these 192 biases took
    assert before.file_bytes - after.file_bytes > 0.5 * as_floats
    assert after.components["biases"] < 0.5 * before.components["biases"]
    assert all(d["rms_change"] < 0.05 for d in done.values())


def test_fine_tuning_trains_the_bias_codebooks_not_the_biases_and_keeps_every_index(digits):
    torch.manual_seed(0)
    net = _mlp()
    q, _ = quantize_dense_params(net, _quantized(net), 3)
    tuning = CodebookTuning(net, q, lr=1e-2)
    assert all(p is not net[1].bias and p is not net[3].bias for p in tuning.trainable(net))
    tuning.remove_hooks()
    tuned, _ = tune_codebooks(_mlp(), q, digits, TrainConfig(epochs=1), epochs=1, lr=1e-2, batch_size=64)
    for name in ("1.bias", "3.bias"):
        assert torch.equal(tuned.quantized[name].indices, q.quantized[name].indices)
        k = q.quantized[name].codebook
        assert tuned.codebooks[k][0].item() == 0.0
        moved = (tuned.codebooks[k][1:] - q.codebooks[k][1:]).abs() > 1e-4
        assert moved.sum() >= moved.numel() // 2  # a value read only by dead units gets no gradient
    assert tuned.meta == q.meta and not tuned.dense


def test_bits_outside_the_range_are_refused():
    net = _mlp()
    with pytest.raises(ValueError, match=r"dense_param_bits must lie in \[1, 16\], got 0"):
        quantize_dense_params(net, _quantized(net), 0)
