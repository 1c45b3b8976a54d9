"""The ``.wsz`` header: its fields, how they are written, and how they are parsed and checked.

The header describes everything (names, shapes, codebook sizes, layouts, count
tables, stream lengths) so that the size of every body section is known -- and
checked against the file -- before anything large is allocated or decoded.
See ``docs/format.md`` for the byte-by-byte layout.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from weightshare.codec.ans import GapCode, read_table, write_table
from weightshare.codec.bitstream import Reader, Writer
from weightshare.codec.structure import (
    Structure,
    read_occupancy_tables,
    read_structure,
    write_structure,
)
from weightshare.core.errors import FormatError

__all__ = [
    "DTYPE_NAMES",
    "DenseEntry",
    "Header",
    "QuantEntry",
    "dense_array",
    "parse_header",
    "write_file",
]

MAGIC = b"WSZ\x1a"  # \x1a (Ctrl-Z) stops text tools, as in PNG's signature
VERSION = 3  # 3: structured positions, byte planes of dense tensors (docs/format.md, "Version history")
READABLE_VERSIONS = (1, 2, 3)
PREFIX_BYTES = 10  # magic, version, flags, CRC32
FLAG_FLOAT16 = 0x01  # codebook values and float32 dense tensors stored as float16

# Element types by code: name, stored width in bytes, numpy type of the stored bytes (little-endian).
# bfloat16 is stored as its 16 bits; bool as one byte, 0 or 1.
DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
_STORED = ("<f4", "<f2", "<u2", "<f8", "<i8", "<i4", "<i2", "i1", "u1", "u1")
FLOAT32, BFLOAT16, BOOL = 0, 2, 9
FLOAT_CODES = (0, 1, 2, 3)  # a quantized tensor's values are floats
DENSE, SPARSE, STRUCTURED = 0, 1, 2
LAYOUT_NAMES = {DENSE: "dense", SPARSE: "sparse", STRUCTURED: "structured"}

MAX_ELEMENTS = 2**31  # per tensor and in total: refused before any allocation
MAX_NDIM = 16
MAX_CODEBOOK = 2**20


@dataclass
class QuantEntry:
    """One quantized tensor. Tables: dense ``[index counts]``; sparse ``[gap symbol counts, (index - 1) counts]``;
    structured: the coded occupancy vectors' tables, then the sparse ones."""

    name: str
    shape: tuple[int, ...]
    codebook: int
    layout: int
    tables: list[np.ndarray]
    stream_bytes: int
    gap: GapCode | None = None
    header_bytes: int = 0  # its own header entry, tables excluded
    table_bytes: int = 0
    dtype: int = FLOAT32  # the model's dtype of the tensor (code into DTYPE_NAMES)
    structure: Structure | None = None  # STRUCTURED only

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nnz(self) -> int:
        if self.layout != DENSE:
            return int(self.tables[-1].sum())
        counts = self.tables[0]
        return self.numel - int(counts[0]) if counts.size else 0

    @property
    def gap_raw_bits(self) -> int:
        if self.gap is None:
            return 0
        counts = self.tables[-2]
        return int((self.gap.extra_bits(counts.size) * counts).sum())

    @property
    def raw_bits(self) -> int:
        occupancy = sum(o.raw_bits for o in self.structure.occupancy) if self.structure else 0
        return occupancy + self.gap_raw_bits

    @property
    def raw_bytes(self) -> int:
        return (self.raw_bits + 7) // 8


@dataclass
class DenseEntry:
    """One tensor stored exactly, in its own element type: raw, or (version 3) some of its byte planes
    ANS-coded, ``planes`` bit p set for plane p, one count table each (docs/format.md, "Byte planes")."""

    name: str
    shape: tuple[int, ...]
    header_bytes: int = 0
    dtype: int = FLOAT32
    planes: int = 0
    tables: list[np.ndarray] = field(default_factory=list)
    stream_bytes: int = 0
    table_bytes: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def coded_planes(self) -> list[int]:
        return [p for p in range(8) if self.planes >> p & 1]


