"""The safetensors codebook layout: bit-packed indices + codebooks + a JSON entry; lossless round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weightshare.codec import save_compressed
from weightshare.core.errors import FormatError, MismatchError
from weightshare.core.quantized import QuantizedModel, QuantizedTensor
from weightshare.export.dense import export_dense
from weightshare.export.safetensors_layout import (
    LAYOUT_KEY,
    export_safetensors,
    index_bits,
    load_safetensors_layout,
    pack_indices,
    unpack_indices,
)
from weightshare.models.architectures import build_model


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 20), count=st.integers(0, 50), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip_and_size(bits, count, seed):
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, 2**bits, (count,), generator=gen)
    packed = pack_indices(indices, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(count * bits / 8)
    assert torch.equal(unpack_indices(packed, bits, count), indices)


def test_bit_order_by_hand():
    # 3 bits each, least significant bit first: 5 = 101, 3 = 110 (LSB first), 7 = 111 -> stream 101 110 111 (+0 pad)
    # byte 0 = bits 1,0,1,1,1,0,1,1 (LSB first) = 0b11011101 = 221; byte 1 = bit 1 then padding = 1
    assert pack_indices(torch.tensor([5, 3, 7]), 3).tolist() == [221, 1]
    assert pack_indices(torch.tensor([[1, 2], [3, 0]]), 8).tolist() == [1, 2, 3, 0]  # 8 bits: plain bytes, row-major


def _model() -> QuantizedModel:
    """A shared 3-entry codebook (2 bits), a 40-entry one (6 bits) and a 300-entry one (9 bits), dense biases."""
    gen = torch.Generator().manual_seed(0)
    codebooks = [torch.cat([torch.zeros(1), torch.randn(k - 1, generator=gen)]) for k in (3, 40, 300)]
    quantized = {
        "conv.weight": QuantizedTensor(torch.randint(0, 3, (6, 1, 3, 3), generator=gen), 0),
        "fc1.weight": QuantizedTensor(torch.randint(0, 40, (30, 17), generator=gen), 1),
        "fc2.weight": QuantizedTensor(torch.randint(0, 300, (10, 30), generator=gen), 2),
        "fc3.weight": QuantizedTensor(torch.randint(0, 3, (5, 10), generator=gen), 0),
    }
    dense = {"conv.bias": torch.randn(6, generator=gen), "fc1.bias": torch.randn(30, generator=gen)}
    return QuantizedModel(codebooks, quantized, dense, {"model": "hand", "method": "dc"})


def test_round_trip_and_layout(tmp_path):
    qmodel = _model()
    path = tmp_path / "q.safetensors"
    nbytes = export_safetensors(qmodel, path)
    assert nbytes == path.stat().st_size
    back = load_safetensors_layout(path)
    assert back.meta == qmodel.meta and list(back.quantized) == list(qmodel.quantized)
    for a, b in zip(back.codebooks, qmodel.codebooks, strict=True):
        assert torch.equal(a, b)
    for name, qt in qmodel.quantized.items():
        assert torch.equal(back.quantized[name].indices, qt.indices) and back.quantized[name].codebook == qt.codebook
    for name, t in qmodel.dense.items():
        assert torch.equal(back.dense[name], t)
    with safe_open(str(path), framework="pt") as f:
        layout = json.loads(f.metadata()[LAYOUT_KEY])
        keys = set(f.keys())
    assert layout["quantized"]["fc2.weight"] == {
        "indices": "indices:fc2.weight", "codebook": "codebook:2", "shape": [10, 30], "bits": 9, "dtype": "float32",
    }  # fmt: skip
    assert layout["aliases"] == {}
    assert [layout["quantized"][n]["bits"] for n in qmodel.quantized] == [2, 6, 9, 2]
    assert keys == {"codebook:0", "codebook:1", "codebook:2", "conv.bias", "fc1.bias"} | {
        f"indices:{n}" for n in qmodel.quantized
    }
    tensors = load_file(str(path))
    assert tensors["indices:fc1.weight"].numel() == math.ceil(30 * 17 * 6 / 8)  # 6 bits per weight, no more


def test_from_a_wsz_file_and_the_model_check(tmp_path):
    qmodel = _model()
    save_compressed(qmodel, tmp_path / "m.wsz")
    export_safetensors(tmp_path / "m.wsz", tmp_path / "q.safetensors")
    assert load_safetensors_layout(tmp_path / "q.safetensors").to_state_dict().keys() == qmodel.to_state_dict().keys()
    with pytest.raises(MismatchError, match="conv.weight: not in the model"):
        export_safetensors(tmp_path / "m.wsz", tmp_path / "other.safetensors", build_model("mlp"))
    assert not (tmp_path / "other.safetensors").exists()


def test_corrupt_and_foreign_files_are_refused_in_one_line(tmp_path):
    path = tmp_path / "q.safetensors"
    export_safetensors(_model(), path)
    data = path.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "garbage": b"\x00" * 40}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FormatError, match=f"{name}: not a safetensors file") as info:
            load_safetensors_layout(tmp_path / name)
        assert "\n" not in str(info.value)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain"))
    with pytest.raises(FormatError, match="plain: no valid 'weightshare' metadata"):
        load_safetensors_layout(tmp_path / "plain")
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        layout = json.loads(f.metadata()[LAYOUT_KEY])
    tensors["indices:fc3.weight"] = pack_indices(torch.full((5, 10), 3), 2)  # index 3 of a 3-entry codebook
    save_file(tensors, str(tmp_path / "bad-index"), metadata={LAYOUT_KEY: json.dumps(layout)})
    with pytest.raises(FormatError, match=r"bad-index: inconsistent codebook layout: fc3.weight: indices must lie"):
        load_safetensors_layout(tmp_path / "bad-index")
    layout["quantized"]["fc1.weight"]["bits"] = 5
    save_file(tensors, str(tmp_path / "bad-bits"), metadata={LAYOUT_KEY: json.dumps(layout)})
    with pytest.raises(FormatError, match=r"bad-bits: inconsistent codebook layout: indices:fc1.weight: 383"):
        load_safetensors_layout(tmp_path / "bad-bits")


def test_corrupt_wsz_writes_nothing(tmp_path):
    save_compressed(_model(), tmp_path / "m.wsz")
    (tmp_path / "bad.wsz").write_bytes((tmp_path / "m.wsz").read_bytes()[:-5])
    with pytest.raises(FormatError, match=r"bad\.wsz: "):
        export_safetensors(tmp_path / "bad.wsz", tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.wsz", "m.wsz"]


def test_index_bits_are_the_fewest_that_hold_the_codebook():
    for size in range(1, 600):
        bits = index_bits(size)
        assert 2**bits >= size and (bits == 1 or 2 ** (bits - 1) < size)


def test_a_tied_weight_is_stored_once_and_loads_under_both_names(tmp_path):
    net = torch.nn.Sequential(torch.nn.Embedding(6, 4), torch.nn.Linear(4, 6, bias=False))
    net[1].weight = net[0].weight
    net.half()
    indices = {"0.weight": torch.randint(0, 3, (6, 4), generator=torch.Generator().manual_seed(0))}
    qmodel = QuantizedModel.from_assignments(net.state_dict(), indices, [torch.tensor([0.0, -0.5, 0.5])])
    export_safetensors(qmodel, tmp_path / "q.safetensors")
    assert set(load_file(str(tmp_path / "q.safetensors"))) == {"codebook:0", "indices:0.weight"}
    back = load_safetensors_layout(tmp_path / "q.safetensors")
    assert back.aliases == {"1.weight": "0.weight"} and back.quantized["0.weight"].dtype == torch.float16
    restored = back.load_into(torch.nn.Sequential(torch.nn.Embedding(6, 4), torch.nn.Linear(4, 6, bias=False)))
    assert restored[1].weight is restored[0].weight
    assert torch.equal(restored[0].weight, qmodel.to_state_dict()["0.weight"].float())
    export_dense(qmodel, tmp_path / "dense.safetensors")  # two names on one tensor: written as two copies
    dense = load_file(str(tmp_path / "dense.safetensors"))
    assert torch.equal(dense["1.weight"], dense["0.weight"]) and dense["0.weight"].dtype == torch.float16
