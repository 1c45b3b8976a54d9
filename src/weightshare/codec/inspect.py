"""What a ``.wsz`` file spends its bytes on: per-tensor rows, totals, entropy bound, compression rates.

Everything here is read from the file itself (header, tables, codebooks and the
dense floats); the ANS streams are not decoded, their entropy bound follows from
the stored count tables.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from weightshare.codec.ans import choose_gap_code, entropy_bits, table_size
from weightshare.codec.bitstream import Reader
from weightshare.codec.container import (
    DENSE,
    DTYPE_NAMES,
    LAYOUT_NAMES,
    Header,
    QuantEntry,
    dense_array,
    parse_header,
)
from weightshare.codec.layouts import nonzero_positions, stored_bytes
from weightshare.core.quantized import NOT_WEIGHTS

__all__ = ["InspectReport", "TensorRow", "file_rates", "format_inspect", "gap_bound_bits", "inspect"]

LAYOUTS = ("dense", "sparse", "structured")  # a quantized tensor's; "raw" and "planes" are stored tensors


_NOT_PARAMETERS = ("int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass
class TensorRow:
    """One tensor of the file. ``entropy_bytes``: the order-0 entropy of the streams actually coded
    (raw gap bits count as they are); ``index_entropy_bytes``: the entropy of the plain index array."""

    name: str
    shape: tuple[int, ...]
    numel: int
    nnz: int
    unique: int
    layout: str  # "dense" | "sparse" (quantized) or "raw" (stored floats)
    codebook: int | None
    stream_bytes: int  # the ANS stream (raw: the float data)
    raw_bits_bytes: int  # raw gap bits of the sparse layout
    table_bytes: int
    header_bytes: int
    entropy_bytes: float
    index_entropy_bytes: float | None
    dtype: str = "float32"  # the model's element type of the tensor
    positions_bytes: float = 0.0  # stream + raw bits split by the information each part carries (see _split)
    values_bytes: float = 0.0
    gap_bound_bytes: float | None = None  # the version-2 sparse layout's gaps at their i.i.d. entropy

    @property
    def total_bytes(self) -> int:
        return self.stream_bytes + self.raw_bits_bytes + self.table_bytes

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.total_bytes / self.numel if self.numel else 0.0

    def per_nonzero(self, nbytes: float | None) -> float | None:
        """Bits per non-zero weight of a byte figure (``None`` for a stored tensor or no non-zero)."""
        return 8 * nbytes / self.nnz if nbytes is not None and self.nnz and self.layout in LAYOUTS else None


@dataclass
class InspectReport:
    """Per-tensor rows and the file's totals (all in bytes)."""

    version: int
    float16: bool
    meta: dict[str, object]
    file_bytes: int
    header_bytes: int  # magic .. stream lengths, without the meta JSON and count tables
    meta_bytes: int
    table_bytes: int
    codebook_bytes: int
    codebook_sizes: list[int]
    rows: list[TensorRow] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # second name -> the stored tensor's name

    @property
    def quantized(self) -> list[TensorRow]:
        return [r for r in self.rows if r.layout in LAYOUTS]

    @property
    def weights(self) -> list[TensorRow]:
        """The quantized weights: the quantized tensors but those the meta lists as quantized after the method
        (biases, norms; ``NOT_WEIGHTS`` in core/quantized.py), which count with the biases."""
        after = set(self.meta.get(NOT_WEIGHTS) or ())
        return [r for r in self.quantized if r.name not in after]

    @property
    def num_params(self) -> int:
        """Floating-point elements: what a float32 copy of the model would hold (integer and bool
        buffers, such as BatchNorm's ``num_batches_tracked``, are not parameters)."""
        return sum(r.numel for r in self.rows if r.dtype not in _NOT_PARAMETERS)

    @property
    def num_quantized(self) -> int:
        return sum(r.numel for r in self.quantized)

    @property
    def stream_bytes(self) -> int:
        return sum(r.stream_bytes + r.raw_bits_bytes for r in self.quantized)

    @property
    def dense_bytes(self) -> int:
        """The tensors stored exactly (biases, norms, buffers): raw or byte planes, their tables excluded."""
        return sum(r.stream_bytes for r in self.rows if r.layout not in LAYOUTS)

    @property
    def weights_codebook_bytes(self) -> int:
        """Every codebook but those that only the biases quantized after the method use (all stored values
        have the same width)."""
        weights = self.weights
        biases_only = {r.codebook for r in self.quantized} - {r.codebook for r in weights}
        entries = [k - 1 for k in self.codebook_sizes]  # entry 0, the zero, is not stored
        width = self.codebook_bytes // max(sum(entries), 1)  # 4 bytes a value, 2 with the float16 flag
        return self.codebook_bytes - width * sum(n for i, n in enumerate(entries) if i in biases_only)

    @property
    def components(self) -> dict[str, float]:
        """The file's bytes by what they hold; they add up to ``file_bytes``. ``positions`` and ``values`` are
        the quantized weights' (each tensor's coded bytes split by information content, :func:`_split`);
        ``codebooks`` are the weights' codebooks; ``biases`` is every tensor that is not a weight: biases and
        norms, quantized (with their own codebooks) or stored exactly, and buffers (their count tables are under
        ``tables``)."""
        weights = self.weights
        others = sum(r.stream_bytes + r.raw_bits_bytes for r in self.quantized) - sum(
            r.stream_bytes + r.raw_bits_bytes for r in weights
        )
        codebooks = self.weights_codebook_bytes
        return {
            "header": self.header_bytes + self.meta_bytes,
            "codebooks": codebooks,
            "tables": self.table_bytes,
            "positions": sum(r.positions_bytes for r in weights),
            "values": sum(r.values_bytes for r in weights),
            "biases": others + self.codebook_bytes - codebooks + self.dense_bytes,
        }

    @property
    def entropy_bound_bytes(self) -> float:
        """Stream entropies (byte planes' too) + codebooks + everything in the header + the raw dense bytes."""
        streams = sum(r.entropy_bytes for r in self.rows)  # a raw tensor's entropy_bytes are its bytes
        return streams + self.codebook_bytes + self.header_bytes + self.meta_bytes + self.table_bytes

    def to_dict(self) -> dict[str, object]:
        rows = [asdict(r) | _row_rates(r) for r in self.rows]
        scalars = {k: v for k, v in asdict(self).items() if k != "rows"}
        totals = {"stream_bytes": self.stream_bytes, "dense_bytes": self.dense_bytes, "components": self.components}
        return scalars | totals | {"entropy_bound_bytes": self.entropy_bound_bytes, "rows": rows} | file_rates(self)


