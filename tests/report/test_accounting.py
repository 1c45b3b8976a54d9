"""Tests for weightshare.report.accounting: Huffman lengths, hand-computed paper-style budgets, other papers' CRs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightshare.core.quantized import QuantizedModel, QuantizedTensor
from weightshare.report.accounting import (
    canonical_code,
    deep_compression_estimate,
    entropy_bits,
    huffman_code_lengths,
    paper_style,
    values_only,
    weight_entropy_bits,
    weight_sharing_rate,
)


def _qm(tensors: dict[str, list | torch.Tensor], codebooks: list[list[float]], of=None, dense=None) -> QuantizedModel:
    of = of or {}
    q = {n: QuantizedTensor(torch.as_tensor(t, dtype=torch.int64), of.get(n, 0)) for n, t in tensors.items()}
    return QuantizedModel([torch.tensor(c) for c in codebooks], q, dense or {})


# --- Huffman ------------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=2, max_size=40))
def test_huffman_kraft_equality_and_entropy_bound(counts: list[int]) -> None:
    c = np.array(counts)
    lengths = huffman_code_lengths(c)
    assert (lengths[c == 0] == 0).all()
    used = c > 0
    if used.sum() == 0:
        return
    assert np.sum(2.0 ** -lengths[used]) == pytest.approx(1.0, abs=1e-12)  # complete prefix code
    n, h = c.sum(), entropy_bits(c)
    total = int((c * lengths).sum())
    assert h - 1e-9 <= total < h + n  # H <= L < H + 1 per symbol


def test_huffman_small_cases() -> None:
    assert huffman_code_lengths([]).tolist() == []
    assert huffman_code_lengths([0, 7, 0]).tolist() == [0, 0, 0]  # one symbol: 0 bits (count known from IR)
    assert huffman_code_lengths([3, 3]).tolist() == [1, 1]
    assert huffman_code_lengths([1, 1, 1, 1]).tolist() == [2, 2, 2, 2]
    assert huffman_code_lengths([1, 1, 2, 4, 8]).tolist() == [4, 4, 3, 2, 1]
    assert huffman_code_lengths([2, 1, 1, 2]).tolist() == huffman_code_lengths([2, 1, 1, 2]).tolist()
    with pytest.raises(ValueError):
        huffman_code_lengths([1, -1])


def test_canonical_code_is_prefix_free_with_the_given_lengths() -> None:
    counts = np.random.default_rng(0).integers(0, 500, size=30)
    lengths = huffman_code_lengths(counts)
    codes = canonical_code(lengths)
    assert [len(cw) for cw in codes] == lengths.tolist()
    words = [cw for cw in codes if cw]
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_entropy_bits() -> None:
    assert entropy_bits([1, 1, 2]) == pytest.approx(6.0)  # 1*2 + 1*2 + 2*1
    assert entropy_bits([0, 5]) == 0.0 and entropy_bits([]) == 0.0


# --- paper-style: hand-computed example ---------------------------------------------------------------------------
# 4 x 8 fc matrix, 2-bit gap field (span 3). Non-zeros (row, col -> index):
#   row 0: (0 -> 1), (5 -> 2)       gaps 0, 5  -> 5 > 3: filler (3) then 2
#   row 1: none
#   row 2: (7 -> 1)                 gap 7      -> fillers (3), (3) then 1
#   row 3: (1 -> 3), (2 -> 1), (3 -> 1)  gaps 1, 1, 1
# IC stream: 0 3 2 | 3 3 1 | 1 1 1  -> counts {0:1, 1:4, 2:1, 3:3}; Huffman lengths 3,1,3,2 -> 16 bits
# A  stream: 1 0 2 | 0 0 1 | 3 1 1  -> counts {0:3, 1:4, 2:1, 3:1}; Huffman lengths 2,1,3,3 -> 16 bits
HAND = [
    [1, 0, 0, 0, 0, 2, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 1],
    [0, 3, 1, 1, 0, 0, 0, 0],
]


def test_hand_computed_fc_budget() -> None:
    q = _qm({"fc.weight": HAND}, [[0.0, -0.5, 0.25, 0.75]], dense={"fc.bias": torch.zeros(4)})
    r = paper_style(q, index_bits_fc=2)
    layer = r.layers[0]
    assert (layer.kind, layer.rows, layer.cols, layer.nnz, layer.fillers) == ("fc", 4, 8, 6, 3)
    assert layer.ir_bits == 5 * 4  # 5 pointers x ceil(log2(9 + 1))
    assert (layer.ic.fixed, layer.ic.huffman, layer.ic.table) == (18, 16, 4 * (2 + 5))
    assert (layer.a.fixed, layer.a.huffman, layer.a.table) == (18, 16, 4 * (2 + 5))  # alphabet {0,1,2,3}: 2 bits
    assert layer.ic.entropy == pytest.approx(2 * math.log2(9) + 4 * math.log2(9 / 4) + 3 * math.log2(3))
    assert layer.a.entropy == pytest.approx(2 * math.log2(9) + 4 * math.log2(9 / 4) + 3 * math.log2(3))
    assert (layer.filler_bits_fixed, layer.filler_bits_huffman) == (3 * (2 + 2), 3 * (2 + 2))
    assert layer.codebook_bits == 3 * 32
    assert r.total_bits("fixed", "weights") == 20 + 18 + 18 + 96
    assert r.total_bits("huffman", "weights") == 20 + 16 + 28 + 16 + 28 + 96 == 204
    assert r.total_bits("huffman", "all") == 204 + 4 * 32
    assert r.cr_weights == pytest.approx(32 * 32 / 204)
    assert r.cr_all == pytest.approx(32 * 36 / (204 + 128))
    assert r.cr("entropy", "weights") == pytest.approx(32 * 32 / (20 + layer.ic.entropy + layer.a.entropy + 96))


def test_default_fields_fillers_in_a_long_row() -> None:
    idx = torch.zeros(70, dtype=torch.int64)
    idx[69] = 1  # gap 69 with 5-bit fields (span 31): fillers at 31 and 62, then 7
    layer = paper_style(_qm({"bias": idx}, [[0.0, 0.5]])).layers[0]
    assert (layer.kind, layer.rows, layer.cols, layer.index_bits) == ("vector", 1, 70, 5)
    assert (layer.nnz, layer.fillers) == (1, 2)
    assert layer.ir_bits == 2 * 2  # 2 pointers x ceil(log2(3 + 1))
    assert layer.ic.fixed == 3 * 5 and layer.a.fixed == 3 * 1  # alphabet {0 (filler), 1}
    assert layer.ic.huffman == 1 + 2 and layer.a.huffman == 3  # IC {31:2, 7:1}; A {0:2, 1:1}


def test_deep_compression_eq1_worked_example() -> None:
    # Han et al. Fig. 3 / Eq. 1: 16 weights, 4 clusters -> 16*32 / (16*2 + 4*32) = 3.2x (before CSR overhead).
    assert weight_sharing_rate(16, 4) == pytest.approx(3.2)
    idx = torch.tensor([[4, 1, 3, 2], [2, 2, 1, 4], [1, 4, 2, 1], [4, 2, 3, 3]])  # every weight non-zero
    layer = deep_compression_estimate(_qm({"w": idx}, [[0.0, -1.0, 0.0625, 1.5, 2.0]])).layers[0]
    assert layer.a.fixed + layer.codebook_bits == 16 * 2 + 4 * 32
    assert 16 * 32 / (layer.a.fixed + layer.codebook_bits) == pytest.approx(3.2)
    assert layer.fillers == 0 and layer.ic.fixed == 16 * 5  # gaps 0,1,1,1 per row: the CSR overhead Eq. 1 omits


def test_conv_weights_are_flattened_out_by_rest() -> None:
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 4, (3, 4, 5, 5), generator=gen) * (torch.rand(3, 4, 5, 5, generator=gen) < 0.1)
    cb = [[0.0, 0.1, 0.2, 0.3]]
    conv = paper_style(_qm({"conv.weight": idx}, cb)).layers[0]
    fc = paper_style(_qm({"fc.weight": idx.reshape(3, 100)}, cb), index_bits_fc=8).layers[0]
    assert (conv.kind, conv.rows, conv.cols, conv.index_bits) == ("conv", 3, 100, 8)
    for attr in ("ir_bits", "ic", "a", "nnz", "fillers", "codebook_bits"):
        assert getattr(conv, attr) == getattr(fc, attr)
    assert paper_style(_qm({"fc.weight": idx.reshape(3, 100)}, cb)).layers[0].fillers >= conv.fillers


def test_shared_codebook_counted_once_per_tensor_otherwise() -> None:
    a, b = torch.tensor([[0, 1], [2, 3]]), torch.tensor([[3, 0, 0, 1]])
    shared = _qm({"a": a, "b": b}, [[0.0, 0.1, 0.2, 0.3]])
    inferred = paper_style(shared)
    assert inferred.shared_codebook_bits == 3 * 32
    assert [layer.codebook_bits for layer in inferred.layers] == [0, 0]
    forced = paper_style(shared, shared_codebook=False)  # Han / ATDL2: every layer pays
    assert forced.shared_codebook_bits == 0 and [layer.codebook_bits for layer in forced.layers] == [96, 96]
    assert forced.total_bits() == inferred.total_bits() + 96
    per_tensor = _qm({"a": a, "b": b}, [[0.0, 0.1, 0.2, 0.3], [0.0, 0.5, 0.6, 0.7, 0.8]], of={"b": 1})
    r = paper_style(per_tensor)
    assert r.shared_codebook_bits == 0 and [layer.codebook_bits for layer in r.layers] == [96, 128]
    assert paper_style(per_tensor, shared_codebook=True).shared_codebook_bits == 96 + 128


def test_all_zero_tensor_costs_only_its_codebook() -> None:
    layer = paper_style(_qm({"w": torch.zeros(3, 5, dtype=torch.int64)}, [[0.0, 1.0]])).layers[0]
    assert (layer.nnz, layer.fillers, layer.ir_bits) == (0, 0, 0)
    for coding in ("fixed", "huffman", "entropy"):
        assert layer.ic.bits(coding) == 0 and layer.a.bits(coding) == 0
        assert layer.total_bits(coding) == 32


def test_dense_weights_scope_and_report_dict() -> None:
    dense = {"fc.bias": torch.zeros(4), "head.weight": torch.zeros(2, 3), "head.bias": torch.zeros(2)}
    q = _qm({"fc.weight": HAND}, [[0.0, -0.5, 0.25, 0.75]], dense=dense)
    r = paper_style(q, index_bits_fc=2, dense_bits=16)
    assert r.num_values("weights") == 32 + 6 and r.num_values("all") == 32 + 12
    assert r.total_bits("huffman", "weights") == 204 + 6 * 16
    assert r.total_bits("huffman", "all") == 204 + 12 * 16
    d = json.loads(json.dumps(r.to_dict()))
    assert d["accounting"].startswith("paper-style")
    assert d["totals"]["huffman"]["bits_weights"] == 204 + 96
    assert d["totals"]["fixed"]["cr_all"] == pytest.approx(32 * 44 / (152 + 192))
    row = d["layers"][0]
    assert (row["ir_bits"], row["ic_huffman"], row["ic_table"], row["a_fixed"], row["fillers"]) == (20, 16, 28, 18, 3)
    assert row["total_bits_huffman"] == 204 and row["entries"] == 9 and row["shape"] == [4, 8]
    assert [x["is_weight"] for x in d["dense"]] == [False, True, False]


def test_deep_compression_preset_is_paper_style_with_han_parameters() -> None:
    q = _qm({"fc.weight": HAND}, [[0.0, -0.5, 0.25, 0.75]])
    a = deep_compression_estimate(q)
    b = paper_style(q, index_bits_fc=5, index_bits_conv=5, shared_codebook=False)
    assert a.to_dict() == b.to_dict()


def test_large_tensor_is_fast_enough() -> None:
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(1, 17, (1000, 1000), generator=gen) * (torch.rand(1000, 1000, generator=gen) < 0.05)
    layer = paper_style(_qm({"w": idx}, [[0.0] + [i / 10 for i in range(1, 17)]])).layers[0]
    assert layer.nnz == int((idx != 0).sum())
    assert layer.a.huffman <= layer.a.fixed  # 17 symbols (fillers included): Huffman beats 5-bit fixed width
    assert layer.a.entropy <= layer.a.huffman < layer.a.entropy + layer.a.symbols


# --- other papers -------------------------------------------------------------------------------------------------
def test_values_only_hand_example() -> None:
    l1 = torch.zeros(10, 10, dtype=torch.int64)
    l1.view(-1)[:10] = torch.tensor([1, 2, 3, 4, 1, 2, 3, 4, 1, 1])  # 10 non-zeros, 4 distinct -> 2 bits each
    l2 = torch.zeros(50, dtype=torch.int64)
    l2[:3] = torch.tensor([1, 2, 2])  # 3 non-zeros, 2 distinct -> 1 bit each
    q = _qm(
        {"l1": l1, "l2": l2}, [[0.0, 0.1, 0.2, 0.3, 0.4], [0.0, -1.0, 1.0]], of={"l2": 1}, dense={"b": torch.ones(9)}
    )
    assert values_only(q) == pytest.approx(32 * 150 / (10 * 2 + 3 * 1))


def test_values_only_rounds_to_1e6_and_single_value_is_free() -> None:
    near = _qm({"w": torch.tensor([1, 2, 0, 3])}, [[0.0, 0.5, 0.5 + 1e-9, -0.5]])  # 0.5 and 0.5+1e-9 merge
    assert values_only(near) == pytest.approx(32 * 4 / (math.log2(2) * 3))
    assert values_only(_qm({"w": torch.tensor([1, 1, 0])}, [[0.0, 0.5]])) == math.inf


def test_weight_entropy_over_all_quantized_weights() -> None:
    q = _qm(
        {"a": torch.tensor([0, 0, 1, 2]), "b": torch.tensor([0, 0, 1, 2])},
        [[0.0, 1.0, 2.0], [0.0, 2.0, 1.0]],  # same values through different codebooks
        of={"b": 1},
        dense={"bias": torch.arange(5.0)},
    )
    e = weight_entropy_bits(q)  # histogram {0: 4, 1: 2, 2: 2} -> 1.5 bits per weight
    assert (e.bits_per_weight, e.total_bits, e.unique_values) == (1.5, 12.0, 3)
    assert e.unique_values == q.unique_values()


def test_integer_buffers_are_not_parameters():
    q = QuantizedModel(
        [torch.tensor([0.0, 1.0])],
        {"w": QuantizedTensor(torch.ones(4, 4, dtype=torch.int64))},
        {"b": torch.zeros(4), "bn.num_batches_tracked": torch.tensor(3), "mask": torch.ones(5, dtype=torch.bool)},
    )
    assert paper_style(q).num_values("all") == 16 + 4