@dataclass
class Header:
    """Everything before the body, plus what each part costs (for ``inspect``)."""

    float16: bool
    meta: dict[str, object]
    codebook_sizes: list[int]
    quantized: list[QuantEntry]
    dense: list[DenseEntry]
    size: int = 0  # bytes from the start of the file to the body
    meta_bytes: int = 0
    table_bytes: int = 0
    names_bytes: int = 0
    aliases: list[tuple[str, int]] = field(default_factory=list)  # second name -> entry (quantized, then dense)
    version: int = VERSION

    @property
    def width(self) -> int:
        return 2 if self.float16 else 4

    @property
    def codebook_bytes(self) -> int:
        return self.width * sum(k - 1 for k in self.codebook_sizes)

    @property
    def structure_bytes(self) -> int:
        """Header bytes that are neither the meta JSON nor the count tables."""
        return self.size - self.meta_bytes - self.table_bytes

    def dense_width(self, e: DenseEntry) -> int:
        """Bytes per stored element of a dense tensor: float16 flag on float32 ones, else its own width."""
        return self.width if e.dtype == FLOAT32 else np.dtype(_STORED[e.dtype]).itemsize

    def alias_targets(self) -> dict[str, str]:
        names = [e.name for e in self.quantized] + [e.name for e in self.dense]
        return {alias: names[target] for alias, target in self.aliases}

    def dense_bytes(self, e: DenseEntry) -> int:
        """Body bytes of a dense tensor: its ANS stream and the planes stored raw."""
        return e.stream_bytes + (self.dense_width(e) - len(e.coded_planes)) * e.numel

    def body_size(self) -> int:
        q = sum(e.stream_bytes + e.raw_bytes for e in self.quantized)
        return self.codebook_bytes + q + sum(self.dense_bytes(e) for e in self.dense)


# --- writing --------------------------------------------------------------
def _tokens(names: list[str]) -> dict[str, int]:
    """Name parts (split at '.') in first-seen order: 'conv1' and 'weight' are stored once each."""
    ids: dict[str, int] = {}
    for name in names:
        for part in name.split("."):
            ids.setdefault(part, len(ids))
    return ids


def _write_name(w: Writer, name: str, ids: dict[str, int]) -> None:
    parts = name.split(".")
    for i, part in enumerate(parts):
        w.uvarint(2 * ids[part] + (i == len(parts) - 1))  # low bit marks the last part


def _write_shape(w: Writer, shape: tuple[int, ...]) -> None:
    w.uvarint(len(shape))
    for dim in shape:
        w.uvarint(dim)


def _write_tables(w: Writer, h: Header, e: QuantEntry | DenseEntry, start: int) -> None:
    """An entry's count tables; what they and the rest of its entry (from ``start``) cost, for ``inspect``."""
    mid = len(w)
    for counts in e.tables:
        write_table(w, counts)
    e.table_bytes, e.header_bytes = len(w) - mid, mid - start
    h.table_bytes += e.table_bytes


def _write_header(h: Header) -> bytes:
    w = Writer()
    meta = json.dumps(h.meta, separators=(",", ":"), ensure_ascii=False).encode() if h.meta else b""
    w.blob(meta)
    h.meta_bytes = len(w)
    ids = _tokens([e.name for e in h.quantized] + [e.name for e in h.dense] + [a for a, _ in h.aliases])
    w.uvarint(len(ids))
    for token in ids:
        w.blob(token.encode())
    h.names_bytes = len(w) - h.meta_bytes
    w.uvarint(len(h.codebook_sizes))
    for k in h.codebook_sizes:
        w.uvarint(k)
    w.uvarint(len(h.quantized))
    h.table_bytes = 0
    for e in h.quantized:
        start = len(w)
        _write_name(w, e.name, ids)
        _write_shape(w, e.shape)
        if len(h.codebook_sizes) > 1:
            w.uvarint(e.codebook)
        w.u8(e.dtype)
        w.u8(e.layout | (e.gap.d << 2 | e.gap.m << 6 if e.gap else 0))
        if e.structure is not None:
            write_structure(w, e.structure)
        w.uvarint(e.stream_bytes)
        _write_tables(w, h, e, start)
    w.uvarint(len(h.dense))
    for e in h.dense:
        start = len(w)
        _write_name(w, e.name, ids)
        w.u8(e.dtype)
        _write_shape(w, e.shape)
        w.u8(e.planes)
        if e.planes:
            w.uvarint(e.stream_bytes)
        _write_tables(w, h, e, start)
    w.uvarint(len(h.aliases))
    for alias, target in h.aliases:
        _write_name(w, alias, ids)
        w.uvarint(target)
    h.size = PREFIX_BYTES + len(w)
    return bytes(w.buf)


def write_file(h: Header, body: list[bytes]) -> bytes:
    """Prefix (magic, version, flags, CRC32 of everything after it), header, body."""
    payload = _write_header(h) + b"".join(body)
    flags = FLAG_FLOAT16 if h.float16 else 0
    return MAGIC + bytes([VERSION, flags]) + struct.pack("<I", zlib.crc32(payload)) + payload


