"""The layouts of each tensor: a quantized tensor's indices (dense, sparse, structured) and the bytes of a
tensor kept exact (raw or byte planes).

The encoder codes every layout of a quantized tensor and keeps the smallest, counting its stream, raw
bits, tables and its own header bytes; the earlier layout wins a tie (dense, sparse, structured
row-major, structured column-major), so the same tensor always gives the same bytes (docs/format.md,
"Choice of layout").

A tensor kept exact (biases, norms, buffers) is split into byte planes (plane ``p`` = byte ``p`` of
every stored little-endian element): a float's top byte (sign and high exponent bits) takes few values
in a bias vector, its low mantissa bytes are close to uniform. Each plane is ANS-coded with its own
count table when that is smaller than its raw bytes; the rest stay raw, and the whole entry stays raw
unless coding gains (docs/format.md, "Byte planes").
"""

from __future__ import annotations

import numpy as np

from weightshare.codec.ans import GapCode, ans_decode, ans_encode, choose_gap_code, entropy_bits, table_size
from weightshare.codec.bitstream import Reader, pack_bits, unpack_bits, varint
from weightshare.codec.container import DENSE, MAX_ELEMENTS, SPARSE, STRUCTURED, DenseEntry, Header, QuantEntry
from weightshare.codec.structure import (
    COLUMN_MAJOR,
    ROW_MAJOR,
    decode_occupancy,
    scatter_positions,
    structured_positions,
)
from weightshare.core.errors import FormatError

__all__ = [
    "Candidate",
    "PlaneCode",
    "candidates",
    "decode_indices",
    "decode_planes",
    "encode_indices",
    "encode_planes",
    "nonzero_positions",
    "stored_bytes",
]

Candidate = tuple[QuantEntry, list[bytes], int]  # entry, body parts, cost in bytes


def _dense_code(entry: QuantEntry, idx: np.ndarray) -> Candidate:
    counts = np.bincount(idx, minlength=1) if idx.size else np.zeros(0, dtype=np.int64)
    stream = ans_encode([(idx, counts)])
    entry.layout, entry.tables, entry.stream_bytes = DENSE, [counts], len(stream)
    return entry, [stream], len(stream) + table_size(counts)


def _gap_symbols(positions: np.ndarray) -> tuple[GapCode, np.ndarray, np.ndarray, np.ndarray]:
    """The zeros before each of increasing positions, as (gap code, symbols, raw bit counts, raw values)."""
    gaps = np.diff(positions, prepend=-1) - 1
    code, _ = choose_gap_code(gaps)
    return code, *code.symbols(gaps)


def _sparse_code(entry: QuantEntry, idx: np.ndarray) -> Candidate:
    nz = np.flatnonzero(idx)
    code, sym, nbits, raw = _gap_symbols(nz)
    values = idx[nz] - 1  # index 0 never occurs among the non-zeros
    gap_counts, idx_counts = np.bincount(sym), np.bincount(values)
    stream, raw_bytes = ans_encode([(sym, gap_counts), (values, idx_counts)]), pack_bits(raw, nbits)
    entry.layout, entry.tables, entry.stream_bytes, entry.gap = SPARSE, [gap_counts, idx_counts], len(stream), code
    cost = len(stream) + len(raw_bytes) + table_size(gap_counts) + table_size(idx_counts)
    return entry, [stream, raw_bytes], cost


def _structured_code(entry: QuantEntry, idx: np.ndarray, order: int) -> Candidate:
    """Row and column occupancy, then the gaps inside the occupied submatrix in ``order``, then the values."""
    structure, occupancy, sub_pos, flat = structured_positions(idx, entry.shape, order)
    code, sym, nbits, raw = _gap_symbols(sub_pos)
    values = idx[flat] - 1
    parts = [(s, o.table) for o, (s, _, _) in zip(structure.occupancy, occupancy, strict=True) if s is not None]
    parts += [(sym, np.bincount(sym)), (values, np.bincount(values))]
    stream = ans_encode(parts)
    raw_bytes = pack_bits(np.concatenate([r for _, r, _ in occupancy] + [raw]),
                          np.concatenate([n for _, _, n in occupancy] + [nbits]))  # fmt: skip
    entry.layout, entry.tables, entry.stream_bytes = STRUCTURED, [t for _, t in parts], len(stream)
    entry.gap, entry.structure = code, structure
    runs = sum(o.gap is not None for o in structure.occupancy)
    cost = len(stream) + len(raw_bytes) + sum(table_size(t) for t in entry.tables) + 1 + runs  # + its header bytes
    return entry, [stream, raw_bytes], cost


