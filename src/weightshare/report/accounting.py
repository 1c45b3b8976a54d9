"""Paper-style bit counts: the compression rates the papers quote, computed from a QuantizedModel.

Everything here is an *estimate in the papers' own terms*, labelled "paper-style"
wherever it is reported; the project's primary figure is the size of the real
``.wsz`` file (docs/methods.md#accounting-file). Three accountings (docs/methods.md#accounting):

* :func:`paper_style` -- Han et al. (Deep Compression, ICLR 2016, Sec. 2 and 4) as the soft
  weight-sharing paper uses it (Ullrich et al. 2017, Table 1 caption; docs/methods.md#accounting-paper-style).
  :func:`deep_compression_estimate` is its preset with Han's own parameters.
* :func:`values_only` -- Yang et al. (CVPR 2020): only the non-zero values count (docs/methods.md#admm-accounting).
* :func:`weight_entropy_bits` -- PWFN's entropy of the value histogram (docs/methods.md#pwfn-accounting).

Conventions of :func:`paper_style` (each one fixes a choice the papers leave open;
docs/methods.md#accounting-paper-style):

* **Layout.** CSR per quantized tensor. Conv weights (ndim >= 3) are viewed as out x (in*kh*kw);
  2-D tensors are fc; 1-D tensors (biases under the prior) and scalars are one row with the fc field.
* **IC (relative column index).** Per row, the first non-zero stores its column (the gap from
  column 0), every later one the difference to the previous entry of the row, in fields of
  ``p`` bits (5 fc / 8 conv by default) holding 0 .. 2^p - 1. A gap above ``span = 2^p - 1`` is
  bridged by **filler entries**: a zero-valued entry ``span`` columns after the previous one (it
  lands on a zero weight), repeated as needed, as in Han et al. Fig. 2. A filler costs one IC
  symbol (``span``) **and one A symbol (index 0)**; ATDL2 leaves the latter out (an undercount).
* **IR (row pointers).** (rows + 1) x ceil(log2(entries + 1)) bits, entries = nnz + fillers;
  fixed width, not Huffman coded (as ATDL2). An all-zero tensor therefore costs 0 IR bits.
* **A (values).** The codebook index of every entry. Its alphabet is the codebook's non-zero
  entries, plus index 0 if the tensor has fillers; fixed-width coding uses ceil(log2 |alphabet|).
* **Three codings of IC and A**, all reported: ``fixed`` (Han's "P+Q"), ``huffman`` (real
  canonical Huffman code lengths from :func:`huffman_code_lengths` plus the code table: per symbol
  that occurs, its value in the stream's symbol width plus a 5-bit code length; Han's "P+Q+H") and
  ``entropy`` (the Shannon bound sum(-c log2(c/n)), no table; what ATDL2 calls Huffman).
* **Codebook.** 32 bits per non-zero entry (entry 0 is the implicit exact zero). Each codebook is
  counted once: a codebook used by one tensor is charged to that layer, one used by several tensors
  (SWS, PWFN) once at model level. ``shared_codebook=False`` charges every layer in full (Han,
  ATDL2); ``True`` puts every codebook at model level.
* **Dense tensors** (biases, norms, a skipped layer) cost ``dense_bits`` per value. The "weights"
  scope holds the quantized tensors, the codebooks, and dense tensors with ndim >= 2 (skipped
  layers): weights only. Biases and norms quantized after the method (``[finish] dense_param_bits``,
  ``QuantizedModel.is_weight``) are quantized tensors with their own codebooks, but not weights: they
  are costed like any quantized tensor and counted in the "all" scope only, so "weights only" keeps
  its meaning. The "all" scope adds everything else, chiefly the biases: weights + biases,
  the |W| of Ullrich et al. 2017 Table 1 and Han et al. 2016's baseline. CR = 32 x (values in scope)
  / (bits in scope); both scopes are reported, labelled.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from weightshare.core.quantized import QuantizedModel

__all__ = [
    "DenseBits",
    "LayerBits",
    "PaperStyleReport",
    "StreamBits",
    "WeightEntropy",
    "canonical_code",
    "deep_compression_estimate",
    "entropy_bits",
    "huffman_code_lengths",
    "paper_style",
    "values_only",
    "weight_entropy_bits",
    "weight_sharing_rate",
]

Coding = Literal["fixed", "huffman", "entropy"]
Scope = Literal["weights", "all"]
CODINGS: tuple[Coding, ...] = ("fixed", "huffman", "entropy")
LENGTH_FIELD_BITS = 5  # bits per code length in a Huffman table (lengths up to 31; widened if ever needed)
CODEBOOK_VALUE_BITS = 32  # float32 codebook entries
BASELINE_BITS = 32  # the dense float32 original


# --- entropy coding ---------------------------------------------------------------------------------------------
def huffman_code_lengths(counts: np.ndarray | list[int]) -> np.ndarray:
    """Huffman code length (bits) per symbol; 0 for symbols that never occur.

    Ties are broken deterministically: equal counts merge leaves before internal nodes, and leaves in
    symbol order. A stream with a single distinct symbol gets length 0: the entry count is known from
    the row pointers, and a length-0 code still satisfies Kraft's equality and H <= L < H + 1.

    >>> huffman_code_lengths([5, 1, 1, 2, 0]).tolist()
    [1, 3, 3, 2, 0]
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if (counts < 0).any():
        raise ValueError("symbol counts must be non-negative")
    lengths = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size <= 1:
        return lengths
    heap = [(int(counts[s]), int(s), int(s)) for s in used]  # (count, tie-break, node id)
    heapq.heapify(heap)
    parent: dict[int, int] = {}
    next_id = counts.size
    while len(heap) > 1:
        c1, _, n1 = heapq.heappop(heap)
        c2, _, n2 = heapq.heappop(heap)
        parent[n1] = parent[n2] = next_id
        heapq.heappush(heap, (c1 + c2, next_id, next_id))
        next_id += 1
    depth: dict[int, int] = {heap[0][2]: 0}
    for node in range(next_id - 1, -1, -1):  # parents have larger ids than their children
        if node in parent:
            depth[node] = depth[parent[node]] + 1
    lengths[used] = [depth[int(s)] for s in used]
    return lengths