def _row_rates(r: TensorRow) -> dict[str, float | None]:
    return {
        "bits_per_weight": r.bits_per_weight,
        "total_bytes": r.total_bytes,
        "positions_bits_per_nonzero": r.per_nonzero(r.positions_bytes),
        "values_bits_per_nonzero": r.per_nonzero(r.values_bytes),
        "gap_bound_bits_per_nonzero": r.per_nonzero(r.gap_bound_bytes),
    }


def _information(e: QuantEntry) -> tuple[float, float]:
    """Bits of positions coded in the ANS stream, and bits of values (order-0 entropies of the tables).

    Dense layout: the chain rule splits the index entropy exactly into the zero/non-zero mask and the
    non-zero values, ``H(idx) = H(mask) + H(values | non-zero)``."""
    if e.layout == DENSE:
        counts = e.tables[0]
        mask = np.array([counts[0] if counts.size else 0, e.nnz])
        return entropy_bits(mask), entropy_bits(counts) - entropy_bits(mask)
    coded_occupancy = (
        sum(entropy_bits(o.table) for o in e.structure.occupancy if o.table is not None) if e.structure else 0
    )
    return coded_occupancy + entropy_bits(e.tables[-2]), entropy_bits(e.tables[-1])


def _split(e: QuantEntry) -> tuple[float, float]:
    """The tensor's stream and raw bytes as (positions, values): raw bits are all positions; the ANS stream,
    shared by both, in proportion to the information each part carries."""
    positions, values = _information(e)
    share = positions / (positions + values) if positions + values else 0.0
    return e.raw_bytes + share * e.stream_bytes, (1 - share) * e.stream_bytes


