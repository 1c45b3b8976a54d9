"""Byte planes: a lossless coding of the tensors a ``.wsz`` file keeps dense (biases, norms, buffers).

A float's top byte (sign and the high exponent bits) takes few distinct values
in a bias vector, while its low mantissa bytes are close to uniform. So the
stored little-endian elements are split into byte planes (plane ``p`` = byte
``p`` of every element) and each plane is ANS-coded with its own count table
when that is smaller than its raw bytes; the rest stay raw. The encoder keeps
raw storage when coding gains nothing (docs/format.md, "Byte planes").
"""

from __future__ import annotations

import numpy as np

from weightshare.codec.ans import ans_decode, ans_encode, entropy_bits, table_size
from weightshare.codec.bitstream import varint

__all__ = ["PlaneCode", "decode_planes", "encode_planes"]


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
