"""The .wsz codec: bit-exact round trips, sizes near the entropy limit, and refusal of bad files."""

from __future__ import annotations

import math
import random
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from weightshare.codec import (
    check_compatible,
    decode,
    encode,
    entropy_bound_bytes,
    file_rates,
    float16_rounded,
    format_inspect,
    inspect,
    load_compressed,
    save_compressed,
)
from weightshare.codec.ans import GapCode, ans_decode, ans_encode, entropy_bits
from weightshare.codec.bitstream import Reader, pack_bits, unpack_bits, varint
from weightshare.codec.container import MAGIC
from weightshare.core.coverage import covered_parameters
from weightshare.core.errors import FormatError
from weightshare.core.quantized import QuantizedModel, QuantizedTensor


def assert_same(a: QuantizedModel, b: QuantizedModel, float16: bool = False) -> None:
    """Bit-exact equality (float16: equal to the original rounded to float16)."""

    def exact(x: torch.Tensor) -> torch.Tensor:
        x = x.half().float() if float16 else x
        return x.contiguous().view(torch.int32)

    assert len(a.codebooks) == len(b.codebooks)
    for ca, cb in zip(a.codebooks, b.codebooks, strict=True):
        assert torch.equal(exact(ca), cb.view(torch.int32))
    assert list(a.quantized) == list(b.quantized) and list(a.dense) == list(b.dense)
    for name, qt in a.quantized.items():
        assert b.quantized[name].codebook == qt.codebook
        assert b.quantized[name].indices.shape == qt.indices.shape
        assert torch.equal(b.quantized[name].indices, qt.indices.to(torch.int64))
    for name, t in a.dense.items():
        assert b.dense[name].shape == t.shape and torch.equal(exact(t), b.dense[name].view(torch.int32))
    assert b.meta == a.meta


@st.composite
def qmodels(draw: st.DrawFn) -> QuantizedModel:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_cb = draw(st.integers(1, 3))
    sizes = [draw(st.sampled_from([1, 2, 3, 17, 256, 300])) for _ in range(n_cb)]
    codebooks = [torch.from_numpy(np.r_[0.0, rng.normal(0, 0.3, k - 1)].astype(np.float32)) for k in sizes]
    quantized, dense = {}, {}
    for t in range(draw(st.integers(0, 4))):
        shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 7, 64, 300]), max_size=3)))
        cb = draw(st.integers(0, n_cb - 1))
        zeros = draw(st.sampled_from([0.0, 0.3, 0.9, 0.99, 0.999, 1.0]))
        n = math.prod(shape)
        idx = np.where(rng.random(n) < zeros, 0, rng.integers(0, sizes[cb], n))
        if draw(st.booleans()) and n:  # a skewed histogram over few symbols
            idx = np.minimum(rng.geometric(0.6, n) - 1, sizes[cb] - 1) * (rng.random(n) >= zeros)
        quantized[f"layer{t}.weight"] = QuantizedTensor(torch.from_numpy(idx.reshape(shape)), cb)
    for t in range(draw(st.integers(0, 2))):
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=2)))
        dense[f"layer{t}.bias"] = torch.from_numpy(rng.normal(0, 2, shape).astype(np.float32))
    meta = draw(st.sampled_from([{}, {"method": "sws", "model": "lenet5", "tau": 0.005}]))
    return QuantizedModel(codebooks, quantized, dense, meta)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qmodels(), st.booleans())
def test_round_trip_is_bit_exact(q: QuantizedModel, float16: bool) -> None:
    data = encode(q, float16=float16)
    back = decode(data)
    assert_same(q, back, float16)
    assert encode(q, float16=float16) == data  # deterministic
    report = inspect(data)
    parts = report.header_bytes + report.meta_bytes + report.table_bytes + report.codebook_bytes
    assert parts + report.stream_bytes + report.dense_bytes == len(data) == report.file_bytes
    assert report.float16 is float16