def candidates(entry: QuantEntry, idx: np.ndarray) -> list[Candidate]:
    """Every layout of the flat indices ``idx`` in tie-break order (one, dense, for an empty tensor);
    ``entry`` gives name, shape, codebook and dtype."""

    def fresh() -> QuantEntry:
        return QuantEntry(entry.name, entry.shape, entry.codebook, DENSE, [], 0, dtype=entry.dtype)

    coded = [_dense_code(fresh(), idx)]
    if idx.size:
        coded.append(_sparse_code(fresh(), idx))
        coded += [_structured_code(fresh(), idx, order) for order in (ROW_MAJOR, COLUMN_MAJOR)]
    return coded


def encode_indices(entry: QuantEntry, idx: np.ndarray) -> tuple[QuantEntry, list[bytes]]:
    """The smallest layout of the flat indices ``idx`` (the first of equal ones): its entry and body parts.

    >>> from weightshare.codec.container import LAYOUT_NAMES
    >>> idx = np.zeros((40, 60), dtype=np.int64); idx[::4, 10:50:3] = 1 + np.arange(140).reshape(10, 14) % 3
    >>> e, _ = encode_indices(QuantEntry("w", (40, 60), 0, DENSE, [], 0), idx.reshape(-1))
    >>> LAYOUT_NAMES[e.layout], e.nnz
    ('structured', 140)
    """
    if entry.numel > MAX_ELEMENTS:
        raise ValueError(f"{entry.name}: {entry.numel} elements, the format's limit is {MAX_ELEMENTS}")
    best, *_ = sorted(candidates(entry, idx), key=lambda c: c[2])  # a stable sort: the first of equal costs
    return best[0], best[1]


# --- decoding -------------------------------------------------------------
def decode_indices(e: QuantEntry, stream: bytes, raw: bytes) -> np.ndarray:
    """The flat index array of one tensor from its stream and raw bits; every defect is a :class:`FormatError`."""
    if e.layout == DENSE:
        return ans_decode(stream, e.tables)[0]
    positions, values = _nonzeros(e, stream, raw)
    out = np.zeros(e.numel, dtype=np.int64)
    out[positions] = values + 1
    return out


def nonzero_positions(e: QuantEntry, stream: bytes, raw: bytes) -> np.ndarray:
    """The non-zeros' flat positions, increasing, without building the whole tensor (except for the dense
    layout, whose stream holds every weight)."""
    if e.layout == DENSE:
        return np.flatnonzero(ans_decode(stream, e.tables)[0])
    return np.sort(_nonzeros(e, stream, raw)[0])