# --- parsing --------------------------------------------------------------
def _check_prefix(data: bytes) -> int:
    if len(data) < PREFIX_BYTES:
        if not MAGIC.startswith(bytes(data[:4])):
            raise FormatError("not a .wsz file (wrong magic bytes)")
        raise FormatError(f"truncated: {len(data)} bytes, a .wsz file has at least {PREFIX_BYTES}")
    if bytes(data[:4]) != MAGIC:
        raise FormatError(f"not a .wsz file (magic {bytes(data[:4])!r}, expected {MAGIC!r})")
    if data[4] not in READABLE_VERSIONS:
        kind = "newer" if data[4] > VERSION else "unknown"
        raise FormatError(f"{kind} format version {data[4]}; this library reads versions 1 to {VERSION}")
    if data[5] & ~FLAG_FLOAT16:
        raise FormatError(f"unknown flags 0x{data[5]:02x}")
    (crc,) = struct.unpack("<I", data[6:10])
    if zlib.crc32(memoryview(data)[PREFIX_BYTES:]) != crc:
        raise FormatError("checksum mismatch: the file is corrupted or truncated")
    return data[5]


def _read_dtype(r: Reader, name: str, allowed: tuple[int, ...]) -> int:
    code = r.u8()
    if code not in allowed:
        raise FormatError(f"{name}: unknown or unsuitable element type code {code}")
    return code


def _read_meta(r: Reader) -> dict[str, object]:
    raw = r.blob(r.remaining, "meta")
    if not raw:
        return {}
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"meta is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise FormatError(f"meta must be a JSON object, got {type(meta).__name__}")
    return meta