def test_save_writes_exactly_the_reported_bytes(tmp_path) -> None:
    q = QuantizedModel([torch.tensor([0.0, 1.5, -2.0])], {"w": QuantizedTensor(torch.tensor([[0, 1], [2, 2]]))},
                       {"b": torch.tensor([0.25, -0.0])}, {"method": "dc"})  # fmt: skip
    path = tmp_path / "m.wsz"
    n = save_compressed(q, path)
    assert n == path.stat().st_size == len(encode(q))
    assert_same(q, load_compressed(path))
    assert [p.name for p in tmp_path.iterdir()] == ["m.wsz"]  # no temp file left behind


def test_edge_cases_cost_what_they_should() -> None:
    k = torch.tensor([0.0, 0.5, -0.5, 0.25])
    tensors = {
        "empty": torch.zeros(0, 5, dtype=torch.int64),
        "scalar": torch.tensor(3),
        "single": torch.tensor([2]),
        "zeros": torch.zeros(500, 800, dtype=torch.int64),
        "one_symbol": torch.full((64, 64), 3),
    }
    q = QuantizedModel([k], {n: QuantizedTensor(t) for n, t in tensors.items()})
    data = encode(q)
    assert_same(q, decode(data))
    rows = {r.name: r for r in inspect(data).rows}
    assert rows["zeros"].total_bytes == 2 and rows["zeros"].nnz == 0  # 400k zeros: two empty tables
    assert rows["one_symbol"].stream_bytes == 0 and rows["one_symbol"].unique == 1
    assert rows["empty"].total_bytes == 1 and rows["scalar"].stream_bytes == 0
    # 38 of them are the names; the codebook takes 12; one element-type byte per tensor and the alias count: 6
    assert len(data) == 116


def test_index_stream_reaches_the_empirical_entropy() -> None:
    rng = np.random.default_rng(0)
    p = np.r_[0.9, np.full(16, 0.1 / 16)]
    idx = rng.choice(17, size=266_200, p=p)
    q = QuantizedModel([torch.linspace(0, 1, 17)], {"w": QuantizedTensor(torch.from_numpy(idx))})
    row = inspect(encode(q)).rows[0]
    h = entropy_bits(np.bincount(idx)) / 8
    assert row.stream_bytes + row.raw_bits_bytes <= 1.001 * h + 16
    assert row.index_entropy_bytes == pytest.approx(h)


def test_sparse_layout_wins_on_structured_sparsity() -> None:
    idx = torch.zeros(500, 800, dtype=torch.int64)
    idx[:, ::97] = torch.randint(1, 17, (500, 9), generator=torch.Generator().manual_seed(0))
    q = QuantizedModel([torch.linspace(0, 1, 17)], {"w": QuantizedTensor(idx)})
    row = inspect(encode(q)).rows[0]
    assert row.layout == "structured"  # 9 occupied columns, every cell of them non-zero: no gap information
    assert row.total_bytes < 0.5 * row.index_entropy_bytes  # positions are regular, indices are not
    dense_idx = torch.randint(0, 17, (300, 300), generator=torch.Generator().manual_seed(1))
    q2 = QuantizedModel([torch.linspace(0, 1, 17)], {"w": QuantizedTensor(dense_idx)})
    assert inspect(encode(q2)).rows[0].layout == "dense"


def test_huge_gaps_use_raw_bits() -> None:
    idx = torch.zeros(1 << 22, dtype=torch.int64)
    idx[[5, 1_000_003, (1 << 22) - 1]] = torch.tensor([1, 2, 1])
    q = QuantizedModel([torch.tensor([0.0, 1.0, 2.0])], {"w": QuantizedTensor(idx)})
    data = encode(q)
    assert_same(q, decode(data))
    assert len(data) < 60