def gap_bound_bits(positions: np.ndarray) -> float:
    """What the version-2 sparse layout's gaps cost at their i.i.d. entropy: the order-0 entropy of the gap
    symbols plus their raw bits, for the gap code that layout picks (its table not counted).

    >>> gap_bound_bits(np.array([1, 3, 5]))  # three gaps of 1: one symbol, no information
    0.0
    """
    gaps = np.diff(positions, prepend=-1) - 1
    code, cost = choose_gap_code(gaps)
    return cost - 8 * table_size(np.bincount(code.symbols(gaps)[0]))


def _histogram(e: QuantEntry) -> np.ndarray:
    """Counts of each index, from the tables alone."""
    if e.layout == DENSE:
        return e.tables[0] if e.tables[0].size else np.zeros(1, dtype=np.int64)
    return np.concatenate([[e.numel - e.nnz], e.tables[-1]]).astype(np.int64)


def _quant_row(e: QuantEntry, codebook: np.ndarray, positions: np.ndarray) -> TensorRow:
    histogram = _histogram(e)
    present = np.flatnonzero(histogram)
    positions_bytes, values_bytes = _split(e)
    return TensorRow(
        e.name, e.shape, e.numel, e.nnz, int(np.unique(codebook[present]).size), LAYOUT_NAMES[e.layout],
        e.codebook, e.stream_bytes, e.raw_bytes, e.table_bytes, e.header_bytes,
        (sum(_information(e)) + e.raw_bits) / 8, entropy_bits(histogram) / 8, DTYPE_NAMES[e.dtype],
        positions_bytes, values_bytes, gap_bound_bits(positions) / 8,
    )  # fmt: skip


def inspect(source: bytes | str | os.PathLike) -> InspectReport:
    """Parse a ``.wsz`` file (path or bytes) and account for every byte of it.

    >>> import torch
    >>> from weightshare.core.quantized import QuantizedModel, QuantizedTensor
    >>> from weightshare.codec import encode
    >>> q = QuantizedModel([torch.tensor([0.0, 1.0])], {"w": QuantizedTensor(torch.zeros(1000, dtype=torch.int64))})
    >>> rep = inspect(encode(q))
    >>> rep.rows[0].layout, rep.rows[0].nnz, rep.rows[0].total_bytes, rep.file_bytes
    ('sparse', 0, 2, 32)
    """
    data = source if isinstance(source, bytes | bytearray | memoryview) else Path(source).read_bytes()
    h = parse_header(data)
    r = Reader(data, h.size)
    dtype = "<f2" if h.float16 else "<f4"
    codebooks = [np.concatenate([[0.0], np.frombuffer(r.read((k - 1) * h.width), dtype)]) for k in h.codebook_sizes]
    rows = []
    for e in h.quantized:
        positions = nonzero_positions(e, r.read(e.stream_bytes), r.read(e.raw_bytes))  # for the version-2 gap bound
        rows.append(_quant_row(e, codebooks[e.codebook], positions))
    for d in h.dense:
        nbytes = h.dense_bytes(d)
        values = dense_array(stored_bytes(r, h, d), h, d)
        unique = int(np.unique(values).size)
        entropy = sum(entropy_bits(t) for t in d.tables) / 8 + nbytes - d.stream_bytes
        rows.append(TensorRow(d.name, d.shape, d.numel, int(np.count_nonzero(values)), unique,
                              "planes" if d.planes else "raw", None, nbytes, 0, d.table_bytes, d.header_bytes,
                              entropy, None, DTYPE_NAMES[d.dtype]))  # fmt: skip
    return _report(h, len(data), rows)


def _report(h: Header, file_bytes: int, rows: list[TensorRow]) -> InspectReport:
    return InspectReport(
        h.version, h.float16, h.meta, file_bytes, h.structure_bytes, h.meta_bytes, h.table_bytes,
        h.codebook_bytes, list(h.codebook_sizes), rows, h.alias_targets(),
    )  # fmt: skip