def _nonzeros(e: QuantEntry, stream: bytes, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions (in the layout's order) and ``index - 1`` of the non-zeros of a sparse or structured tensor."""
    parts = ans_decode(stream, e.tables)
    positions = _positions(e, parts[0], raw) if e.layout == SPARSE else _structured_positions(e, parts, raw)
    return positions, parts[-1]


def _positions(e: QuantEntry, sym: np.ndarray, raw: bytes) -> np.ndarray:
    assert e.gap is not None
    gaps = e.gap.gaps(sym, lambda nbits: unpack_bits(raw, nbits))
    positions = np.cumsum(gaps + 1) - 1
    if positions.size and positions[-1] >= e.numel:
        raise FormatError(f"{e.name}: non-zero position {int(positions[-1])} beyond {e.numel} elements")
    return positions


def _structured_positions(e: QuantEntry, parts: list[np.ndarray], raw: bytes) -> np.ndarray:
    """Occupancy of rows and columns, then the gaps inside the occupied submatrix (one raw block for all)."""
    assert e.structure is not None and e.gap is not None
    coded = iter(parts[:-2])
    symbols = [next(coded) if o.table is not None else None for o in e.structure.occupancy]
    gap_sym = parts[-2]
    gap_nbits = e.gap.extra_bits(int(gap_sym.max()) + 1 if gap_sym.size else 0)[gap_sym]
    nbits = [o.raw_nbits(s) for o, s in zip(e.structure.occupancy, symbols, strict=True)] + [gap_nbits]
    values = np.split(unpack_bits(raw, np.concatenate(nbits)), np.cumsum([n.size for n in nbits[:-1]]))
    rows, cols = (
        decode_occupancy(o, s, v, e.name) for o, s, v in zip(e.structure.occupancy, symbols, values[:2], strict=True)
    )
    gaps = e.gap.gaps(gap_sym, lambda _: values[-1])
    sub_pos = np.cumsum(gaps + 1) - 1
    return scatter_positions(sub_pos, rows, cols, e.shape, e.structure.order, e.name)


# --- tensors kept exact: byte planes --------------------------------------
class PlaneCode:
    """What :func:`encode_planes` chose: the mask of coded planes, their tables and the body bytes."""

    def __init__(self, planes: int, tables: list[np.ndarray], stream: bytes, body: bytes) -> None:
        self.planes, self.tables, self.stream, self.body = planes, tables, stream, body

    @property
    def cost(self) -> int:
        """Body + tables + the stream-length varint: what the entry costs beyond the raw layout's header."""
        extra = len(varint(len(self.stream))) if self.planes else 0
        return len(self.body) + sum(table_size(t) for t in self.tables) + extra


def encode_planes(stored: bytes, width: int) -> PlaneCode:
    """The smaller of raw storage and byte planes (those that gain coded, the others raw), raw on a tie.

    >>> values = np.linspace(0.01, 0.02, 300, dtype="<f4")
    >>> code = encode_planes(values.tobytes(), 4)
    >>> bin(code.planes), len(code.body)  # the top (sign, exponent) plane holds one value: its table says it all
    ('0b1000', 900)
    """
    raw = PlaneCode(0, [], b"", stored)
    n = len(stored) // width
    if n == 0:
        return raw
    planes = np.frombuffer(stored, dtype=np.uint8).reshape(n, width).T
    counts = [np.bincount(plane, minlength=1) for plane in planes]
    coded = [p for p in range(width) if entropy_bits(counts[p]) / 8 + table_size(counts[p]) < n]
    if not coded:
        return raw
    stream = ans_encode([(planes[p], counts[p]) for p in coded])
    body = stream + b"".join(planes[p].tobytes() for p in range(width) if p not in coded)
    code = PlaneCode(sum(1 << p for p in coded), [counts[p] for p in coded], stream, body)
    return code if code.cost < raw.cost else raw


def decode_planes(body: bytes, numel: int, width: int, planes: int, tables: list[np.ndarray]) -> bytes:
    """The stored elements' bytes back from a dense entry's body: the coded planes' ANS stream (every byte
    but the raw planes' ``numel`` each at its end), then the raw planes; both sides were sized from the header.

    >>> stored = np.linspace(0.01, 0.02, 300, dtype="<f4").tobytes()
    >>> code = encode_planes(stored, 4)
    >>> decode_planes(code.body, 300, 4, code.planes, code.tables) == stored
    True
    """
    if not planes:
        return body
    coded = [p for p in range(width) if planes >> p & 1]
    split = len(body) - (width - len(coded)) * numel
    decoded = iter(ans_decode(body[:split], tables))
    raw = iter(np.frombuffer(body[split:], dtype=np.uint8).reshape(width - len(coded), numel))
    out = np.empty((width, numel), dtype=np.uint8)
    for p in range(width):
        out[p] = next(decoded) if p in coded else next(raw)
    return out.T.tobytes()


def stored_bytes(r: Reader, h: Header, e: DenseEntry) -> bytes:
    """A dense tensor's stored elements, read from the body at ``r`` (its byte planes decoded)."""
    return decode_planes(r.read(h.dense_bytes(e)), e.numel, h.dense_width(e), e.planes, e.tables)
