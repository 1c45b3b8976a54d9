"""What inspect says a file spends: positions and values per tensor, beside the version-2 gap bound; components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weightshare.codec import encode, file_rates, format_inspect, inspect
from weightshare.codec.ans import entropy_bits
from weightshare.codec.inspect import gap_bound_bits
from weightshare.core.quantized import NOT_WEIGHTS, QuantizedModel, QuantizedTensor


def pruned_model() -> QuantizedModel:
    rng = np.random.default_rng(5)
    fc1 = rng.integers(1, 9, (120, 400)) * (rng.random((120, 400)) < 0.04)
    fc1[:, 300:] = 0  # dead inputs
    fc1[::3] = 0  # dead units
    fc2 = rng.integers(1, 9, (10, 120)) * (rng.random((10, 120)) < 0.6)
    tensors = {"fc1.weight": fc1, "fc2.weight": fc2}
    quantized = {n: QuantizedTensor(torch.from_numpy(t)) for n, t in tensors.items()}
    dense = {"fc1.bias": torch.from_numpy(rng.normal(0, 0.05, 120).astype(np.float32))}
    return QuantizedModel([torch.linspace(-0.4, 0.4, 9)[[4, 0, 1, 2, 3, 5, 6, 7, 8]]], quantized, dense)


def test_components_add_up_to_the_file() -> None:
    data = encode(pruned_model())
    report = inspect(data)
    parts = report.components
    assert sum(parts.values()) == pytest.approx(len(data))
    assert parts["header"] == report.header_bytes + report.meta_bytes and parts["codebooks"] == 4 * 8
    assert parts["biases"] == report.rows[2].stream_bytes and report.rows[2].layout == "planes"
    assert report.to_dict()["components"] == parts
    fc1, fc2 = report.rows[:2]
    assert (fc1.layout, fc2.layout) == ("structured", "dense")
    for row in (fc1, fc2):
        assert row.positions_bytes + row.values_bytes == pytest.approx(row.stream_bytes + row.raw_bits_bytes)


def test_positions_and_values_per_non_zero_beside_the_version2_gaps() -> None:
    q = pruned_model()
    report = inspect(encode(q))
    fc1, fc2 = report.rows[:2]
    idx = q.quantized["fc1.weight"].indices.numpy()
    assert fc1.gap_bound_bytes == pytest.approx(gap_bound_bits(np.flatnonzero(idx)) / 8)
    # The dead units and inputs are removed structurally: 5% fewer bits per non-zero than the v2 gaps at entropy,
    # occupancy included.
    assert fc1.per_nonzero(fc1.positions_bytes) == pytest.approx(6.24, abs=0.01)
    assert fc1.per_nonzero(fc1.gap_bound_bytes) == pytest.approx(6.55, abs=0.01)
    assert fc1.per_nonzero(fc1.values_bytes) == pytest.approx(3.0, abs=0.1)  # 8 values, equally likely
    # Dense layout: the index entropy splits exactly into the zero mask and the non-zero values.
    counts = np.bincount(q.quantized["fc2.weight"].indices.reshape(-1).numpy())
    mask = entropy_bits(np.array([counts[0], counts[1:].sum()]))
    share = mask / entropy_bits(counts)
    assert fc2.positions_bytes == pytest.approx(share * fc2.stream_bytes)
    assert fc2.per_nonzero(fc2.values_bytes) == pytest.approx(8 * (1 - share) * fc2.stream_bytes / fc2.nnz)
    assert report.rows[2].per_nonzero(report.rows[2].values_bytes) is None  # a stored tensor has no positions


def test_the_table_shows_both_and_the_components() -> None:
    report = inspect(encode(pruned_model()))
    lines = format_inspect(report).splitlines()
    assert lines[0].split() == ["tensor", "shape", "numel", "nnz", "uniq", "layout", "pos", "B", "val", "B", "table",
                                "bits/w", "pos", "b/nz", "v2", "gaps", "b/nz", "val", "b/nz", "H", "bytes"]  # fmt: skip
    fc1 = report.rows[0]
    cells = lines[2].split()
    assert cells[5:8] == ["structured", f"{fc1.positions_bytes:.0f}", f"{fc1.values_bytes:.0f}"]
    assert cells[10:13] == [f"{fc1.per_nonzero(b):.2f}" for b in (fc1.positions_bytes, fc1.gap_bound_bytes,
                                                                   fc1.values_bytes)]  # fmt: skip
    parts = report.components
    shown = f"positions {parts['positions']:.0f} + values {parts['values']:.0f} + biases {parts['biases']:.0f}"
    assert shown in lines[6]


def test_biases_quantized_after_the_method_count_as_biases_not_weights() -> None:
    q = pruned_model()
    bias_index = torch.arange(120) % 4  # a bias quantized into a 4-entry codebook of its own
    quantized = dict(q.quantized) | {"fc1.bias": QuantizedTensor(bias_index, codebook=1)}
    codebooks = [*q.codebooks, torch.tensor([0.0, -0.1, 0.05, 0.1])]
    biased = QuantizedModel(codebooks, quantized, {}, {NOT_WEIGHTS: ["fc1.bias"]})
    as_weight = QuantizedModel(codebooks, quantized, {})  # the same file without the meta's list
    listed, plain = inspect(encode(biased)), inspect(encode(as_weight))
    assert [r.name for r in listed.weights] == ["fc1.weight", "fc2.weight"] and len(plain.weights) == 3
    bias_row = next(r for r in listed.rows if r.name == "fc1.bias")
    bias_codebook = 3 * 4  # its 3 stored float32 values (the zero is implicit)
    assert listed.components["biases"] == bias_row.stream_bytes + bias_row.raw_bits_bytes + bias_codebook
    assert listed.components["codebooks"] == listed.codebook_bytes - bias_codebook == 8 * 4
    assert sum(listed.components.values()) == pytest.approx(listed.file_bytes)
    assert "biases" in format_inspect(listed) and "(their codebooks included)" in format_inspect(listed)
    assert listed.components["positions"] == pytest.approx(plain.components["positions"] - bias_row.positions_bytes)
    rates, plain_rates = file_rates(listed), file_rates(plain)
    assert rates["num_weights"] == 120 * 400 + 10 * 120 == plain_rates["num_weights"] - 120
    assert rates["num_quantized"] == plain_rates["num_quantized"]  # the file's own count: every quantized value
    # the bias's bytes and its codebook (3 stored floats of 11) leave the weights' share
    codebook_share = listed.codebook_bytes * 8 / 11
    weights = sum(r.total_bytes + r.header_bytes for r in listed.weights) + codebook_share
    assert weights < rates["weights_bytes"] < weights + listed.header_bytes + listed.meta_bytes
    assert rates["cr_weights"] == pytest.approx(4 * rates["num_weights"] / rates["weights_bytes"])