def test_gap_code_round_trips_every_range() -> None:
    gaps = np.r_[np.arange(300), 2 ** np.arange(31) - 1, 2 ** np.arange(31), 2**31 - 1]
    for d, m in [(0, 0), (3, 1), (4, 3), (12, 2), (15, 3)]:
        code = GapCode(d, m)
        sym, nbits, raw = code.symbols(gaps)
        assert (code.extra_bits(int(sym.max()) + 1)[sym] == nbits).all()
        assert sym.max() < code.max_alphabet
        packed = pack_bits(raw, nbits)
        back = code.gaps(sym, lambda nb, packed=packed: unpack_bits(packed, nb))
        assert np.array_equal(back, gaps)


def test_primitives() -> None:
    for v in [0, 1, 127, 128, 2**35, 2**63 - 1]:
        assert Reader(varint(v)).uvarint() == v
    with pytest.raises(FormatError, match="non-canonical"):
        Reader(b"\x80\x00").uvarint()
    with pytest.raises(FormatError, match="exceeds"):
        Reader(varint(300)).uvarint(limit=299)
    s = np.array([3, 3, 1, 0, 3, 3, 3])
    counts = np.bincount(s)
    assert ans_decode(ans_encode([(s, counts)]), [counts])[0].tolist() == s.tolist()
    with pytest.raises(FormatError, match="shorter than its information"):
        ans_decode(b"", [np.full(4, 1000)])


def test_a_dense_stream_that_ends_in_dead_rows_decodes() -> None:
    """The coder starts empty, so a final run of the first symbol (a dead row's zeros) costs nothing: the
    stream is shorter than the information content of its table, and still a sound file (version 2 refused it)."""
    rng = np.random.default_rng(0)
    idx = rng.integers(1, 5, (200, 100)) * (rng.random((200, 100)) < 0.5)
    idx[-2:] = 0
    q = QuantizedModel([torch.tensor([0.0, 0.5, -0.5, 0.25, -0.25])], {"w": QuantizedTensor(torch.from_numpy(idx))})
    data = encode(q)
    row = inspect(data).rows[0]
    assert row.layout == "dense" and row.stream_bytes < row.entropy_bytes - 8  # below the table's information
    assert_same(q, decode(data))


# --- bad input --------------------------------------------------------------
def sample_model() -> QuantizedModel:
    g = torch.Generator().manual_seed(0)
    w1 = torch.randint(0, 5, (20, 30), generator=g) * (torch.rand(20, 30, generator=g) < 0.2)
    w2 = torch.randint(0, 5, (10, 20), generator=g)
    cbs = [torch.tensor([0.0, 0.1, -0.1, 0.2, -0.2])]
    return QuantizedModel(cbs, {"fc1.weight": QuantizedTensor(w1), "fc2.weight": QuantizedTensor(w2)},
                          {"fc1.bias": torch.randn(20, generator=g), "fc2.bias": torch.randn(10, generator=g)},
                          {"method": "sws"})  # fmt: skip


def with_crc(body: bytes, prefix: bytes = MAGIC + b"\x01\x00") -> bytes:
    return prefix + struct.pack("<I", zlib.crc32(body)) + body


def test_refuses_truncated_foreign_newer_and_corrupted_files() -> None:
    data = encode(sample_model())
    for n in range(len(data)):
        with pytest.raises(FormatError):
            decode(data[:n])
    with pytest.raises(FormatError, match="not a .wsz"):
        decode(b"PK\x03\x04" + data[4:])
    with pytest.raises(FormatError, match="newer format version 4"):
        decode(data[:4] + b"\x04" + data[5:])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(FormatError, match="checksum"):
        decode(bytes(flipped))
    with pytest.raises(FormatError, match="body"):
        decode(with_crc(data[10:] + b"\0", data[:6]))  # trailing garbage