def canonical_code(lengths: np.ndarray | list[int]) -> list[str]:
    """The canonical prefix code for given code lengths, as bit strings ('' for unused symbols).

    Codes are assigned in order of (length, symbol), so the lengths alone define the code; this is
    what makes a table of lengths a complete description of a Huffman code.

    >>> canonical_code([1, 3, 3, 2, 0])
    ['0', '110', '111', '10', '']
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    codes = [""] * lengths.size
    code, prev_len = 0, 0
    for sym in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[sym]) - prev_len
        prev_len = int(lengths[sym])
        codes[sym] = format(code, f"0{prev_len}b")
        code += 1
    return codes


def entropy_bits(counts: np.ndarray | list[int]) -> float:
    """Shannon bound for coding a stream with these symbol counts: sum(-c log2(c / n)) bits.

    >>> entropy_bits([2, 2])
    4.0
    """
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    c = c[c > 0]
    return float(-(c * np.log2(c / c.sum())).sum()) if c.size else 0.0


@dataclass(frozen=True)
class StreamBits:
    """One symbol stream (IC or A) of one tensor under the three codings."""

    symbols: int
    symbol_bits: int
    fixed: int
    huffman: int
    table: int
    entropy: float

    @classmethod
    def from_counts(cls, counts: np.ndarray, symbol_bits: int) -> StreamBits:
        lengths = huffman_code_lengths(counts)
        used = int((counts > 0).sum())
        length_field = max(LENGTH_FIELD_BITS, int(lengths.max(initial=0)).bit_length())
        return cls(
            symbols=int(counts.sum()),
            symbol_bits=symbol_bits,
            fixed=int(counts.sum()) * symbol_bits,
            huffman=int((counts * lengths).sum()),
            table=used * (symbol_bits + length_field) if counts.sum() else 0,
            entropy=entropy_bits(counts),
        )

    def bits(self, coding: Coding) -> float:
        return {"fixed": self.fixed, "huffman": self.huffman + self.table, "entropy": self.entropy}[coding]


# --- per-layer CSR bit budget -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerBits:
    """Paper-style bit budget of one quantized tensor. ``filler_bits_*`` are the part of IC + A spent
    on filler entries (already inside ``ic``/``a``, not added again)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    rows: int
    cols: int
    nnz: int
    fillers: int
    index_bits: int
    ir_bits: int
    ic: StreamBits
    a: StreamBits
    filler_bits_fixed: int
    filler_bits_huffman: int
    codebook_bits: int
    is_weight: bool = True  # False: a bias or norm quantized after the method, in the "all" scope only

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def total_bits(self, coding: Coding = "huffman") -> float:
        return self.ir_bits + self.ic.bits(coding) + self.a.bits(coding) + self.codebook_bits

    def to_dict(self) -> dict[str, object]:
        out = {k: v for k, v in asdict(self).items() if k not in ("ic", "a")}
        out.update(shape=list(self.shape), numel=self.numel, entries=self.nnz + self.fillers)
        for stream in ("ic", "a"):
            out.update({f"{stream}_{k}": v for k, v in asdict(getattr(self, stream)).items()})
        out.update({f"total_bits_{c}": self.total_bits(c) for c in CODINGS})
        return out


