"""Structured positions (format version 3): which rows and columns hold a non-zero, then the gaps inside them.

A pruned layer loses whole units: output neurons (rows of the weight) and input
neurons or pixels (columns). The version-2 sparse layout codes the gaps between
non-zeros of the flat array, so every empty row or column is paid for again
inside the gaps. Here a tensor is viewed as a matrix (``shape[0]`` rows, the
other dimensions flattened into columns); the occupancy of its rows and of its
columns is coded first, then the gaps between the non-zeros of the *occupied
submatrix*, in row-major or column-major order, whichever is smaller. Every
symbol is one per occupancy entry, run or non-zero, so decoding stays a handful
of vectorised calls (docs/format.md, "Structured layout", has the measurements
that chose this over per-cell context models).

Each occupancy vector is coded in the cheapest of four ways: all occupied
(nothing stored), raw bits, an order-0 bitmap in the ANS stream, or its run
lengths through a :class:`GapCode` (long runs of empty border pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weightshare.codec.ans import GapCode, choose_gap_code, entropy_bits, read_table, table_size
from weightshare.codec.bitstream import Reader, Writer
from weightshare.core.errors import FormatError

__all__ = ["Occupancy", "Structure", "matrix_shape", "read_structure", "structured_positions", "write_structure"]

ALL, RAW, BITMAP, RUNS = 0, 1, 2, 3  # how one occupancy vector is coded (2 bits in the structure byte)
MODE_NAMES = ("all", "raw", "bitmap", "runs")
ROW_MAJOR, COLUMN_MAJOR = 0, 1


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The matrix a tensor is viewed as: ``shape[0]`` rows (output units), the rest flattened into columns.

    >>> matrix_shape((50, 20, 5, 5)), matrix_shape((7,)), matrix_shape(())
    ((50, 500), (7, 1), (1, 1))
    """
    return (shape[0], math.prod(shape[1:])) if shape else (1, 1)


@dataclass
class Occupancy:
    """How one occupancy vector (rows or columns) is coded; ``table`` is its ANS part's counts, if any."""

    size: int
    mode: int = ALL
    table: np.ndarray | None = None
    gap: GapCode | None = None  # RUNS only

    def raw_nbits(self, symbols: np.ndarray | None = None) -> np.ndarray:
        """Raw bits per coded element: one per entry (RAW), the run code's extra bits (RUNS), none otherwise."""
        if self.mode == RAW:
            return np.ones(self.size, dtype=np.int64)
        if self.mode == RUNS and symbols is not None:
            assert self.gap is not None
            return self.gap.extra_bits(int(symbols.max()) + 1 if symbols.size else 0)[symbols]
        return np.zeros(0, dtype=np.int64)

    @property
    def raw_bits(self) -> int:
        if self.mode == RAW:
            return self.size
        if self.mode == RUNS:
            assert self.gap is not None and self.table is not None
            return int((self.gap.extra_bits(self.table.size) * self.table).sum())
        return 0


@dataclass
class Structure:
    """The structured layout's own fields: traversal order and the two occupancy vectors."""

    order: int
    rows: Occupancy
    cols: Occupancy

    @property
    def occupancy(self) -> tuple[Occupancy, Occupancy]:
        return self.rows, self.cols


# --- header fields --------------------------------------------------------
def write_structure(w: Writer, s: Structure) -> None:
    """Structure byte (order, row mode, column mode), then the run code byte of each RUNS vector."""
    w.u8(s.order | s.rows.mode << 1 | s.cols.mode << 3)
    for occ in s.occupancy:
        if occ.mode == RUNS:
            assert occ.gap is not None
            w.u8(occ.gap.d | occ.gap.m << 4)


def read_structure(r: Reader, shape: tuple[int, ...], name: str) -> Structure:
    """The structure byte and run code bytes (tables come later, with the entry's other tables)."""
    byte = r.u8()
    if byte >> 5:
        raise FormatError(f"{name}: structure byte 0x{byte:02x} sets reserved bits")
    occupancy = []
    for size, mode in zip(matrix_shape(shape), ((byte >> 1) & 3, (byte >> 3) & 3), strict=True):
        gap = None
        if mode == RUNS:
            code = r.u8()
            if code >> 6:
                raise FormatError(f"{name}: run code byte 0x{code:02x} sets reserved bits")
            gap = _gap_code(code & 15, code >> 4, name)
        occupancy.append(Occupancy(size, mode, None, gap))
    return Structure(byte & 1, occupancy[0], occupancy[1])


def _gap_code(d: int, m: int, name: str) -> GapCode:
    try:
        return GapCode(d, m)
    except FormatError as exc:
        raise FormatError(f"{name}: {exc}") from exc


def read_occupancy_tables(r: Reader, s: Structure, name: str) -> None:
    """Each coded vector's table: a bitmap's two counts sum to its length; at most length + 1 runs."""
    for occ, what in zip(s.occupancy, ("row", "column"), strict=True):
        if occ.mode == BITMAP:
            occ.table = read_table(r, 2, occ.size, f"{name}: {what} occupancy table")
            if int(occ.table.sum()) != occ.size:
                raise FormatError(f"{name}: {what} occupancy table counts {int(occ.table.sum())}, not {occ.size}")
        elif occ.mode == RUNS:
            assert occ.gap is not None
            occ.table = read_table(r, occ.gap.max_alphabet, occ.size + 1, f"{name}: {what} run table")


