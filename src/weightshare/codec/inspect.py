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

from weightshare.codec.ans import entropy_bits
from weightshare.codec.bitstream import Reader
from weightshare.codec.container import DTYPE_NAMES, LAYOUT_NAMES, SPARSE, Header, QuantEntry, dense_array, parse_header

__all__ = ["InspectReport", "TensorRow", "file_rates", "format_inspect", "inspect"]


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

    @property
    def total_bytes(self) -> int:
        return self.stream_bytes + self.raw_bits_bytes + self.table_bytes

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.total_bytes / self.numel if self.numel else 0.0


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
        return [r for r in self.rows if r.layout != "raw"]

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
        return sum(r.stream_bytes for r in self.rows if r.layout == "raw")

    @property
    def entropy_bound_bytes(self) -> float:
        """Stream entropies + codebooks + everything in the header + the dense floats."""
        streams = sum(r.entropy_bytes for r in self.quantized)
        return streams + self.codebook_bytes + self.header_bytes + self.meta_bytes + self.table_bytes + self.dense_bytes

    def to_dict(self) -> dict[str, object]:
        rows = [asdict(r) | {"bits_per_weight": r.bits_per_weight, "total_bytes": r.total_bytes} for r in self.rows]
        scalars = {k: v for k, v in asdict(self).items() if k != "rows"}
        totals = {"stream_bytes": self.stream_bytes, "dense_bytes": self.dense_bytes}
        return scalars | totals | {"entropy_bound_bytes": self.entropy_bound_bytes, "rows": rows} | file_rates(self)


def _quant_row(e: QuantEntry, codebook: np.ndarray) -> TensorRow:
    if e.layout == SPARSE:
        gaps, idx = e.tables
        coded_bits = entropy_bits(gaps) + entropy_bits(idx) + e.raw_bits
        histogram = np.concatenate([[e.numel - e.nnz], idx])
        present = np.concatenate([[0] if e.nnz < e.numel else [], np.flatnonzero(idx) + 1]).astype(np.int64)
    else:
        histogram = e.tables[0]
        coded_bits = entropy_bits(histogram)
        present = np.flatnonzero(histogram)
    return TensorRow(
        e.name, e.shape, e.numel, e.nnz, int(np.unique(codebook[present]).size), LAYOUT_NAMES[e.layout],
        e.codebook, e.stream_bytes, e.raw_bytes, e.table_bytes, e.header_bytes,
        coded_bits / 8, entropy_bits(histogram) / 8, DTYPE_NAMES[e.dtype],
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
        r.read(e.stream_bytes + e.raw_bytes)
        rows.append(_quant_row(e, codebooks[e.codebook]))
    for d in h.dense:
        nbytes = d.numel * h.dense_width(d)
        values = dense_array(r.read(nbytes), h, d)
        unique = int(np.unique(values).size)
        rows.append(TensorRow(d.name, d.shape, d.numel, int(np.count_nonzero(values)), unique, "raw", None,
                              nbytes, 0, 0, d.header_bytes, float(nbytes), None, DTYPE_NAMES[d.dtype]))  # fmt: skip
    return _report(h, len(data), rows)


def _report(h: Header, file_bytes: int, rows: list[TensorRow]) -> InspectReport:
    return InspectReport(
        h.version, h.float16, h.meta, file_bytes, h.structure_bytes, h.meta_bytes, h.table_bytes,
        h.codebook_bytes, list(h.codebook_sizes), rows, h.alias_targets(),
    )  # fmt: skip


def file_rates(report: InspectReport) -> dict[str, float]:
    """Compression rates from the file's bytes (docs/methods.md#accounting-file).

    ``cr_all`` = 32 * #params / (8 * file bytes). ``cr_weights`` counts only the quantized tensors:
    their streams and tables, all codebooks, their own header entries, and a share of the common
    header (prefix, names, counts, meta) in proportion to their number of tensors.
    """
    own = sum(r.header_bytes for r in report.rows)
    common = report.header_bytes + report.meta_bytes - own
    q = report.quantized
    share = common * len(q) / len(report.rows) if report.rows else float(common)
    weights_bytes = sum(r.total_bytes + r.header_bytes for r in q) + report.codebook_bytes + share
    return {
        "file_bytes": report.file_bytes,
        "num_params": report.num_params,
        "num_quantized": report.num_quantized,
        "weights_bytes": weights_bytes,
        "cr_all": 4 * report.num_params / report.file_bytes,
        "cr_weights": 4 * report.num_quantized / weights_bytes if weights_bytes else math.inf,
        "bits_per_weight_all": 8 * report.file_bytes / report.num_params if report.num_params else 0.0,
        "file_over_entropy_bound": report.file_bytes / report.entropy_bound_bytes,
    }


def _cell(text: str, width: int, column: int) -> str:
    return text.ljust(width) if column in (0, 1, 5) else text.rjust(width)  # names, shapes, layout: left


def format_inspect(report: InspectReport) -> str:
    """An aligned text table: one line per tensor, then the totals and rates."""
    head = ("tensor", "shape", "numel", "nnz", "uniq", "layout", "stream", "raw", "table", "bits/w", "H bytes")
    lines = [head]
    for r in report.rows:
        shape = "x".join(map(str, r.shape)) or "scalar"
        counts = (r.numel, r.nnz, r.unique)
        sizes = (r.stream_bytes, r.raw_bits_bytes, r.table_bytes)
        bits = (f"{r.bits_per_weight:.3f}", f"{r.entropy_bytes:.1f}")
        lines.append((r.name, shape, *map(str, counts), r.layout, *map(str, sizes), *bits))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(_cell(c, w, i) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in lines]
    out.insert(1, "-" * len(out[0]))
    rates = file_rates(report)
    dtype = "float16" if report.float16 else "float32"
    out += [
        "",
        f"file {report.file_bytes} B = header {report.header_bytes} + meta {report.meta_bytes} + tables "
        f"{report.table_bytes} + codebooks {report.codebook_bytes} ({dtype}, sizes {report.codebook_sizes}) + "
        f"streams {report.stream_bytes} + dense {report.dense_bytes}",
        f"entropy bound {report.entropy_bound_bytes:.1f} B (file / bound = {rates['file_over_entropy_bound']:.4f})",
        *[f"{alias} is stored once as {target} (the same tensor)" for alias, target in report.aliases.items()],
        f"CR_all {rates['cr_all']:.1f}x  CR_weights {rates['cr_weights']:.1f}x  "
        f"({report.num_params} params, {report.num_quantized} quantized, "
        f"{rates['bits_per_weight_all']:.4f} bits/param)",
    ]
    return "\n".join(out)