def test_refuses_absurd_sizes_before_allocating() -> None:
    # meta "", one name part "w", no codebooks, no quantized, one dense tensor of 2**20 x 2**20.
    head = b"\x00" + b"\x01\x01w" + b"\x00" + b"\x00" + b"\x01" + b"\x01" + b"\x02" + varint(2**20) * 2
    with pytest.raises(FormatError, match="more than 2147483648 elements"):
        decode(with_crc(head))
    small = b"\x00\x01\x01w\x00\x00\x01\x01\x02" + varint(2**15) * 2  # 2**30 floats declared, none present
    start = time.perf_counter()
    with pytest.raises(FormatError, match="declares a body of 4294967296 bytes"):
        decode(with_crc(small))
    assert time.perf_counter() - start < 0.5


def test_check_compatible_names_the_problem() -> None:
    q = sample_model()
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(30, 20))
    net.add_module("fc2", nn.Linear(20, 10))
    check_compatible(q, net)
    bad = nn.Sequential()
    bad.add_module("fc1", nn.Linear(31, 20))
    with pytest.raises(
        FormatError, match=r"fc2.weight: not in the model.*fc1.weight: shape \(20, 30\) in the file, \(20, 31\)"
    ):
        check_compatible(q, bad)


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    op = rng.randrange(4)
    if op == 0:
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2:
        del b[rng.randrange(len(b)) :]
    else:
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
    if rng.random() < 0.8 and len(b) >= 10:  # most mutations get a fresh CRC so they reach the parser
        b[6:10] = struct.pack("<I", zlib.crc32(bytes(b[10:])))
    return bytes(b)


def test_fuzz_only_format_errors() -> None:
    seeds = [encode(sample_model()), encode(sample_model(), float16=True)]
    seeds.append(encode(QuantizedModel([torch.tensor([0.0, 1.0])], {"a.b": QuantizedTensor(torch.tensor([0, 1]))})))
    rng = random.Random(1234)
    outcomes = {"ok": 0, "FormatError": 0}
    start = time.perf_counter()
    for i in range(5000):
        data = mutate(seeds[i % len(seeds)], rng)
        try:
            decode(data)
            inspect(data)
            outcomes["ok"] += 1
        except FormatError:
            outcomes["FormatError"] += 1
    assert outcomes["FormatError"] > 3500 and sum(outcomes.values()) == 5000
    assert time.perf_counter() - start < 20


# --- reporting ----------------------------------------------------------------
def test_inspect_rates_and_bound() -> None:
    q = sample_model()
    data = encode(q)
    report = inspect(data)
    assert [r.name for r in report.rows] == ["fc1.weight", "fc2.weight", "fc1.bias", "fc2.bias"]
    fc1 = report.rows[0]
    assert (fc1.numel, fc1.nnz, fc1.shape) == (600, q.quantized["fc1.weight"].nnz, (20, 30))
    assert fc1.unique == q.unique_values("fc1.weight")
    assert report.rows[2].layout == "raw" and report.rows[2].stream_bytes == 80
    rates = file_rates(report)
    assert rates["cr_all"] == pytest.approx(32 * 830 / (8 * len(data)))
    assert rates["cr_weights"] > rates["cr_all"]
    bound = entropy_bound_bytes(q)
    assert bound <= len(data) <= 1.01 * bound + 16
    text = format_inspect(report)
    assert "fc1.weight" in text and "CR_all" in text and f"file {len(data)} B" in text
    assert report.to_dict()["rows"][0]["name"] == "fc1.weight"


def test_float16_option() -> None:
    q = sample_model()
    assert len(encode(q, float16=True)) < len(encode(q))
    big = QuantizedModel([torch.tensor([0.0, 1e6])], {}, {})
    with pytest.raises(ValueError, match="float16 range"):
        encode(big, float16=True)
    with pytest.raises(ValueError, match="codebook 0: values beyond the float16 range"):
        float16_rounded(big)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qmodels())