def _read_tokens(r: Reader) -> list[str]:
    tokens = []
    for _ in range(r.uvarint(r.remaining, "name-part count")):
        try:
            tokens.append(r.blob(r.remaining, "name part").decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise FormatError(f"a tensor name is not valid UTF-8: {exc}") from exc
    return tokens


def _read_name(r: Reader, tokens: list[str]) -> str:
    parts = []
    while True:
        code = r.uvarint(2 * len(tokens), "name-part id")
        if code >> 1 >= len(tokens):
            raise FormatError(f"name-part id {code >> 1} out of range ({len(tokens)} parts)")
        parts.append(tokens[code >> 1])
        if code & 1:
            return ".".join(parts)


def _read_shape(r: Reader, name: str) -> tuple[int, ...]:
    ndim = r.uvarint(MAX_NDIM, f"{name}: ndim")
    shape = tuple(r.uvarint(MAX_ELEMENTS, f"{name}: dimension") for _ in range(ndim))
    if math.prod(shape) > MAX_ELEMENTS:
        raise FormatError(f"{name}: shape {shape} has more than {MAX_ELEMENTS} elements")
    return shape


def _read_layout(
    r: Reader, name: str, shape: tuple[int, ...], version: int
) -> tuple[int, GapCode | None, Structure | None]:
    """The layout byte (and, structured, its structure fields): dense, sparse or (version 3) structured."""
    byte = r.u8()
    layout = byte & 3
    if layout == DENSE and not byte >> 2:
        return DENSE, None, None
    if layout == SPARSE or (layout == STRUCTURED and version >= 3):
        gap = GapCode((byte >> 2) & 15, byte >> 6)
        return layout, gap, read_structure(r, shape, name) if layout == STRUCTURED else None
    raise FormatError(f"{name}: unknown layout byte 0x{byte:02x}")


def _read_quant(r: Reader, tokens: list[str], sizes: list[int], version: int) -> QuantEntry:
    start = r.pos
    name = _read_name(r, tokens)
    shape = _read_shape(r, name)
    cb = r.uvarint(len(sizes) - 1, f"{name}: codebook") if len(sizes) > 1 else 0
    if not sizes:
        raise FormatError(f"{name}: quantized tensor but the file has no codebook")
    dtype = _read_dtype(r, name, FLOAT_CODES) if version >= 2 else FLOAT32
    layout, gap, structure = _read_layout(r, name, shape, version)
    stream = r.uvarint(r.remaining, f"{name}: stream length")
    numel, k, mid = math.prod(shape), sizes[cb], r.pos
    if gap is None:
        tables = [read_table(r, k, numel, f"{name}: index table")]
        if int(tables[0].sum()) != numel:
            raise FormatError(f"{name}: index table counts {int(tables[0].sum())} symbols, shape needs {numel}")
    else:
        tables = []
        if structure is not None:
            read_occupancy_tables(r, structure, name)
            tables = [o.table for o in structure.occupancy if o.table is not None]
        gaps = read_table(r, gap.max_alphabet, numel, f"{name}: gap table")
        nnz = int(gaps.sum())
        idx = read_table(r, k - 1, nnz, f"{name}: non-zero index table")
        if int(idx.sum()) != nnz:
            raise FormatError(f"{name}: {nnz} gaps but {int(idx.sum())} non-zero indices")
        tables += [gaps, idx]
    return QuantEntry(name, shape, cb, layout, tables, stream, gap, mid - start, r.pos - mid, dtype, structure)


def _read_dense(r: Reader, tokens: list[str], version: int, float16: bool) -> DenseEntry:
    """A dense entry; version 3 adds the byte-plane mask, the stream length and a table per coded plane."""
    start = r.pos
    name = _read_name(r, tokens)
    dtype = _read_dtype(r, name, tuple(range(len(DTYPE_NAMES)))) if version >= 2 else FLOAT32
    e = DenseEntry(name, _read_shape(r, name), dtype=dtype)
    if version >= 3:
        e.planes = r.u8()
        width = 2 if float16 and dtype == FLOAT32 else np.dtype(_STORED[dtype]).itemsize
        if e.planes >> width:
            raise FormatError(f"{name}: byte-plane mask 0x{e.planes:02x} names planes beyond its {width} bytes")
        e.stream_bytes = r.uvarint(r.remaining, f"{name}: stream length") if e.planes else 0
    mid = r.pos
    for p in e.coded_planes:
        e.tables.append(read_table(r, 256, e.numel, f"{name}: byte plane {p} table"))
        if int(e.tables[-1].sum()) != e.numel:
            raise FormatError(f"{name}: byte plane {p} table counts {int(e.tables[-1].sum())}, not {e.numel}")
    e.header_bytes, e.table_bytes = mid - start, r.pos - mid
    return e


def parse_header(data: bytes) -> Header:
    """Parse and check the prefix and header; the body's size must match the file exactly."""
    flags = _check_prefix(data)
    version = data[4]
    r = Reader(data, PREFIX_BYTES)
    meta = _read_meta(r)
    meta_bytes = r.pos - PREFIX_BYTES
    tokens = _read_tokens(r)
    names_bytes = r.pos - PREFIX_BYTES - meta_bytes
    n_cb = r.uvarint(r.remaining, "codebook count")
    sizes = [r.uvarint(MAX_CODEBOOK, "codebook size") for _ in range(n_cb)]
    if any(k < 1 for k in sizes):
        raise FormatError("a codebook has size 0 (entry 0, the zero, is always present)")
    count = r.uvarint(r.remaining, "quantized count")
    quantized = [_read_quant(r, tokens, sizes, version) for _ in range(count)]
    float16 = bool(flags & FLAG_FLOAT16)
    dense = [_read_dense(r, tokens, version, float16) for _ in range(r.uvarint(r.remaining, "dense count"))]
    aliases = _read_aliases(r, tokens, len(quantized) + len(dense)) if version >= 2 else []
    tables = sum(e.table_bytes for e in quantized) + sum(e.table_bytes for e in dense)
    h = Header(float16, meta, sizes, quantized, dense, r.pos, meta_bytes, tables, names_bytes, aliases, version)
    _check_totals(h, len(data) - r.pos)
    return h


def _read_aliases(r: Reader, tokens: list[str], entries: int) -> list[tuple[str, int]]:
    aliases = []
    for _ in range(r.uvarint(r.remaining, "alias count")):
        name = _read_name(r, tokens)
        aliases.append((name, r.uvarint(entries - 1, f"{name}: aliased entry") if entries else -1))
        if not entries:
            raise FormatError(f"{name}: an alias in a file without tensors")
    return aliases


def _check_totals(h: Header, body: int) -> None:
    names = [e.name for e in h.quantized] + [e.name for e in h.dense] + [a for a, _ in h.aliases]
    if len(set(names)) != len(names):
        raise FormatError("duplicate tensor names")
    total = sum(e.numel for e in h.quantized) + sum(e.numel for e in h.dense)
    if total > MAX_ELEMENTS:
        raise FormatError(f"{total} elements in total, more than the limit {MAX_ELEMENTS}")
    if h.body_size() != body:
        raise FormatError(f"header declares a body of {h.body_size()} bytes, the file holds {body}")


def dense_array(raw: bytes, h: Header, e: DenseEntry) -> np.ndarray:
    """The stored elements of a dense tensor as numpy (float16-stored float32 ones widened back,
    bfloat16 as float32, bool checked to be 0 or 1), flat."""
    stored = "<f2" if e.dtype == FLOAT32 and h.float16 else _STORED[e.dtype]
    values = np.frombuffer(raw, dtype=stored)
    if e.dtype == BFLOAT16:  # the high 16 bits of a float32
        return (values.astype("<u4") << 16).view("<f4")
    if e.dtype == BOOL:
        if values.size and values.max() > 1:
            raise FormatError(f"{e.name}: a bool tensor holds a byte other than 0 or 1")
        return values.astype(bool)
    return values.astype(np.float32) if e.dtype == FLOAT32 else values