def file_rates(report: InspectReport) -> dict[str, float]:
    """Compression rates from the file's bytes (docs/methods.md#accounting-file).

    ``cr_all`` = 32 * #params / (8 * file bytes). ``cr_weights`` counts only the quantized weights (not
    the biases quantized after the method, :attr:`InspectReport.weights`): their streams and tables, the
    codebooks they use, their own header entries, and a share of the common header (prefix, names,
    counts, meta) in proportion to their number of tensors.
    """
    own = sum(r.header_bytes for r in report.rows)
    common = report.header_bytes + report.meta_bytes - own
    weights = report.weights
    share = common * len(weights) / len(report.rows) if report.rows else float(common)
    weights_bytes = sum(r.total_bytes + r.header_bytes for r in weights) + report.weights_codebook_bytes + share
    num_weights = sum(r.numel for r in weights)
    return {
        "file_bytes": report.file_bytes,
        "num_params": report.num_params,
        "num_quantized": report.num_quantized,
        "num_weights": num_weights,
        "weights_bytes": weights_bytes,
        "cr_all": 4 * report.num_params / report.file_bytes,
        "cr_weights": 4 * num_weights / weights_bytes if weights_bytes else math.inf,
        "bits_per_weight_all": 8 * report.file_bytes / report.num_params if report.num_params else 0.0,
        "file_over_entropy_bound": report.file_bytes / report.entropy_bound_bytes,
    }


def _cell(text: str, width: int, column: int) -> str:
    return text.ljust(width) if column in (0, 1, 5) else text.rjust(width)  # names, shapes, layout: left


def _bits(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


_HEAD = ("tensor", "shape", "numel", "nnz", "uniq", "layout", "pos B", "val B", "table", "bits/w",
         "pos b/nz", "v2 gaps b/nz", "val b/nz", "H bytes")  # fmt: skip


def _line(r: TensorRow) -> tuple[str, ...]:
    shape = "x".join(map(str, r.shape)) or "scalar"
    quantized = r.layout in LAYOUTS
    sizes = (f"{r.positions_bytes:.0f}", f"{r.values_bytes:.0f}") if quantized else ("-", str(r.stream_bytes))
    per_nz = (r.per_nonzero(r.positions_bytes), r.per_nonzero(r.gap_bound_bytes), r.per_nonzero(r.values_bytes))
    return (r.name, shape, str(r.numel), str(r.nnz), str(r.unique), r.layout, *sizes, str(r.table_bytes),
            f"{r.bits_per_weight:.3f}", *map(_bits, per_nz), f"{r.entropy_bytes:.1f}")  # fmt: skip


def format_inspect(report: InspectReport) -> str:
    """An aligned text table: one line per tensor (positions and values in bytes and bits per non-zero, beside
    the version-2 gaps at their i.i.d. entropy), then the file's bytes by component and the rates."""
    lines = [_HEAD, *(_line(r) for r in report.rows)]
    widths = [max(len(row[i]) for row in lines) for i in range(len(_HEAD))]
    out = ["  ".join(_cell(c, w, i) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in lines]
    out.insert(1, "-" * len(out[0]))
    rates, parts = file_rates(report), report.components
    dtype = "float16" if report.float16 else "float32"
    out += [
        "",
        f"file {report.file_bytes} B = header {report.header_bytes} + meta {report.meta_bytes} + tables "
        f"{report.table_bytes} + codebooks {parts['codebooks']:.0f} ({dtype}, sizes {report.codebook_sizes}) + "
        f"positions {parts['positions']:.0f} + values {parts['values']:.0f} + biases {parts['biases']:.0f}"
        + (" (their codebooks included)" if parts["codebooks"] != report.codebook_bytes else ""),
        f"entropy bound {report.entropy_bound_bytes:.1f} B (file / bound = {rates['file_over_entropy_bound']:.4f})",
        *[f"{alias} is stored once as {target} (the same tensor)" for alias, target in report.aliases.items()],
        f"CR_all {rates['cr_all']:.1f}x  CR_weights {rates['cr_weights']:.1f}x  "
        f"({report.num_params} params, {rates['num_weights']} quantized weights, "
        f"{rates['bits_per_weight_all']:.4f} bits/param)",
    ]
    return "\n".join(out)