def test_float16_rounded_is_what_a_float16_file_gives_back(q: QuantizedModel) -> None:
    before = encode(q)
    half = float16_rounded(q)
    assert_same(half, decode(encode(half, float16=True)))  # lossless from here on
    assert_same(q, half, float16=True)  # rounded exactly as the encoder rounds
    assert encode(q) == before  # q is left as it was
    q.dense["steps"] = torch.tensor([3, 70000, -1])  # not a float32: stays as it is
    assert torch.equal(float16_rounded(q).dense["steps"], q.dense["steps"])


# --- format version 2: element types, aliases; version 1 still read ----------------------------------
def _fixture_tensors(seed: int) -> tuple[torch.Generator, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A sparse and a dense index tensor and two codebooks, as the fixture files of every version hold them."""
    g = torch.Generator().manual_seed(seed)
    sparse = torch.zeros(30, 200, dtype=torch.int64)
    sparse[::3, ::37] = torch.randint(1, 9, (10, 6), generator=g)
    sparse[29, 199] = 3
    dense = torch.randint(0, 5, (8, 3, 5), generator=g)
    return g, sparse, dense, [torch.tensor([0.0, 0.125, -0.125, 0.25, -0.25]), torch.linspace(0, 1, 9)]


def version1_model() -> QuantizedModel:
    """What tests/codec/version1*.wsz hold: written once by the version-1 encoder, kept as they are."""
    g, sparse, dense, codebooks = _fixture_tensors(20)
    quantized = {"fc1.weight": QuantizedTensor(sparse, 1), "conv.weight": QuantizedTensor(dense, 0)}
    dense_tensors = {"fc1.bias": torch.randn(30, generator=g), "bn.running_var": torch.rand(4, generator=g)}
    return QuantizedModel(codebooks, quantized, dense_tensors, {"method": "dc", "model": "toy"})


@pytest.mark.parametrize("float16", [False, True])
def test_version1_files_still_decode(float16: bool) -> None:
    data = (Path(__file__).parent / f"version1{'-float16' if float16 else ''}.wsz").read_bytes()
    assert data[4] == 1
    decoded = decode(data)
    assert_same(version1_model(), decoded, float16=float16)
    assert all(qt.dtype == torch.float32 for qt in decoded.quantized.values()) and decoded.aliases == {}
    report = inspect(data)
    assert report.version == 1 and report.file_bytes == len(data)
    assert encode(decoded, float16=float16)[4] == 3  # written again: the current version


def version2_model() -> QuantizedModel:
    """What tests/codec/version2*.wsz hold: written once by the version-2 encoder, kept as they are."""
    g, sparse, dense, codebooks = _fixture_tensors(21)
    quantized = {"fc1.weight": QuantizedTensor(sparse, 1), "conv.weight": QuantizedTensor(dense, 0, torch.bfloat16)}
    dense_tensors = {"fc1.bias": torch.randn(30, generator=g), "bn.running_var": torch.rand(4, generator=g),
                     "bn.num_batches_tracked": torch.tensor(7), "half": torch.randn(5, generator=g).half()}  # fmt: skip
    return QuantizedModel(codebooks, quantized, dense_tensors, {"method": "dc", "model": "toy"},
                          aliases={"head.weight": "fc1.weight"})  # fmt: skip


@pytest.mark.parametrize("float16", [False, True])
def test_version2_files_still_decode(float16: bool) -> None:
    data = (Path(__file__).parent / f"version2{'-float16' if float16 else ''}.wsz").read_bytes()
    assert data[4] == 2 and len(data) == (359 if float16 else 451)
    decoded = decode(data)
    expected = version2_model()
    floats = {n: t for n, t in expected.dense.items() if t.dtype == torch.float32}
    assert_same(QuantizedModel(expected.codebooks, expected.quantized, floats, expected.meta),
                QuantizedModel(decoded.codebooks, decoded.quantized, {n: decoded.dense[n] for n in floats},
                               decoded.meta), float16=float16)  # fmt: skip
    for name in ("bn.num_batches_tracked", "half"):  # other dtypes: every bit, whatever the flag
        got, want = decoded.dense[name].reshape(-1), expected.dense[name].reshape(-1)
        assert got.dtype == want.dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert decoded.aliases == {"head.weight": "fc1.weight"}
    assert decoded.quantized["conv.weight"].dtype == torch.bfloat16
    assert decoded.dense["bn.num_batches_tracked"].dtype == torch.int64
    assert inspect(data).version == 2 and inspect(data).file_bytes == len(data)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]  # fmt: skip


def _tensor_of(dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(3, 5, generator=g) > 0.5
    if dtype.is_floating_point:
        t = (torch.randn(3, 5, generator=g) * 1e3).to(dtype)
        t[0, :3] = torch.tensor([float("inf"), -0.0, float("nan")])
        return t
    info = torch.iinfo(dtype)
    return torch.tensor([info.min, info.max, 0, -1 if info.min else 1, 7] * 3, dtype=dtype).reshape(3, 5)


@pytest.mark.parametrize("float16", [False, True])
def test_dense_tensors_of_every_dtype_come_back_bit_for_bit(float16: bool) -> None:
    g = torch.Generator().manual_seed(3)
    dense = {f"t.{str(d)[6:]}": _tensor_of(d, g) for d in DTYPES}
    idx = torch.randint(0, 3, (4, 4), generator=g)
    quantized = {f"q.{str(d)[6:]}": QuantizedTensor(idx, 0, d) for d in (torch.float16, torch.bfloat16)}
    q = QuantizedModel([torch.tensor([0.0, 0.5, -1.5])], quantized, dense)
    back = decode(encode(q, float16=float16))
    for name, t in dense.items():
        got = back.dense[name]
        assert got.dtype == t.dtype and got.shape == t.shape, name
        if t.dtype == torch.float32 and float16:  # the flag: float32 values rounded to float16, as asked
            assert torch.equal(got.view(torch.int32), t.half().float().view(torch.int32)), name
        else:
            assert torch.equal(got.view(torch.uint8), t.view(torch.uint8)), name  # every bit, NaN included
    assert {n: qt.dtype for n, qt in back.quantized.items()} == {
        "q.float16": torch.float16,
        "q.bfloat16": torch.bfloat16,
    }
    assert back.to_state_dict()["q.bfloat16"].dtype == torch.bfloat16
    rows = {r.name: r for r in inspect(encode(q)).rows}
    # Stored in their own width (int16: 15 x 2 B), or byte planes where coding them is smaller (version 3):
    # int64's six high bytes hold three patterns, bool's one plane two values.
    assert rows["t.int16"].layout == "raw" and rows["t.int16"].stream_bytes == 15 * 2
    assert (rows["t.int64"].layout, rows["t.int64"].stream_bytes + rows["t.int64"].table_bytes) == ("planes", 82)
    assert (rows["t.bool"].layout, rows["t.bool"].stream_bytes + rows["t.bool"].table_bytes) == ("planes", 8)
    assert rows["t.bfloat16"].dtype == "bfloat16" and rows["q.float16"].dtype == "float16"
    assert inspect(encode(q)).num_params == 4 * 15 + 2 * 16  # integer and bool tensors are not parameters


def test_a_shared_tensor_is_stored_once() -> None:
    idx = torch.randint(0, 3, (50, 40), generator=torch.Generator().manual_seed(1))
    single = QuantizedModel([torch.tensor([0.0, 0.5, -0.5])], {"emb.weight": QuantizedTensor(idx)})
    shared = QuantizedModel(single.codebooks, dict(single.quantized), aliases={"head.weight": "emb.weight"})
    extra = len(encode(shared)) - len(encode(single))
    # The name part "head" with its length, two part ids, the entry it points at: no second tensor.
    assert extra == len("head") + 1 + 2 + 1
    back = decode(encode(shared))
    assert back.aliases == {"head.weight": "emb.weight"}
    state = back.to_state_dict()
    assert state["head.weight"] is state["emb.weight"]
    assert inspect(encode(shared)).aliases == {"head.weight": "emb.weight"}


def test_refuses_unknown_element_types_and_bad_bools() -> None:
    with pytest.raises(ValueError, match="x: dtype torch.complex64 cannot be stored"):
        encode(QuantizedModel([torch.zeros(1)], {}, {"x": torch.zeros(2, dtype=torch.complex64)}))
    data = encode(QuantizedModel([torch.zeros(1)], {}, {"m": torch.tensor([True, False])}))
    assert data[-2:] == b"\x01\x00"
    with pytest.raises(FormatError, match="m: a bool tensor holds a byte other than 0 or 1"):
        decode(with_crc(data[10:-2] + b"\x02\x00", data[:6]))
    code_at = data.index(b"\x09\x01\x02")  # dtype bool, 1 dimension of 2
    with pytest.raises(FormatError, match="m: unknown or unsuitable element type code 10"):
        decode(with_crc(data[10:code_at] + b"\x0a" + data[code_at + 1 :], data[:6]))


class EveryKindOfTensor(nn.Module):
    """BatchNorm, depthwise and grouped convolutions, bias-free layers, a bare parameter, an embedding
    tied to the output layer, attention, float16 and bfloat16 layers, int64 and bool buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, bias=False)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.embed = nn.Embedding(12, 8)
        self.attention = nn.MultiheadAttention(8, 2)
        self.head = nn.Linear(8, 12, bias=False)
        self.head.weight = self.embed.weight
        self.scale = nn.Parameter(torch.randn(8))
        self.half = nn.Linear(8, 8).half()
        self.brain = nn.Linear(8, 4).to(torch.bfloat16)
        self.register_buffer("mask", torch.rand(8) > 0.5)
        self.register_buffer("steps", torch.arange(5) * 1_000_000_007)


