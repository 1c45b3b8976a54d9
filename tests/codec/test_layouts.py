"""Every layout of a quantized tensor decodes to its indices bit for bit, the encoder keeps the smallest; byte
planes of the tensors a file keeps exact are lossless, and only used where they are smaller than raw."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightshare.codec import decode, encode, inspect
from weightshare.codec.ans import table_size
from weightshare.codec.container import FLOAT_CODES, Header, QuantEntry, parse_header, write_file
from weightshare.codec.layouts import candidates, decode_planes, encode_planes
from weightshare.core.quantized import QuantizedModel, QuantizedTensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # in the order of FLOAT_CODES


@st.composite
def pruned(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """Indices of a pruned tensor: dead rows and columns, runs of dead inputs, random zeros; a codebook size."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 5, 16, 40]), min_size=0, max_size=4)))
    k = draw(st.sampled_from([1, 2, 5, 17, 300]))
    rows, cols = (shape[0], math.prod(shape[1:])) if shape else (1, 1)
    alive = rng.random((rows, 1)) < draw(st.sampled_from([0.2, 0.7, 1.0]))
    alive = alive & (rng.random((1, cols)) < draw(st.sampled_from([0.3, 0.9, 1.0])))
    if draw(st.booleans()) and cols > 4:
        alive[:, cols // 4 : cols // 2] = False  # a run of dead inputs
    kept = rng.random((rows, cols)) < draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    idx = np.where(alive & kept, rng.integers(1, max(k, 2), (rows, cols)), 0) if k > 1 else np.zeros((rows, cols))
    return idx.astype(np.int64).reshape(shape), k


@pytest.mark.slow  # ~7 s: four layouts per example, each written, decoded and inspected
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pruned(), st.sampled_from(FLOAT_CODES))
def test_every_layout_round_trips_bit_exactly(tensor: tuple[np.ndarray, int], dtype: int) -> None:
    idx, k = tensor
    entry = QuantEntry("layer.weight", idx.shape, 0, 0, [], 0, dtype=dtype)
    codebook = np.linspace(-1, 1, k, dtype="<f4")[1:] if k > 1 else np.zeros(0, "<f4")
    costs = []
    for e, parts, cost in candidates(entry, idx.reshape(-1)):
        data = write_file(Header(False, {}, [k], [e], []), [codebook.tobytes(), *parts])
        back = decode(data).quantized["layer.weight"]
        assert back.dtype == FLOAT_DTYPES[dtype] and back.indices.shape == idx.shape
        assert np.array_equal(back.indices.numpy(), idx)
        row = inspect(data).rows[0]
        assert row.positions_bytes + row.values_bytes == pytest.approx(row.stream_bytes + row.raw_bits_bytes)
        costs.append(cost)
    cb = torch.from_numpy(np.r_[np.float32(0), codebook])
    model = QuantizedModel([cb], {"layer.weight": QuantizedTensor(torch.from_numpy(idx), 0, FLOAT_DTYPES[dtype])})
    data = encode(model)
    assert data == encode(model)  # deterministic
    kept = parse_header(data).quantized[0]
    own = kept.stream_bytes + kept.raw_bytes + kept.table_bytes + (1 + _run_bytes(kept) if kept.structure else 0)
    assert own == min(costs)  # the smallest layout, as priced
    assert np.array_equal(decode(data).quantized["layer.weight"].indices.numpy(), idx)


def _run_bytes(e: QuantEntry) -> int:
    return sum(o.gap is not None for o in e.structure.occupancy)


# --- byte planes ----------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(0, 600), st.sampled_from(["bias", "bytes", "constant", "ints"]),
       st.integers(0, 2**32 - 1))  # fmt: skip
def test_planes_round_trip_every_width(width: int, n: int, kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if kind == "bias":
        values = rng.normal(0, 0.05, n).astype(np.float64).view(np.uint8)[: n * width]
        stored = np.resize(values, n * width).tobytes()
    elif kind == "bytes":
        stored = rng.integers(0, 256, n * width, dtype=np.uint8).tobytes()
    elif kind == "constant":
        stored = bytes(range(width)) * n
    else:
        stored = rng.integers(-3, 1000, n).astype(f"<i{width}" if width > 1 else "i1").tobytes()
    code = encode_planes(stored, width)
    assert code.cost <= len(stored)  # never more than raw
    assert decode_planes(code.body, n, width, code.planes, code.tables) == stored
    assert len(code.tables) == bin(code.planes).count("1")


def test_bias_like_floats_gain_on_their_sign_and_exponent_byte() -> None:
    """300 biases ~ N(0, 0.05), as LeNet-300-100's first layer holds: only the top byte (sign and 7 exponent
    bits, ~3 bits of information) is worth coding, the three mantissa bytes are close to uniform: 15% saved."""
    stored = np.random.default_rng(0).normal(0, 0.05, 300).astype("<f4").tobytes()
    code = encode_planes(stored, 4)
    assert code.planes == 0b1000
    assert (len(code.body), sum(table_size(t) for t in code.tables), code.cost) == (999, 17, 1017)  # of 1200
    noise = np.random.default_rng(1).integers(0, 256, 1200, dtype=np.uint8).tobytes()
    assert encode_planes(noise, 4).planes == 0 and encode_planes(noise, 4).body == noise  # raw: nothing to gain


def test_dense_tensors_travel_as_planes_in_the_file() -> None:
    g = torch.Generator().manual_seed(0)
    dense = {"fc.bias": torch.randn(300, generator=g) * 0.05, "bn.running_var": torch.ones(64),
             "bn.num_batches_tracked": torch.tensor(937)}  # fmt: skip
    q = QuantizedModel([torch.zeros(1)], {}, dense)
    data = encode(q)
    rows = {r.name: r for r in inspect(data).rows}
    assert rows["fc.bias"].layout == "planes" and rows["fc.bias"].total_bytes < 0.92 * 1200
    assert rows["bn.running_var"].layout == "planes" and rows["bn.running_var"].total_bytes == 13  # four tables
    assert rows["bn.num_batches_tracked"].layout == "raw" and rows["bn.num_batches_tracked"].stream_bytes == 8
    back = decode(data)
    for name, t in dense.items():
        assert torch.equal(back.dense[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name
    assert inspect(data).components["biases"] == sum(r.stream_bytes for r in rows.values())
