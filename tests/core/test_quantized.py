"""QuantizedModel invariants and the safetensors quantized checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from weightshare.core.errors import FormatError
from weightshare.core.quantized import QuantizedModel, QuantizedTensor, load_quantized, save_quantized


def model() -> QuantizedModel:
    cbs = [torch.tensor([0.0, -0.5, 0.5]), torch.linspace(0, 1, 300)]
    q = {"a.weight": QuantizedTensor(torch.tensor([[0, 1], [2, 0]])), "b.weight": QuantizedTensor(torch.arange(300), 1)}
    return QuantizedModel(cbs, q, {"a.bias": torch.tensor([1.5, -0.0])}, {"method": "dc", "bits": [5, 4]})


def test_views_and_statistics() -> None:
    q = model()
    assert q.to_state_dict()["a.weight"].tolist() == [[0.0, -0.5], [0.5, 0.0]]
    assert (q.nnz, q.num_quantized, q.num_dense) == (301, 304, 2)
    assert q.unique_values("a.weight") == 3 and q.unique_values() == 302
    net = nn.Linear(2, 2)
    QuantizedModel(q.codebooks[:1], {"weight": q.quantized["a.weight"]}, {"bias": q.dense["a.bias"]}).load_into(net)
    assert net.weight.tolist() == [[0.0, -0.5], [0.5, 0.0]]


def test_invariants_are_enforced() -> None:
    with pytest.raises(ValueError, match="entry 0 must be exactly"):
        QuantizedModel([torch.tensor([-0.0, 1.0])], {})
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\)"):
        QuantizedModel([torch.tensor([0.0, 1.0])], {"w": QuantizedTensor(torch.tensor([2]))})


def test_checkpoint_round_trip(tmp_path) -> None:
    q = model()
    path = tmp_path / "q.safetensors"
    save_quantized(q, path)
    back = load_quantized(path)
    assert list(back.quantized) == ["a.weight", "b.weight"] and back.quantized["b.weight"].codebook == 1
    for name, qt in q.quantized.items():
        assert back.quantized[name].indices.dtype == torch.int64
        assert torch.equal(back.quantized[name].indices, qt.indices)
    for a, b in zip(q.codebooks, back.codebooks, strict=True):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    assert torch.equal(back.dense["a.bias"].view(torch.int32), q.dense["a.bias"].view(torch.int32))  # -0.0 kept
    assert back.meta == {"method": "dc", "bits": [5, 4]}
    assert [p.name for p in tmp_path.iterdir()] == ["q.safetensors"]
    assert path.read_bytes()[8:9] == b"{"  # a safetensors JSON header, no pickle


def test_checkpoint_stores_small_index_types(tmp_path) -> None:
    from safetensors import safe_open

    save_quantized(model(), tmp_path / "q.safetensors")
    with safe_open(str(tmp_path / "q.safetensors"), framework="pt") as f:
        assert f.get_tensor("q.a.weight").dtype == torch.uint8
        assert f.get_tensor("q.b.weight").dtype == torch.int16


def test_bad_checkpoints_are_refused(tmp_path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(FormatError, match="not a weightshare quantized checkpoint"):
        load_quantized(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(FormatError, match="not a safetensors file"):
        load_quantized(junk)
    broken = tmp_path / "broken.safetensors"
    meta = {"format": "weightshare.quantized", "version": "1", "codebooks": "1", "dense": "[]", "meta": "{}"}
    save_file({"codebook.0": torch.zeros(1)}, str(broken), metadata=meta | {"quantized": json.dumps([["w", 0]])})
    with pytest.raises(FormatError, match="inconsistent quantized checkpoint"):
        load_quantized(broken)
    newer = tmp_path / "newer.safetensors"
    save_file({"codebook.0": torch.zeros(1)}, str(newer), metadata=meta | {"quantized": "[]", "version": "3"})
    with pytest.raises(FormatError, match="checkpoint version '3'"):
        load_quantized(newer)


def test_dense_tensors_do_not_follow_the_model_afterwards():
    net = torch.nn.Linear(3, 2)
    q = QuantizedModel.from_assignments(
        net.state_dict(), {"weight": torch.zeros(2, 3, dtype=torch.long)}, [torch.tensor([0.0, 1.0])]
    )
    kept = q.dense["bias"].clone()
    with torch.no_grad():
        net.bias.add_(1.0)
    assert torch.equal(q.dense["bias"], kept)


def test_from_assignments_keeps_every_entry_and_finds_shared_ones() -> None:
    net = nn.Sequential(nn.Embedding(4, 2), nn.BatchNorm1d(2), nn.Linear(2, 4, bias=False))
    net[2].weight = net[0].weight
    net[1].half()
    q = QuantizedModel.from_assignments(net.state_dict(), {"0.weight": torch.ones(4, 2)}, [torch.tensor([0.0, 0.5])])
    assert q.aliases == {"2.weight": "0.weight"} and list(q.quantized) == ["0.weight"]
    assert {n: t.dtype for n, t in q.dense.items()} == {
        "1.weight": torch.float16,
        "1.bias": torch.float16,
        "1.running_mean": torch.float16,
        "1.running_var": torch.float16,
        "1.num_batches_tracked": torch.int64,
    }
    clones = {k: v.clone() for k, v in net.state_dict().items()}  # copies share nothing: nothing is an alias
    assert QuantizedModel.from_assignments(clones, {}, [torch.zeros(1)]).aliases == {}
    with pytest.raises(KeyError, match="second names"):
        QuantizedModel.from_assignments(net.state_dict(), {"2.weight": torch.ones(4, 2)}, [torch.tensor([0.0, 1.0])])
    with pytest.raises(ValueError, match="alias 'x': must be a new name for a stored tensor"):
        QuantizedModel([torch.zeros(1)], {}, {"y": torch.zeros(1)}, aliases={"x": "z"})


def test_checkpoint_keeps_dtypes_and_aliases(tmp_path) -> None:
    q = QuantizedModel(
        [torch.tensor([0.0, 0.5])],
        {"e.weight": QuantizedTensor(torch.tensor([[1, 0]]), 0, torch.bfloat16)},
        {"n": torch.tensor(7), "m": torch.tensor([True, False])},
        aliases={"h.weight": "e.weight"},
    )
    save_quantized(q, tmp_path / "q.safetensors")
    back = load_quantized(tmp_path / "q.safetensors")
    assert back.quantized["e.weight"].dtype == torch.bfloat16 and back.aliases == {"h.weight": "e.weight"}
    assert back.dense["n"].dtype == torch.int64 and back.dense["m"].dtype == torch.bool
    version1 = tmp_path / "v1.safetensors"
    meta = {"format": "weightshare.quantized", "version": "1", "codebooks": "1", "dense": "[]", "meta": "{}"}
    tensors = {"codebook.0": torch.tensor([0.0, 0.5]), "q.w": torch.tensor([1, 0], dtype=torch.uint8)}
    save_file(tensors, str(version1), metadata=meta | {"quantized": json.dumps([["w", 0]])})
    old = load_quantized(version1)
    assert old.quantized["w"].dtype == torch.float32 and old.to_state_dict()["w"].tolist() == [0.5, 0.0]


def test_weights_only_moves_the_listed_tensors_back_to_dense_and_renumbers_the_codebooks(tmp_path):
    from weightshare.core.quantized import NOT_WEIGHTS

    codebooks = [torch.tensor([0.0, 0.5]), torch.tensor([0.0, -0.1, 0.1]), torch.tensor([0.0, 2.0])]
    quantized = {
        "a.weight": QuantizedTensor(torch.tensor([[1, 0]]), 0),
        "a.bias": QuantizedTensor(torch.tensor([2, 1, 0]), 1, torch.bfloat16),
        "b.weight": QuantizedTensor(torch.tensor([[0, 1]]), 2),
    }
    q = QuantizedModel(codebooks, quantized, {"b.bias": torch.ones(2)}, {"model": "m", NOT_WEIGHTS: ["a.bias"]})
    save_quantized(q, tmp_path / "q.safetensors")
    q = load_quantized(tmp_path / "q.safetensors")  # the list survives the checkpoint
    only = q.weights_only()
    assert [q.is_weight(n) for n in q.quantized] == [True, False, True]
    assert list(only.quantized) == ["a.weight", "b.weight"] and only.meta == {"model": "m"}
    assert [qt.codebook for qt in only.quantized.values()] == [0, 1] and len(only.codebooks) == 2
    assert list(only.dense) == ["b.bias", "a.bias"] and only.dense["a.bias"].dtype == torch.bfloat16
    full, weights = q.to_state_dict(), only.to_state_dict()
    assert all(torch.equal(full[n], weights[n]) for n in full)
    plain = QuantizedModel(codebooks[:1], {"w": QuantizedTensor(torch.tensor([1]))})
    assert plain.weights_only() is plain
