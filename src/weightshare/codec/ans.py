"""Entropy-coded symbol streams: count tables, the ANS coder, and the gap (run-length) alphabet.

A stream is one or more *parts*, each a sequence of symbols with its own
empirical count table. The tables are stored (compactly, as varints), and the
decoder rebuilds the identical ``constriction`` categorical model from them, so
the coded size sits within a few bytes of the order-0 empirical entropy.

Gaps between non-zeros can be as large as the tensor, so they are mapped to a
small alphabet first: gaps below ``2**d`` are their own symbol; a larger gap
with leading bit ``e`` becomes one symbol for ``(e, next m bits)`` plus
``e - m`` raw bits (an Elias-gamma-like bucketing with ``m`` mantissa bits in
the symbol, as zstd and LZMA do for offsets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import constriction
import numpy as np

from weightshare.codec.bitstream import Reader, Writer, varint_sizes
from weightshare.core.errors import FormatError

__all__ = [
    "GapCode",
    "ans_decode",
    "ans_encode",
    "choose_gap_code",
    "entropy_bits",
    "read_table",
    "table_size",
    "write_table",
]

# ANS output can never be shorter than the information content minus the coder's initial state;
# a declared stream that is shorter is corrupt (this also stops a tiny stream from "decoding" billions of symbols).
_ANS_SLACK_BITS = 64


def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 empirical information content ``sum(-c * log2(c / n))`` in bits.

    >>> entropy_bits(np.array([2, 2])), entropy_bits(np.array([5, 0]))
    (4.0, 0.0)
    """
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum()) if c.size > 1 else 0.0


