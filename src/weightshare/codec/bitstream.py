"""Byte-level primitives of the ``.wsz`` format: varints, a bounded reader, raw bit packing.

Everything here is format-neutral and allocation-safe: a :class:`Reader` never
reads past its buffer and every malformed input raises :class:`FormatError`, so
the parser above it can trust each value it gets back.
"""

from __future__ import annotations

import numpy as np

from weightshare.core.errors import FormatError

__all__ = ["FormatError", "Reader", "Writer", "pack_bits", "unpack_bits", "varint", "varint_sizes"]

MAX_VARINT_BYTES = 10  # enough for any 64-bit value; longer runs are corruption


def varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low bits first, high bit = "more follows".

    >>> varint(0), varint(127), varint(300)
    (b'\\x00', b'\\x7f', b'\\xac\\x02')
    """
    if value < 0:
        raise ValueError(f"varint needs a non-negative integer, got {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_sizes(values: np.ndarray) -> np.ndarray:
    """Byte length of each value's varint, vectorised (used to price symbol tables).

    >>> varint_sizes(np.array([0, 127, 128, 2**14])).tolist()
    [1, 1, 2, 3]
    """
    v = np.asarray(values, dtype=np.int64)
    bits = np.where(v > 0, np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) + 1, 1)
    return (bits + 6) // 7


class Writer:
    """Append-only byte builder with the few field types the format uses."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def __len__(self) -> int:
        return len(self.buf)

    def u8(self, value: int) -> None:
        self.buf.append(value)

    def uvarint(self, value: int) -> None:
        self.buf += varint(value)

    def raw(self, data: bytes) -> None:
        self.buf += data

    def blob(self, data: bytes) -> None:
        """Length-prefixed bytes."""
        self.uvarint(len(data))
        self.buf += data


class Reader:
    """Bounded cursor over bytes: every read is checked against the end of the buffer.

    >>> r = Reader(b"\\xac\\x02xy")
    >>> r.uvarint(), r.read(2), r.remaining
    (300, b'xy', 0)
    >>> r.u8()
    Traceback (most recent call last):
    ...
    weightshare.core.errors.FormatError: truncated: need 1 byte(s) at offset 4, only 0 left
    """

    def __init__(self, data: bytes | memoryview, offset: int = 0) -> None:
        self.data = memoryview(data).cast("B")
        self.pos = offset

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def read(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise FormatError(f"truncated: need {n} byte(s) at offset {self.pos}, only {self.remaining} left")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u8(self) -> int:
        return self.read(1)[0]

    def uvarint(self, limit: int = 2**63, what: str = "varint") -> int:
        """One varint, refused when longer than 10 bytes, non-canonical, or above ``limit``."""
        value, shift, start = 0, 0, self.pos
        for i in range(MAX_VARINT_BYTES):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                # A trailing 0x00 continuation would give two encodings of one value; keep bytes canonical.
                if byte == 0 and i > 0:
                    raise FormatError(f"non-canonical varint at offset {start}")
                break
        else:
            raise FormatError(f"varint longer than {MAX_VARINT_BYTES} bytes at offset {start}")
        if value > limit:
            raise FormatError(f"{what} = {value} at offset {start} exceeds the limit {limit}")
        return value

    def blob(self, limit: int, what: str) -> bytes:
        return self.read(self.uvarint(limit, f"{what} length"))


def pack_bits(values: np.ndarray, nbits: np.ndarray) -> bytes:
    """Concatenate each value's low ``nbits`` bits (most significant first), zero-padded to a byte.

    Vectorised: every bit becomes one array element, then ``np.packbits``.

    >>> pack_bits(np.array([1, 2, 3]), np.array([1, 2, 2])).hex()  # 1 10 11 -> 11011000
    'd8'
    """
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    nbits = np.asarray(nbits, dtype=np.int64).reshape(-1)
    total = int(nbits.sum())
    if total == 0:
        return b""
    starts = np.cumsum(nbits) - nbits
    owner = np.repeat(np.arange(values.size), nbits)
    shift = nbits[owner] - 1 - (np.arange(total) - starts[owner])
    bits = ((values[owner] >> shift) & 1).astype(np.uint8)
    return np.packbits(bits).tobytes()


def unpack_bits(data: bytes, nbits: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_bits`; refuses a wrong length or non-zero padding.

    >>> unpack_bits(bytes.fromhex("d8"), np.array([1, 2, 2])).tolist()
    [1, 2, 3]
    """
    nbits = np.asarray(nbits, dtype=np.int64).reshape(-1)
    total = int(nbits.sum())
    if len(data) != (total + 7) // 8:
        raise FormatError(f"raw bit block has {len(data)} bytes, expected {(total + 7) // 8}")
    out = np.zeros(nbits.size, dtype=np.int64)
    if total == 0:
        return out
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits[total:].any():
        raise FormatError("non-zero padding bits in a raw bit block")
    has = np.flatnonzero(nbits)
    starts = (np.cumsum(nbits) - nbits)[has]
    owner = np.repeat(np.arange(has.size), nbits[has])
    shift = nbits[has][owner] - 1 - (np.arange(total) - starts[owner])
    out[has] = np.add.reduceat(bits[:total].astype(np.int64) << shift, starts)
    return out
