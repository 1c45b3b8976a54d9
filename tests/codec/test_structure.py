"""Structured positions (format version 3): occupancy of rows and columns, gaps inside the occupied part."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from weightshare.codec import decode, encode, inspect
from weightshare.codec.ans import GapCode, ans_encode
from weightshare.codec.container import STRUCTURED, Header, QuantEntry, parse_header, write_file
from weightshare.codec.layouts import candidates
from weightshare.codec.structure import (
    ALL,
    BITMAP,
    RAW,
    ROW_MAJOR,
    RUNS,
    Occupancy,
    Structure,
    code_occupancy,
    matrix_shape,
)
from weightshare.core.errors import FormatError
from weightshare.core.quantized import QuantizedModel, QuantizedTensor

CODEBOOK = torch.tensor([0.0, 0.5, -0.5, 0.25, -0.25])


def forced_files(idx: np.ndarray, k: int = 5) -> dict[str, bytes]:
    """A one-tensor file per layout candidate (the encoder's choice set aside), keyed by layout and order."""
    entry = QuantEntry("w", idx.shape, 0, 0, [], 0)
    files = {}
    for e, parts, _ in candidates(entry, idx.reshape(-1).astype(np.int64)):
        key = f"{['dense', 'sparse', 'structured'][e.layout]}{e.structure.order if e.structure else ''}"
        body = [np.linspace(0.1, 1, k - 1, dtype="<f4").tobytes(), *parts]
        files[key] = write_file(Header(False, {}, [k], [e], []), body)
    return files


def crafted() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    masked = rng.integers(1, 5, (30, 40)) * (rng.random((30, 40)) < 0.3)
    masked[[2, 5, 6, 29]] = 0  # dead output units
    masked[:, :7] = 0  # dead inputs at the border
    masked[:, 20] = 0
    one = np.zeros((9, 11), dtype=np.int64)
    one[4, 6] = 3
    conv = rng.integers(1, 5, (8, 4, 3, 3)) * (rng.random((8, 4, 3, 3)) < 0.4)
    conv[:, 1] = 0  # a dead input channel: 9 empty columns in a row
    conv[5] = 0  # a dead filter
    return {
        "empty rows and columns": masked,
        "all zero": np.zeros((6, 7), dtype=np.int64),
        "one non-zero": one,
        "full": rng.integers(1, 5, (5, 8)),
        "conv 4-D": conv,
        "1-D": rng.integers(1, 5, 50) * (rng.random(50) < 0.2),
        "scalar": np.array(3),
        "one row": rng.integers(0, 5, (1, 30)),
        "one column": rng.integers(0, 5, (30, 1)),
    }


@pytest.mark.parametrize("name", list(crafted()))
def test_every_layout_round_trips_crafted_tensors(name: str) -> None:
    idx = crafted()[name]
    files = forced_files(idx)
    assert {"dense", "sparse", "structured0", "structured1"} <= set(files)
    for key, data in files.items():
        assert decode(data).quantized["w"].indices.numpy().tolist() == idx.tolist(), key
        assert inspect(data).rows[0].nnz == np.count_nonzero(idx)


def test_matrix_view_and_occupancy_codings() -> None:
    assert matrix_shape((8, 4, 3, 3)) == (8, 36) and matrix_shape((0, 5)) == (0, 5)
    assert code_occupancy(np.ones(10, bool))[0].mode == ALL
    coin = np.random.default_rng(1).random(64) < 0.5  # no structure at all: one raw bit each
    occ, sym, raw, nbits = code_occupancy(coin)
    assert (occ.mode, sym, raw.tolist(), nbits.sum()) == (RAW, None, coin.astype(int).tolist(), 64)
    alternating = np.arange(64) % 2 == 0  # runs of one, all alike: one run symbol, only its table
    assert code_occupancy(alternating)[0].mode == RUNS
    skewed = np.random.default_rng(0).random(400) < 0.9  # scattered, mostly occupied: an order-0 bitmap
    occ, sym, _, nbits = code_occupancy(skewed)
    assert occ.mode == BITMAP and occ.table.tolist() == [int((~skewed).sum()), int(skewed.sum())] and nbits.size == 0
    border = np.zeros(784, bool).reshape(28, 28)
    border[4:24, 4:24] = True  # MNIST's centre: 20 runs of occupied pixels between empty ones
    occ, sym, _, _ = code_occupancy(border.reshape(-1))
    assert occ.mode == RUNS and sym.size == 41


def test_structured_layout_wins_on_dead_units_and_says_what_it_gains() -> None:
    """A 300x784 layer like LeNet-300-100's first: 40% of the output units and MNIST's border pixels dead,
    3% of the rest kept at random: removing them structurally saves 7% of the tensor's bytes (10% of the
    positions: 6.70 bits per non-zero instead of the version-2 gaps' 7.47 at their entropy, tables aside)."""
    rng = np.random.default_rng(16)
    rows = rng.random(300) < 0.6
    pixels = np.zeros((28, 28), bool)
    pixels[3:25, 4:24] = True
    alive = rows[:, None] & pixels.reshape(1, -1)
    idx = np.where(alive & (rng.random((300, 784)) < 0.03), rng.integers(1, 5, (300, 784)), 0)
    costs = [cost for _, _, cost in candidates(QuantEntry("w", idx.shape, 0, 0, [], 0), idx.reshape(-1))]
    assert costs == [3011, 2857, 2648, 2650]  # dense, sparse, structured row-major, column-major
    q = QuantizedModel([CODEBOOK], {"w": QuantizedTensor(torch.from_numpy(idx))})
    row = inspect(encode(q)).rows[0]
    assert row.layout == "structured" and row.total_bytes == 2648 - 2  # its structure byte and run code byte
    assert row.per_nonzero(row.positions_bytes) == pytest.approx(6.70, abs=0.01)
    assert row.per_nonzero(row.gap_bound_bytes) == pytest.approx(7.47, abs=0.01)  # version 2's gaps at entropy


def test_the_choice_is_deterministic_and_ties_go_to_the_earlier_layout() -> None:
    rng = np.random.default_rng(3)
    inner = np.triu(rng.integers(1, 5, (20, 20)) * (rng.random((20, 20)) < 0.3))
    inner = inner + np.triu(inner, 1).T  # symmetric: the same gaps and values in either order
    np.fill_diagonal(inner, 1)
    block = np.zeros((50, 50), dtype=np.int64)
    block[np.ix_(np.r_[10:20, 30:40], np.r_[10:20, 30:40])] = inner
    files = forced_files(block)
    assert len(files["structured0"]) == len(files["structured1"])
    data = encode(QuantizedModel([CODEBOOK], {"w": QuantizedTensor(torch.from_numpy(block))}))
    assert data == encode(QuantizedModel([CODEBOOK], {"w": QuantizedTensor(torch.from_numpy(block.copy()))}))
    entry = parse_header(data).quantized[0]
    assert entry.layout == STRUCTURED and entry.structure.order == ROW_MAJOR
    # Every row and column occupied: the structured positions are the sparse ones plus a structure byte.
    diagonal = QuantizedModel([CODEBOOK], {"w": QuantizedTensor(torch.eye(60, dtype=torch.int64))})
    assert inspect(encode(diagonal)).rows[0].layout == "sparse"
    stripes = np.zeros((40, 30), dtype=np.int64)
    stripes[:, ::3] = 2  # every third column: column-major order has no gaps at all inside the occupied part
    entry = parse_header(encode(QuantizedModel([CODEBOOK], {"w": QuantizedTensor(torch.from_numpy(stripes))})))
    assert entry.quantized[0].structure.order == ROW_MAJOR  # ... nor has row-major: the tie goes to row-major


# --- refusals -----------------------------------------------------------------
def _file(e: QuantEntry, parts: list[bytes]) -> bytes:
    return write_file(Header(False, {}, [5], [e], []), [np.ones(4, "<f4").tobytes(), *parts])


def _refit(data: bytes) -> bytes:
    return data[:6] + struct.pack("<I", zlib.crc32(data[10:])) + data[10:]


def handmade(rows: Occupancy, cols: Occupancy, occupancy: list[np.ndarray], positions: list[int]) -> bytes:
    """A 12x16 structured tensor from given fields (consistent or not): gaps below 64, no raw bits."""
    gaps = np.diff(positions, prepend=-1) - 1
    values = np.arange(len(positions)) % 4
    parts = [(sym, o.table) for o, sym in zip((rows, cols), occupancy, strict=True) if o.table is not None]
    parts += [(gaps, np.bincount(gaps)), (values, np.bincount(values))]
    stream = ans_encode(parts)
    e = QuantEntry("fc.weight", (12, 16), 0, STRUCTURED, [t for _, t in parts], len(stream), GapCode(6, 0),
                   structure=Structure(ROW_MAJOR, rows, cols))  # fmt: skip
    return _file(e, [stream])


def test_refuses_each_corrupt_structured_field() -> None:
    bitmap = np.r_[np.ones(2), np.zeros(10)].astype(np.int64)
    positions = [*range(16), 17, 31]  # in the 2 x 16 occupied part: rows 0 and 1, every column
    good = handmade(Occupancy(12, BITMAP, np.array([10, 2])), Occupancy(16), [bitmap, None], positions)
    assert np.flatnonzero(decode(good).quantized["fc.weight"].indices).tolist() == positions
    structure_byte = ROW_MAJOR | BITMAP << 1 | ALL << 3
    at = good.index(bytes([STRUCTURED | 6 << 2, structure_byte])) + 1  # after the layout byte (gap code d=6, m=0)
    with pytest.raises(FormatError, match="fc.weight: structure byte 0xa4 sets reserved bits"):
        decode(_refit(good[:at] + bytes([good[at] | 0xA0]) + good[at + 1 :]))
    with pytest.raises(FormatError, match="fc.weight: unknown layout byte 0x1a"):
        decode(_refit(good[:4] + b"\x02" + good[5:]))  # version 2's layouts stop at sparse
    with pytest.raises(FormatError, match="fc.weight: row occupancy table counts 11, not 12"):
        decode(handmade(Occupancy(12, BITMAP, np.array([9, 2])), Occupancy(16), [bitmap[1:], None], [0, 5]))
    with pytest.raises(FormatError, match=r"fc.weight: non-zero position 32 beyond the 2x16 occupied part"):
        decode(handmade(Occupancy(12, BITMAP, np.array([10, 2])), Occupancy(16), [bitmap, None], [*range(16), 32]))
    with pytest.raises(FormatError, match="fc.weight: an occupied row or column holds no non-zero"):
        decode(handmade(Occupancy(12), Occupancy(16), [None, None], positions))  # 12 rows, 2 hold one


def test_refuses_runs_that_do_not_cover_the_vector() -> None:
    runs = GapCode(4, 0)  # runs of 3 empty, 10 occupied, 4 empty columns: 17 of 16
    diagonal = [r * 10 + r % 10 for r in range(12)]  # every row and every occupied column holds one
    cols = Occupancy(16, RUNS, np.bincount([3, 9, 3]), runs)
    with pytest.raises(FormatError, match="fc.weight: occupancy runs cover 17 entries, not 16"):
        decode(handmade(Occupancy(12), cols, [None, np.array([3, 9, 3])], diagonal))
    ok = Occupancy(16, RUNS, np.bincount([3, 9, 2]), runs)
    data = handmade(Occupancy(12), ok, [None, np.array([3, 9, 2])], diagonal)
    assert np.flatnonzero(decode(data).quantized["fc.weight"].indices.numpy().any(0)).tolist() == list(range(3, 13))


def test_byte_plane_masks_beyond_the_element_width_are_refused() -> None:
    q = QuantizedModel([CODEBOOK], {}, {"bn.scale": torch.linspace(1, 1.01, 64)})
    data = encode(q)
    entry = parse_header(data).dense[0]
    assert entry.planes == 0b1100  # sign/exponent and the high mantissa byte hold few values
    at = data.index(bytes([entry.planes, entry.stream_bytes]))
    with pytest.raises(FormatError, match="bn.scale: byte-plane mask 0x1c names planes beyond its 4 bytes"):
        decode(_refit(data[:at] + b"\x1c" + data[at + 1 :]))