# --- count tables ---------------------------------------------------------
def _zero_runs(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each run of zero entries."""
    z = np.concatenate([[0], (counts == 0).astype(np.int8), [0]])
    edges = np.diff(z)
    starts = np.flatnonzero(edges == 1)
    return starts, np.flatnonzero(edges == -1) - starts


def table_size(counts: np.ndarray) -> int:
    """Bytes :func:`write_table` takes for these counts (vectorised, to price candidate codes).

    >>> table_size(np.array([7, 0, 0, 0, 1]))  # A=5, 7, zero-run(3), 1
    5
    """
    counts = np.trim_zeros(np.asarray(counts, dtype=np.int64), "b")
    _, lengths = _zero_runs(counts)
    nonzero = counts[counts > 0]
    return int(
        varint_sizes([counts.size]).sum() + varint_sizes(nonzero).sum() + lengths.size + varint_sizes(lengths - 1).sum()
    )


def write_table(w: Writer, counts: np.ndarray) -> None:
    """Alphabet size ``A`` (trailing zeros trimmed), then each count as a varint; a zero count is
    followed by the number of further zeros in its run, so unused symbols cost almost nothing."""
    counts = np.trim_zeros(np.asarray(counts, dtype=np.int64), "b")
    w.uvarint(counts.size)
    starts, lengths = _zero_runs(counts)
    run_at = dict(zip(starts.tolist(), lengths.tolist(), strict=True))
    i = 0
    while i < counts.size:  # one iteration per stored entry, never per weight
        if i in run_at:
            w.uvarint(0)
            w.uvarint(run_at[i] - 1)
            i += run_at[i]
        else:
            w.uvarint(int(counts[i]))
            i += 1


def read_table(r: Reader, max_alphabet: int, max_total: int, what: str) -> np.ndarray:
    """Read a count table; refuses an alphabet above ``max_alphabet`` or counts summing above ``max_total``."""
    size = r.uvarint(max_alphabet, f"{what}: alphabet size")
    counts = np.zeros(size, dtype=np.int64)
    i = total = 0
    while i < size:
        c = r.uvarint(max_total, f"{what}: count")
        if c == 0:
            run = r.uvarint(size - i - 1, f"{what}: zero run") + 1
            i += run
            continue
        total += c
        if total > max_total:
            raise FormatError(f"{what}: counts sum beyond {max_total}")
        counts[i] = c
        i += 1
    if size and counts[-1] == 0:
        raise FormatError(f"{what}: table ends in a zero count (non-canonical)")
    return counts


# --- the ANS stream -------------------------------------------------------
def _model(counts: np.ndarray) -> constriction.stream.model.Categorical:
    # Only present symbols enter the model (absent ones would each still take the minimum probability);
    # float64 of exact integer counts is the same on both sides, so the quantised model is identical.
    present = counts[counts > 0].astype(np.float64)
    return constriction.stream.model.Categorical(present, perfect=False)


def ans_encode(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Code ``(symbols, counts)`` parts into one ANS stream, decoded in the same order.

    A part with fewer than two present symbols costs nothing (the table says it all).
    Words are little-endian; the zero high bytes of the last word are dropped.

    >>> s = np.array([0, 1, 1, 0, 1])
    >>> data = ans_encode([(s, np.bincount(s))])
    >>> ans_decode(data, [np.bincount(s)])[0].tolist()
    [0, 1, 1, 0, 1]
    >>> ans_encode([(np.zeros(9, dtype=np.int64), np.array([9]))])
    b''
    """
    coder = constriction.stream.stack.AnsCoder()
    for symbols, counts in reversed(parts):  # a stack: the last part pushed is the first popped
        if np.count_nonzero(counts) < 2:
            continue
        rank = np.cumsum(counts > 0) - 1
        coder.encode_reverse(rank[symbols].astype(np.int32), _model(counts))
    words = coder.get_compressed().astype("<u4").tobytes()
    # constriction never ends a stream in a zero word, so at most 3 zero bytes are stripped.
    return words.rstrip(b"\0")


def ans_decode(data: bytes, tables: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Decode the parts whose count tables are given; every failure becomes :class:`FormatError`."""
    needed = _least_information(tables)
    if 8 * len(data) + _ANS_SLACK_BITS < needed:
        raise FormatError(f"ANS stream of {len(data)} bytes is shorter than its information content")
    if data and data[-1] == 0:
        raise FormatError("ANS stream ends in a zero byte (non-canonical)")
    coded = [c for c in tables if np.count_nonzero(c) >= 2]
    if not coded and data:
        raise FormatError(f"ANS stream of {len(data)} bytes where the tables need none")
    padded = data + b"\0" * (-len(data) % 4)
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(padded, dtype="<u4").astype(np.uint32))
        out = [_decode_part(coder, counts) for counts in tables]
        exhausted = coder.is_empty()
    except FormatError:
        raise
    except Exception as exc:  # constriction reports corrupt data with its own exception types
        raise FormatError(f"corrupt ANS stream: {exc}") from exc
    if not exhausted:
        raise FormatError("ANS stream has data left after the last symbol")
    return out


def _least_information(tables: Sequence[np.ndarray]) -> float:
    """Bits a stream of these parts holds at least, up to the coder's state.

    The coder starts from state 0, where a symbol of rank 0 (cumulative frequency 0) leaves the state at 0:
    the run of rank-0 symbols that ends the last coded part costs nothing. So all of that part's rank-0
    symbols are taken off (a coded part has a symbol of another rank, so the free run stops inside it).
    Without this, a file whose dense index stream ends in a dead row was written and then refused.
    """
    coded = [c for c in tables if np.count_nonzero(c) >= 2]
    if not coded:
        return 0.0
    last = coded[-1]
    first = int(last[np.flatnonzero(last)[0]])
    return sum(entropy_bits(c) for c in coded) - first * math.log2(int(last.sum()) / first)


def _decode_part(coder: constriction.stream.stack.AnsCoder, counts: np.ndarray) -> np.ndarray:
    n, present = int(counts.sum()), np.flatnonzero(counts)
    if present.size < 2:
        return np.full(n, present[0] if present.size else 0, dtype=np.int64)
    return present[coder.decode(_model(counts), n)]


# --- gaps between non-zeros -----------------------------------------------
class GapCode:
    """The gap alphabet for direct range ``2**d`` and ``m`` mantissa bits per bucket symbol.

    >>> g = GapCode(2, 1)
    >>> sym, nbits, raw = g.symbols(np.array([0, 3, 4, 6, 13]))
    >>> sym.tolist(), nbits.tolist(), raw.tolist()
    ([0, 3, 4, 5, 7], [0, 0, 1, 1, 2], [0, 0, 0, 0, 1])
    >>> g.gaps(sym, lambda nb: raw).tolist()
    [0, 3, 4, 6, 13]
    """

    MAX_D, MAX_M, MAX_EXP = 15, 3, 31  # gaps stay below 2**31 (the element cap)

    def __init__(self, d: int, m: int) -> None:
        if not (0 <= m <= min(d, self.MAX_M) and d <= self.MAX_D):
            raise FormatError(f"invalid gap code d={d}, m={m}")
        self.d, self.m = d, m

    @property
    def max_alphabet(self) -> int:
        return (1 << self.d) + (self.MAX_EXP - self.d + 1 << self.m)

    def extra_bits(self, alphabet: int) -> np.ndarray:
        """Raw bits that follow each symbol of an alphabet of this size."""
        s = np.arange(alphabet, dtype=np.int64)
        exp = self.d + ((s - (1 << self.d)) >> self.m)
        return np.where(s < (1 << self.d), 0, exp - self.m)

    @staticmethod
    def leading_bit(gaps: np.ndarray) -> np.ndarray:
        """Position of each gap's leading 1 (0 for gap 0); exact below 2**53."""
        return np.frexp(np.maximum(gaps, 1).astype(np.float64))[1].astype(np.int64) - 1

    def symbols(self, gaps: np.ndarray, exp: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map gaps to (symbol, raw bit count, raw value); ``exp`` may pass in :meth:`leading_bit`."""
        gaps = np.asarray(gaps, dtype=np.int64)
        exp = self.leading_bit(gaps) if exp is None else exp
        big = gaps >= (1 << self.d)
        nbits = np.where(big, exp - self.m, 0)
        top = (gaps >> nbits) & ((1 << self.m) - 1)
        sym = np.where(big, (1 << self.d) + ((exp - self.d) << self.m) + top, gaps)
        return sym, nbits, gaps & ((np.int64(1) << nbits) - 1)

    def gaps(self, symbols: np.ndarray, read_raw) -> np.ndarray:
        """Inverse of :meth:`symbols`; ``read_raw(nbits)`` supplies the raw values."""
        s = np.asarray(symbols, dtype=np.int64)
        nbits = self.extra_bits(int(s.max()) + 1 if s.size else 0)[s]
        raw = read_raw(nbits)
        r = s - (1 << self.d)
        lead = (1 << self.m) + (r & ((1 << self.m) - 1))
        return np.where(s < (1 << self.d), s, (lead << nbits) | raw)


def choose_gap_code(gaps: np.ndarray) -> tuple[GapCode, float]:
    """The ``(d, m)`` with the smallest estimated cost (entropy + raw bits + table), in bits.

    >>> code, bits = choose_gap_code(np.zeros(100, dtype=np.int64))
    >>> (code.d, code.m, round(bits))
    (0, 0, 16)
    """
    best: tuple[float, int, int] | None = None
    top = int(gaps.max()).bit_length() if gaps.size else 0
    exp = GapCode.leading_bit(gaps)
    for d in range(min(top, 12) + 1):  # a direct range beyond the largest gap cannot help
        for m in range(min(d, GapCode.MAX_M) + 1):
            sym, nbits, _ = GapCode(d, m).symbols(gaps, exp)
            counts = np.bincount(sym)
            cost = entropy_bits(counts) + float(nbits.sum()) + 8 * table_size(counts)
            if best is None or cost < best[0]:
                best = (cost, d, m)
    assert best is not None
    return GapCode(best[1], best[2]), best[0]