# --- encoding -------------------------------------------------------------
def _runs(occupied: np.ndarray) -> np.ndarray:
    """Alternating run lengths, starting with an empty run (maybe of length 0); every later run minus 1."""
    edges = np.flatnonzero(np.diff(occupied.astype(np.int8))) + 1
    runs = np.diff(np.r_[0, edges, occupied.size])
    if occupied[0]:
        runs = np.r_[0, runs]
    runs[1:] -= 1
    return runs


def code_occupancy(occupied: np.ndarray) -> tuple[Occupancy, np.ndarray | None, np.ndarray, np.ndarray]:
    """The cheapest coding of one occupancy vector: (occupancy, ANS symbols or None, raw values, raw bit counts).

    >>> occ, sym, raw, nbits = code_occupancy(np.r_[np.zeros(60, bool), np.ones(100, bool), np.zeros(60, bool)])
    >>> MODE_NAMES[occ.mode], occ.gap.gaps(sym, lambda nbits: raw).tolist()  # 60 empty, 100 - 1 occupied, 60 - 1
    ('runs', [60, 99, 59])
    """
    size, empty = occupied.size, np.zeros(0, dtype=np.int64)
    if occupied.all():
        return Occupancy(size), None, empty, empty
    bits = occupied.astype(np.int64)
    counts = np.bincount(bits, minlength=2)
    runs = _runs(occupied)
    code, runs_cost = choose_gap_code(runs)
    costs = [float(size), entropy_bits(counts) + 8 * table_size(counts), runs_cost + 8]  # RAW, BITMAP, RUNS
    mode = RAW + int(np.argmin(costs))  # the first of equal costs: deterministic
    if mode == RAW:
        return Occupancy(size, RAW), None, bits, np.ones(size, dtype=np.int64)
    if mode == BITMAP:
        return Occupancy(size, BITMAP, counts), bits, empty, empty
    sym, nbits, raw = code.symbols(runs)
    return Occupancy(size, RUNS, np.bincount(sym), code), sym, raw, nbits


def structured_positions(
    idx: np.ndarray, shape: tuple[int, ...], order: int
) -> tuple[Structure, list[tuple[np.ndarray | None, np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """Code the occupancy of rows and columns and find the non-zeros inside the occupied submatrix.

    Returns the structure, per occupancy vector its (ANS symbols or None, raw values, raw bit counts),
    the non-zeros' positions inside the submatrix in ``order`` and their flat positions in the tensor.
    """
    matrix = idx.reshape(matrix_shape(shape)) != 0
    rows, cols = matrix.any(axis=1), matrix.any(axis=0)
    sub = matrix[rows][:, cols]
    row_code, col_code = code_occupancy(rows), code_occupancy(cols)
    sub_pos = np.flatnonzero(sub.T if order == COLUMN_MAJOR else sub)
    r, c = _split(sub_pos, sub.shape, order)
    flat = np.flatnonzero(rows)[r] * matrix.shape[1] + np.flatnonzero(cols)[c]
    structure = Structure(order, row_code[0], col_code[0])
    return structure, [row_code[1:], col_code[1:]], sub_pos, flat


def _split(sub_pos: np.ndarray, sub_shape: tuple[int, int], order: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) inside the submatrix of positions counted in ``order``."""
    if order == COLUMN_MAJOR:
        height = max(sub_shape[0], 1)
        return sub_pos % height, sub_pos // height
    width = max(sub_shape[1], 1)
    return sub_pos // width, sub_pos % width


# --- decoding -------------------------------------------------------------
def decode_occupancy(occ: Occupancy, symbols: np.ndarray | None, raw: np.ndarray, name: str) -> np.ndarray:
    """Indices of the occupied entries; refuses runs that do not add up to the vector's length."""
    if occ.mode == ALL:
        return np.arange(occ.size)
    if occ.mode == RAW:
        return np.flatnonzero(raw)
    assert symbols is not None
    if occ.mode == BITMAP:
        return np.flatnonzero(symbols)
    assert occ.gap is not None
    runs = occ.gap.gaps(symbols, lambda nbits: raw)
    runs[1:] += 1
    if int(runs.sum()) != occ.size:  # checked before anything of that length is built
        raise FormatError(f"{name}: occupancy runs cover {int(runs.sum())} entries, not {occ.size}")
    values = np.arange(runs.size) % 2
    return np.flatnonzero(np.repeat(values, runs))


def scatter_positions(
    sub_pos: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, ...], order: int, name: str
) -> np.ndarray:
    """Flat positions in the tensor of positions inside the occupied submatrix; each occupied row and column
    must hold a non-zero (an encoder never marks an empty one occupied)."""
    n_rows, n_cols = rows.size, cols.size
    if sub_pos.size and sub_pos[-1] >= n_rows * n_cols:
        raise FormatError(f"{name}: non-zero position {int(sub_pos[-1])} beyond the {n_rows}x{n_cols} occupied part")
    r, c = _split(sub_pos, (n_rows, n_cols), order)
    if np.bincount(r, minlength=n_rows).min(initial=1) == 0 or np.bincount(c, minlength=n_cols).min(initial=1) == 0:
        raise FormatError(f"{name}: an occupied row or column holds no non-zero")
    return rows[r] * matrix_shape(shape)[1] + cols[c]
