"""Byte planes of the tensors a file keeps dense: lossless, and only where they are smaller than raw."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightshare.codec import decode, encode, inspect
from weightshare.codec.ans import table_size
from weightshare.codec.planes import decode_planes, encode_planes
from weightshare.core.quantized import QuantizedModel


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
    assert inspect(data).components["dense"] == sum(r.stream_bytes for r in rows.values())
