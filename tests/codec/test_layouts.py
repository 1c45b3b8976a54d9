"""Every layout of a quantized tensor decodes to its indices bit for bit; the encoder keeps the smallest."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightshare.codec import decode, encode, inspect
from weightshare.codec.container import FLOAT_CODES, Header, QuantEntry, parse_header, write_file
from weightshare.codec.layouts import candidates
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