def _csr_view(shape: tuple[int, ...], index_bits_fc: int, index_bits_conv: int) -> tuple[str, int, int, int]:
    """(kind, rows, cols, IC field width): conv weights are viewed as out x (in*kh*kw)."""
    if len(shape) >= 3:
        return "conv", shape[0], math.prod(shape[1:]), index_bits_conv
    if len(shape) == 2:
        return "fc", shape[0], shape[1], index_bits_fc
    return "vector", 1, math.prod(shape), index_bits_fc


def _csr_streams(indices: torch.Tensor, rows: int, cols: int, span: int, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Symbol counts of the IC stream (0..span) and the A stream (codebook indices), and the filler count."""
    idx = indices.reshape(rows, cols)
    r, c = torch.nonzero(idx, as_tuple=True)  # row-major order, as CSR stores the entries
    prev = torch.zeros_like(c)
    if c.numel() > 1:
        prev[1:] = torch.where(r[1:] == r[:-1], c[:-1], 0)  # a new row restarts from column 0
    gap = c - prev
    fill = torch.where(gap > 0, (gap - 1) // span, 0)  # fillers needed so that every field is <= span
    n_fill = int(fill.sum())
    ic = torch.bincount(gap - fill * span, minlength=span + 1).numpy().astype(np.int64)
    ic[span] += n_fill
    a = torch.bincount(idx[r, c], minlength=k).numpy().astype(np.int64)
    a[0] += n_fill
    return ic, a, n_fill


def _layer_bits(
    name: str, indices: torch.Tensor, k: int, codebook_bits: int, index_bits_fc: int, index_bits_conv: int
) -> LayerBits:
    kind, rows, cols, p = _csr_view(tuple(indices.shape), index_bits_fc, index_bits_conv)
    if p < 1:
        raise ValueError(f"index field width must be >= 1 bit, got {p}")
    span = (1 << p) - 1
    ic_counts, a_counts, n_fill = _csr_streams(indices.to(torch.int64), rows, cols, span, k)
    nnz = int(a_counts[1:].sum())
    alphabet = (k - 1) + (1 if n_fill else 0)
    ic = StreamBits.from_counts(ic_counts, p)
    a = StreamBits.from_counts(a_counts, max(alphabet - 1, 0).bit_length())  # ceil(log2 |alphabet|)
    ic_len, a_len = huffman_code_lengths(ic_counts), huffman_code_lengths(a_counts)
    return LayerBits(
        name=name,
        kind=kind,
        shape=tuple(indices.shape),
        rows=rows,
        cols=cols,
        nnz=nnz,
        fillers=n_fill,
        index_bits=p,
        ir_bits=(rows + 1) * (nnz + n_fill).bit_length(),  # ceil(log2(entries + 1)) per pointer
        ic=ic,
        a=a,
        filler_bits_fixed=n_fill * (ic.symbol_bits + a.symbol_bits),
        filler_bits_huffman=n_fill * int(ic_len[span] + a_len[0]),
        codebook_bits=codebook_bits,
    )


# --- the model-level report ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseBits:
    """A tensor kept dense; ``is_weight`` marks a skipped layer's weight (ndim >= 2)."""

    name: str
    numel: int
    bits: int
    is_weight: bool


@dataclass(frozen=True)
class PaperStyleReport:
    """Paper-style (Han et al.) bit budget of a QuantizedModel; see the module docstring."""

    layers: list[LayerBits]
    dense: list[DenseBits]
    shared_codebook_bits: int
    settings: dict[str, object] = field(default_factory=dict)

    def num_values(self, scope: Scope = "all") -> int:
        """Values in scope: the baseline is 32 bits for each."""
        dense = sum(d.numel for d in self.dense if scope == "all" or d.is_weight)
        return sum(layer.numel for layer in self.layers if scope == "all" or layer.is_weight) + dense

    def total_bits(self, coding: Coding = "huffman", scope: Scope = "all") -> float:
        dense = sum(d.bits for d in self.dense if scope == "all" or d.is_weight)
        layers = sum(layer.total_bits(coding) for layer in self.layers if scope == "all" or layer.is_weight)
        return layers + self.shared_codebook_bits + dense

    def cr(self, coding: Coding = "huffman", scope: Scope = "weights") -> float:
        """Compression rate 32 x values / bits (inf when nothing costs a bit)."""
        bits = self.total_bits(coding, scope)
        return BASELINE_BITS * self.num_values(scope) / bits if bits else math.inf

    @property
    def cr_weights(self) -> float:
        """Huffman-coded rate of the weights only (quantized tensors, codebooks, dense weight matrices)."""
        return self.cr("huffman", "weights")

    @property
    def cr_all(self) -> float:
        """Huffman-coded rate of weights + biases (every value, as the papers' |W|)."""
        return self.cr("huffman", "all")

    def to_dict(self) -> dict[str, object]:
        totals = {
            coding: {
                f"{key}_{scope}": fn(coding, scope)
                for scope in ("weights", "all")
                for key, fn in (("bits", self.total_bits), ("cr", self.cr))
            }
            for coding in CODINGS
        }
        return {
            "accounting": "paper-style (Han et al. 2016 CSR + relative index + Huffman); not the file size",
            "settings": dict(self.settings),
            "num_weights": self.num_values("weights"),
            "num_params": self.num_values("all"),
            "shared_codebook_bits": self.shared_codebook_bits,
            "totals": totals,
            "layers": [layer.to_dict() for layer in self.layers],
            "dense": [asdict(d) for d in self.dense],
        }


def _codebook_charges(qmodel: QuantizedModel, shared_codebook: bool | None) -> tuple[dict[str, int], int]:
    """Codebook bits per layer and at model level (see the module docstring for the rule)."""
    cost = [CODEBOOK_VALUE_BITS * (cb.numel() - 1) for cb in qmodel.codebooks]  # entry 0 is the implicit zero
    users: dict[int, list[str]] = {}
    for name, qt in qmodel.quantized.items():
        users.setdefault(qt.codebook, []).append(name)
    per_layer = dict.fromkeys(qmodel.quantized, 0)
    model_level = 0
    for cb, names in users.items():
        if shared_codebook is False:
            per_layer.update(dict.fromkeys(names, cost[cb]))
        elif shared_codebook is None and len(names) == 1:
            per_layer[names[0]] = cost[cb]
        else:
            model_level += cost[cb]
    return per_layer, model_level


def paper_style(
    qmodel: QuantizedModel,
    *,
    index_bits_fc: int = 5,
    index_bits_conv: int = 8,
    shared_codebook: bool | None = None,
    dense_bits: int = 32,
) -> PaperStyleReport:
    """Paper-style bit budget (CSR + relative index + Huffman, after Han et al. 2016).

    >>> from weightshare.core.quantized import QuantizedTensor
    >>> cb = torch.tensor([0.0, -0.5, 0.5])
    >>> q = QuantizedModel([cb], {"w": QuantizedTensor(torch.tensor([[0, 1, 0, 2], [0, 0, 0, 0]]))})
    >>> r = paper_style(q)  # entries at columns 1 and 3: gaps 1, 2; two 32-bit codebook values
    >>> r.layers[0].ir_bits, r.layers[0].ic.fixed, r.layers[0].a.fixed, r.total_bits("fixed")
    (6, 10, 2, 82)
    """
    per_layer, model_level = _codebook_charges(qmodel, shared_codebook)
    layers = [
        replace(
            _layer_bits(
                name, qt.indices, qmodel.codebooks[qt.codebook].numel(), per_layer[name], index_bits_fc, index_bits_conv
            ),
            is_weight=qmodel.is_weight(name),
        )
        for name, qt in qmodel.quantized.items()
    ]
    # Integer and bool buffers (BatchNorm's num_batches_tracked) are not parameters: the papers' |W| has none.
    floats = {n: t for n, t in qmodel.dense.items() if t.is_floating_point()}
    dense = [DenseBits(n, t.numel(), dense_bits * t.numel(), t.dim() >= 2) for n, t in floats.items()]
    settings = {
        "index_bits_fc": index_bits_fc,
        "index_bits_conv": index_bits_conv,
        "shared_codebook": shared_codebook,
        "dense_bits": dense_bits,
    }
    return PaperStyleReport(layers, dense, model_level, settings)


def deep_compression_estimate(
    qmodel: QuantizedModel, *, index_bits_fc: int = 5, index_bits_conv: int = 5, dense_bits: int = 32
) -> PaperStyleReport:
    """Han et al.'s own accounting: :func:`paper_style` with a per-layer codebook and 5-bit indices.

    Han's text says 8-bit conv / 5-bit fc fields, but the LeNet and VGG tables use 5 bits everywhere
    (AlexNet 4), so 5 is the default for both (docs/methods.md#dc-accounting)."""
    return paper_style(
        qmodel,
        index_bits_fc=index_bits_fc,
        index_bits_conv=index_bits_conv,
        shared_codebook=False,
        dense_bits=dense_bits,
    )


def weight_sharing_rate(n: int, k: int, bits: int = 32) -> float:
    """Deep Compression Eq. 1: n weights of ``bits`` bits shared through k clusters.

    >>> weight_sharing_rate(16, 4)
    3.2
    """
    return n * bits / (n * math.log2(k) + k * bits)


# --- other papers' accountings ------------------------------------------------------------------------------------
def values_only(qmodel: QuantizedModel) -> float:
    """Yang et al. (CVPR 2020) values-only CR: 32 x sum(n_l) / sum(log2(#distinct non-zero values_l) x nnz_l).

    Over the weights only (``QuantizedModel.weights_only``). Positions, codebooks and dense tensors are
    free, so this is **not comparable** with :func:`paper_style` or the file size
    (docs/methods.md#accounting-by-paper). Values are rounded to 1e-6 as in Yang's code.

    >>> from weightshare.core.quantized import QuantizedTensor
    >>> q = QuantizedModel([torch.tensor([0.0, 1.0, 2.0])], {"w": QuantizedTensor(torch.tensor([0, 1, 2, 0]))})
    >>> values_only(q)  # 4 weights x 32 bits / (2 non-zeros x 1 bit)
    64.0
    """
    bits, weights = 0.0, qmodel.weights_only()
    for name in weights.quantized:
        values = qmodel.dequantize(name).to(torch.float64).reshape(-1)
        nonzero = values[values != 0]
        distinct = torch.unique(torch.round(nonzero, decimals=6)).numel()
        bits += math.log2(distinct) * nonzero.numel() if distinct else 0.0
    return BASELINE_BITS * weights.num_quantized / bits if bits else math.inf


@dataclass(frozen=True)
class WeightEntropy:
    """PWFN's metric: entropy of the value histogram over all quantized weights (zero included)."""

    bits_per_weight: float
    total_bits: float
    unique_values: int


def weight_entropy_bits(qmodel: QuantizedModel) -> WeightEntropy:
    """Shannon entropy of the distinct-value histogram over all quantized weights (``QuantizedModel.weights_only``),
    and their number.

    >>> from weightshare.core.quantized import QuantizedTensor
    >>> q = QuantizedModel([torch.tensor([0.0, 1.0])], {"w": QuantizedTensor(torch.tensor([0, 0, 1, 1]))})
    >>> weight_entropy_bits(q)
    WeightEntropy(bits_per_weight=1.0, total_bits=4.0, unique_values=2)
    """
    weights = qmodel.weights_only()
    if not weights.quantized:
        return WeightEntropy(0.0, 0.0, 0)
    values = torch.cat([weights.dequantize(n).reshape(-1) for n in weights.quantized])
    _, counts = torch.unique(values, return_counts=True)
    total = entropy_bits(counts.numpy())
    return WeightEntropy(total / values.numel() if values.numel() else 0.0, total, int(counts.numel()))