def test_any_module_comes_back_entry_for_entry() -> None:
    torch.manual_seed(0)
    model = EveryKindOfTensor()
    model.bn(torch.randn(2, 8, 5, 5))  # running statistics and num_batches_tracked move away from their start
    codebook = torch.linspace(-0.5, 0.5, 17)
    codebook = torch.cat([torch.zeros(1), codebook[codebook != 0]])
    covered = covered_parameters(model)
    assert "head.weight" not in covered and "attention.in_proj_weight" in covered and "half.weight" in covered
    nearest = {n: (p.detach().float().reshape(-1, 1) - codebook).abs().argmin(1) for n, p in covered.items()}
    q = QuantizedModel.from_assignments(model.state_dict(), nearest, [codebook])
    assert q.aliases == {"head.weight": "embed.weight"}
    assert q.quantized["brain.weight"].dtype == torch.bfloat16 and q.dense["steps"].dtype == torch.int64

    torch.manual_seed(1)
    restored = decode(encode(q)).load_into(EveryKindOfTensor())
    expected = {n: q.to_state_dict()[n] for n in model.state_dict()}
    for name, tensor in restored.state_dict().items():
        original = model.state_dict()[name]
        assert tensor.dtype == original.dtype and tensor.shape == original.shape, name
        assert torch.equal(tensor, expected[name]), name
        if name not in covered and name != "head.weight":
            assert torch.equal(tensor, original), name  # every dense entry exactly as the model held it
    assert int(restored.bn.num_batches_tracked) == 1 and restored.head.weight is restored.embed.weight
    assert torch.equal(restored.head.weight, codebook[nearest["embed.weight"]].reshape(12, 8))


def test_load_into_ties_an_untied_model_again() -> None:
    shared = QuantizedModel(
        [torch.tensor([0.0, 1.0])],
        {"0.weight": QuantizedTensor(torch.ones(3, 3, dtype=torch.int64))},
        aliases={"1.weight": "0.weight"},
    )
    net = shared.load_into(nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)))
    assert net[1].weight is net[0].weight and isinstance(net[1].weight, nn.Parameter)
    assert [n for n, _ in net.named_parameters()] == ["0.weight"]
