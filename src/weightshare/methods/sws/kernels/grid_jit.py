"""The grid kernel compiled (numba), on the occupied cells only; the torch version is the fallback.

Same algorithm as :mod:`weightshare.methods.sws.kernels.grid` (read its docstring first): node tables of f,
f' and the per-component g's, a posteriori cell errors, a Hermite interpolation of f' per weight,
4-moment cell histograms reduced against the node tables. Two things differ, both measured on
LeNet-300-100 (266K weights, one thread; benchmarks/RESULTS.md):

* Compiled loops. In torch the per-weight pass is ~20 passes over the weights (4 gathers, 4
  ``scatter_add_``, the arithmetic between): 4.3 ms a step, more than the network's own training
  step (3.4 ms). One loop that reads each weight once does it in a fraction of that.
* Tables on the occupied cells only. A trained mixture has a narrow zero component (sigma ~ 0.004)
  while the weights span ~[-1, 1], so the grid has ~8,000 cells and the torch version builds
  (G+1) x (3K+2) float64 tables with ~30 ops over them: 40 ms a step, 10x the network's step,
  although most cells hold no weight. Here one cheap pass counts the weights per cell first, and the
  tables are evaluated only at the nodes those cells (and their error estimates) need.

numba (a maintained JIT compiler for numeric Python) compiles on first use and caches the machine
code on disk, so no C compiler is needed. Where numba is missing, or for dtypes other than
float32/float64, the torch version runs; both are tested against the same float64 reference.
``WEIGHTSHARE_JIT=0`` turns the compiled version off. Positions inside a cell are computed and the
moments accumulated in float64 here (float32 in the torch version).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import torch

__all__ = ["jit_available", "CompiledGrid"]

try:  # numba is a dependency, but the kernel must still run where it cannot be installed
    import numba
except ImportError:  # pragma: no cover - exercised by the torch-version tests instead
    numba = None

_SUPPORTED = (torch.float32, torch.float64)
# A cell is tabulated only if it holds at least this many weights; the weights of sparser cells are
# evaluated exactly. An isolated cell needs four nodes (its error estimate looks at both
# neighbours), each as costly as one exact evaluation (measured on a trained-like LeNet-300
# mixture: 4.6 -> 4.0 ms a step with 2 instead of 1; 3 and 5 are slower again).
MIN_COUNT = 2
_SCRATCH = threading.local()  # a fresh N-sized buffer each step costs page faults (~0.4 ms per MB)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _jit(fn=None, *, inline: str = "never"):
    """numba.njit with an on-disk cache; ``inline="always"`` for small helpers called per cell (a
    call that is not inlined reference-counts its array arguments on every call)."""
    if fn is None:
        return lambda f: _jit(f, inline=inline)
    return fn if numba is None else numba.njit(cache=True, nogil=True, inline=inline)(fn)


@_jit
def _count_cells(w, x0, inv_delta, counts):  # pragma: no cover - compiled
    """counts[j] += the number of weights of ``w`` in cell j (NaN and out-of-range skipped)."""
    cells = counts.shape[0]
    for i in range(w.shape[0]):
        t = (np.float64(w[i]) - x0) * inv_delta
        if t >= 0.0 and t < cells:
            counts[np.int64(t)] += 1


@_jit
def _node_slots(occupied):  # pragma: no cover - compiled
    """Row of each needed node in the compact tables (-1: not needed) and the needed nodes.

    Cell j's interpolants use nodes j, j + 1; its error estimate compares its cubic with those of
    cells j - 1 and j + 1, hence nodes j - 1 .. j + 2.
    """
    cells = occupied.shape[0]
    row = np.full(cells + 1, -1, np.int64)
    for j in range(cells):
        if occupied[j]:
            for m in range(max(j - 1, 0), min(j + 2, cells) + 1):
                row[m] = 0
    count = 0
    for m in range(cells + 1):
        if row[m] == 0:
            row[m] = count
            count += 1
    nodes = np.empty(count, np.int64)
    for m in range(cells + 1):
        if row[m] >= 0:
            nodes[row[m]] = m
    return row, nodes


# A component whose log-density at a node is this far below the largest one has r_k < e^-60 ~ 1e-26:
# it is set to exactly 0 and skipped (its table columns stay 0), which makes a node cost ~1-2
# exponentials instead of K. The effect is ~1e-26 relative, far below the kernel's tolerance.
_NEGLIGIBLE = 60.0


@_jit(inline="always")
def _point(x, mu, lam, base, d, a, r, value, slope, active, p):  # pragma: no cover - compiled
    """Row p of the tables at the point x: values and w-slopes of [f, g^mu (K), g^lam (K), g^pi (K), f']
    (mixture_grid._grid_values), a bit of the zeroed ``active`` row set per component not negligible
    at x (its columns are written as 0); d, a, r are (K,) scratch."""
    k_count = mu.shape[0]
    cols = 3 * k_count + 2
    if math.isnan(x):  # max() below would skip it
        value[p, :], slope[p, :] = np.nan, np.nan
        return
    top = -np.inf
    for k in range(k_count):
        d[k] = x - mu[k]
        a[k] = lam[k] * d[k]
        r[k] = base[k] - 0.5 * a[k] * d[k]
        top = max(top, r[k])
    total = 0.0
    for k in range(k_count):
        if r[k] >= top - _NEGLIGIBLE:
            active[p, k >> 6] |= np.uint64(1) << np.uint64(k & 63)
            r[k] = math.exp(r[k] - top)
        else:
            r[k] = 0.0
        total += r[k]
    fp, ra2, rlam = 0.0, 0.0, 0.0
    for k in range(k_count):
        if r[k] > 0.0:
            r[k] /= total
            fp += r[k] * a[k]
            ra2 += r[k] * a[k] * a[k]
            rlam += r[k] * lam[k]
    value[p, 0], slope[p, 0] = -(top + math.log(total)), fp
    for k in range(k_count):
        dr = r[k] * (fp - a[k])  # r_k' = r_k (f' - a_k); all 0 for a negligible component
        half = 0.5 * (a[k] * d[k] - 1.0)
        value[p, 1 + k], slope[p, 1 + k] = -r[k] * a[k], -(dr * a[k] + r[k] * lam[k])
        value[p, 1 + k_count + k], slope[p, 1 + k_count + k] = r[k] * half, dr * half + r[k] * a[k]
        value[p, 1 + 2 * k_count + k], slope[p, 1 + 2 * k_count + k] = -r[k], -dr
    value[p, cols - 1], slope[p, cols - 1] = fp, fp * fp - ra2 + rlam


@_jit
def _node_tables(nodes, x0, delta, mu, log_prec, log_pis, value, slope, active):  # pragma: no cover
    """:func:`_point` at every node x0 + delta * nodes[p] into the (P, 3K + 2) ``value`` and ``slope``
    and the zeroed (P, ceil(K / 64)) uint64 ``active``."""
    lam = np.exp(log_prec)
    base = log_pis + 0.5 * log_prec - _HALF_LOG_2PI
    d, a, r = np.empty(mu.shape[0]), np.empty(mu.shape[0]), np.empty(mu.shape[0])
    for p in range(nodes.shape[0]):
        _point(x0 + delta * nodes[p], mu, lam, base, d, a, r, value, slope, active, p)


@_jit
def _exact_points(w, sel, mu, log_prec, log_pis, out, grad, want_grad):  # pragma: no cover - compiled
    """The weights w[sel] exactly (float64): their f, g's added to ``out``, f' into ``grad``."""
    k_count = mu.shape[0]
    cols = 3 * k_count + 2
    lam = np.exp(log_prec)
    base = log_pis + 0.5 * log_prec - _HALF_LOG_2PI
    d, a, r = np.empty(k_count), np.empty(k_count), np.empty(k_count)
    value, slope = np.zeros((1, cols)), np.zeros((1, cols))
    active = np.zeros((1, (k_count + 63) // 64), np.uint64)
    for i in sel:
        _point(np.float64(w[i]), mu, lam, base, d, a, r, value, slope, active, 0)
        for c in range(cols - 1):
            out[c] += value[0, c]
        if want_grad:
            grad[i] = value[0, cols - 1]


@_jit(inline="always")
def _cubic3(value, slope, r0, r1, c, delta):  # pragma: no cover - compiled
    """c3 of the Hermite cubic between table rows r0 and r1, column c (mixture_grid._cell_error)."""
    return 2.0 * (value[r0, c] - value[r1, c]) + delta * (slope[r0, c] + slope[r1, c])


@_jit(inline="always")
def _cell_column_error(value, slope, ra, r0, r1, rb, c, delta):  # pragma: no cover - compiled
    """Error estimate of column c in the cell between table rows r0 and r1; ra / rb are the outer
    nodes of its neighbour cells (-1 at the grid's ends)."""
    c3 = _cubic3(value, slope, r0, r1, c, delta)
    jump = 0.0
    if ra >= 0:
        jump = abs(c3 - _cubic3(value, slope, ra, r0, c, delta))
    if rb >= 0:
        jump = max(jump, abs(_cubic3(value, slope, r1, rb, c, delta) - c3))
    return jump / 64.0


@_jit(inline="always")
def _is_on(mask, k):  # pragma: no cover - compiled
    return (mask[k >> 6] >> np.uint64(k & 63)) & np.uint64(1)


@_jit
def _flag_and_coef(occupied, row, value, slope, active, delta, scale, tol, flagged, cell, slot):  # pragma: no cover
    """Per occupied cell j (table row row[j]): flagged if any column's error estimate exceeds ``tol``
    (or is NaN), else slot[j] = row[j] (-1 stays for the others); cell[row[j], :4] = the Hermite
    coefficients of f' in u, lowest power first. Columns of components negligible at all four nodes
    involved are 0 there and skipped."""
    cells, cols, k_count = occupied.shape[0], value.shape[1], (value.shape[1] - 2) // 3
    mask = np.empty(active.shape[1], np.uint64)
    for j in range(cells):
        if not occupied[j]:
            continue
        ra, r0, r1 = row[j - 1] if j > 0 else -1, row[j], row[j + 1]
        rb = row[j + 2] if j < cells - 1 else -1
        for word in range(mask.shape[0]):
            mask[word] = active[r0, word] | active[r1, word]
            mask[word] |= active[ra, word] if ra >= 0 else np.uint64(0)
            mask[word] |= active[rb, word] if rb >= 0 else np.uint64(0)
        bad = False
        for c in (0, cols - 1):
            bad = bad or not (_cell_column_error(value, slope, ra, r0, r1, rb, c, delta) <= tol * scale[c])
        for k in range(k_count):
            if bad:
                break
            if _is_on(mask, k):
                for c in (1 + k, 1 + k_count + k, 1 + 2 * k_count + k):
                    bad = bad or not (_cell_column_error(value, slope, ra, r0, r1, rb, c, delta) <= tol * scale[c])
        flagged[r0] = bad
        if not bad:
            slot[j] = r0
        y0, y1 = value[r0, cols - 1], value[r1, cols - 1]
        m0, m1 = delta * slope[r0, cols - 1], delta * slope[r1, cols - 1]
        cell[r0, 0], cell[r0, 1] = y0, m0
        cell[r0, 2], cell[r0, 3] = 3.0 * (y1 - y0) - 2.0 * m0 - m1, 2.0 * (y0 - y1) + m0 + m1


@_jit
def _weight_pass(w, x0, inv_delta, slot, cell, grad, want_grad, sel):  # pragma: no cover - compiled
    """f' into grad and the centred moments of v = u - 1/2 into cell[s, 4:]; returns how many weights
    went to sel (cells without a slot: flagged or unmarked, the exact kernel's). A cell's
    coefficients and moments share one 64-byte row, so a weight touches one or two cache lines, not
    four (measured on a trained-like LeNet-300 mixture, 4,000 occupied cells: 2.0 -> 1.35 ms)."""
    cells = slot.shape[0]
    count = 0
    for i in range(w.shape[0]):
        t = (np.float64(w[i]) - x0) * inv_delta
        s = -1
        if t >= 0.0 and t < cells:
            s = slot[np.int64(t)]
        if s < 0:
            sel[count] = i
            count += 1
            continue
        u = t - np.int64(t)
        if want_grad:
            grad[i] = ((cell[s, 3] * u + cell[s, 2]) * u + cell[s, 1]) * u + cell[s, 0]
        v = u - 0.5
        v2 = v * v
        cell[s, 4] += 1.0
        cell[s, 5] += v
        cell[s, 6] += v2
        cell[s, 7] += v2 * v
    return count


@_jit
def _reduce(occupied, row, flagged, value, slope, active, delta, cell, out):  # pragma: no cover - compiled
    """out += sum over cells of the Hermite-basis moments times the node tables (mixture_grid._Grid.sums),
    over the columns of f and of the components not negligible at the cell's two nodes."""
    k_count = (value.shape[1] - 2) // 3
    mask = np.empty(active.shape[1], np.uint64)
    for j in range(occupied.shape[0]):
        if not occupied[j]:
            continue
        r0, r1 = row[j], row[j + 1]
        if flagged[r0]:
            continue
        m0, v1, v2, v3 = cell[r0, 4], cell[r0, 5], cell[r0, 6], cell[r0, 7]
        m1, m2 = v1 + 0.5 * m0, v2 + v1 + 0.25 * m0
        m3 = v3 + 1.5 * v2 + 0.75 * v1 + 0.125 * m0
        b01 = 3.0 * m2 - 2.0 * m3
        nv0, nv1 = m0 - b01, b01
        ns0, ns1 = delta * (m1 - 2.0 * m2 + m3), delta * (m3 - m2)
        out[0] += nv0 * value[r0, 0] + ns0 * slope[r0, 0] + nv1 * value[r1, 0] + ns1 * slope[r1, 0]
        for word in range(mask.shape[0]):
            mask[word] = active[r0, word] | active[r1, word]
        for k in range(k_count):
            if _is_on(mask, k):
                for c in (1 + k, 1 + k_count + k, 1 + 2 * k_count + k):
                    out[c] += nv0 * value[r0, c] + ns0 * slope[r0, c] + nv1 * value[r1, c] + ns1 * slope[r1, c]


def jit_available(dtype: torch.dtype) -> bool:
    """Whether the compiled kernel runs for weights of ``dtype`` (numba present, not turned off).

    >>> isinstance(jit_available(torch.float32), bool)
    True
    """
    return numba is not None and dtype in _SUPPORTED and os.environ.get("WEIGHTSHARE_JIT", "1") != "0"


class CompiledGrid:
    """One step of the grid kernel over 1-D contiguous CPU tensors: ``mark`` every tensor, ``build``,
    ``interpolate`` every tensor, then ``sums``. Weights in cells it cannot interpolate within the
    tolerance, or in cells holding fewer than ``MIN_COUNT`` weights, are evaluated exactly (float64).
    Its tables live in per-thread scratch buffers: one grid at a time per thread.

    >>> w = torch.linspace(-0.3, 0.3, 1001)
    >>> mu, lp, lpi = np.array([0.0, 0.2]), np.full(2, 6.0), np.log([0.6, 0.4])
    >>> g = CompiledGrid(-0.3046875, 1 / 512, 315, (mu, lp, lpi), 1e-6)
    >>> g.mark(w); g.build(); exact = g.interpolate(w, torch.empty(1001))
    >>> g.sums().shape, exact
    ((7,), 0)
    """

    def __init__(self, x0: float, delta: float, cells: int, params: tuple[np.ndarray, ...], tol: float) -> None:
        self.x0, self.delta, self.params, self.tol = x0, delta, params, tol
        self.inv_delta = 1.0 / delta
        self.counts = np.zeros(cells, np.int32)

    def mark(self, w: torch.Tensor) -> None:
        _count_cells(_as_numpy(w), self.x0, self.inv_delta, self.counts)

    def build(self) -> None:
        """Node tables, cell flags and f' coefficients for the occupied cells."""
        mu, log_prec, log_pis = self.params
        self.occupied = self.counts >= MIN_COUNT
        self.row, nodes = _node_slots(self.occupied)
        count, k = nodes.shape[0], mu.shape[0]
        self.value, self.slope = _scratch("value", (count, 3 * k + 2)), _scratch("slope", (count, 3 * k + 2))
        self.active = _scratch("active", (count, (k + 63) // 64), np.uint64, zero=True)
        _node_tables(nodes, self.x0, self.delta, mu, log_prec, log_pis, self.value, self.slope, self.active)
        one = np.ones(1)
        scale = np.concatenate([one, np.exp(0.5 * log_prec), np.ones(2 * k), [np.exp(0.5 * log_prec.max())]])
        self.flagged = _scratch("flagged", (count,), np.bool_)
        self.cell = _scratch("cell", (count, 8), zero=True)
        self.slot = _scratch("slot", self.occupied.shape, np.int32)
        self.slot.fill(-1)
        self.exact = np.zeros(3 * k + 1)
        tables = (self.value, self.slope, self.active, self.delta)
        _flag_and_coef(self.occupied, self.row, *tables, scale, self.tol, self.flagged, self.cell, self.slot)

    def interpolate(self, w: torch.Tensor, grad: torch.Tensor | None) -> int:
        """f'(w) into ``grad`` (same shape and dtype) and w's share of the sums; returns how many weights
        (in flagged or unmarked cells) were evaluated exactly instead."""
        sel = _scratch("sel", (w.numel(),), np.int64)
        grad_np = np.empty(0, _as_numpy(w).dtype) if grad is None else _as_numpy(grad)
        args = (self.x0, self.inv_delta, self.slot, self.cell, grad_np, grad is not None)
        count = _weight_pass(_as_numpy(w), *args, sel)
        if count:
            _exact_points(_as_numpy(w), sel[:count], *self.params, self.exact, grad_np, grad is not None)
        return count

    def sums(self) -> np.ndarray:
        """[S, dS/dmu (K), dS/dlog lambda (K), dS/dlog pi (K)] over the interpolated weights, float64."""
        out = self.exact.copy()
        tables = (self.value, self.slope, self.active, self.delta)
        _reduce(self.occupied, self.row, self.flagged, *tables, self.cell, out)
        return out


def _scratch(name: str, shape: tuple[int, ...], dtype: type = np.float64, zero: bool = False) -> np.ndarray:
    """An array from this thread's scratch ``name``, grown when too small, zeroed on request. Fresh
    arrays from numba's allocator are page-faulted on every step: 2.4 ms for the two (5240, 53)
    tables of a trained LeNet-300 mixture, more than all the arithmetic (measured); zeroing those
    two tables costs ~0.4 ms, so the kernels write every entry instead."""
    size = math.prod(shape)
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.shape[0] < size or buf.dtype != dtype:
        buf = np.empty(max(size, 1024), dtype)
        setattr(_SCRATCH, name, buf)
    out = buf[:size].reshape(shape)
    if zero:
        out.fill(0)
    return out


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dim() != 1 or not t.is_contiguous() or t.dtype not in _SUPPORTED or t.device.type != "cpu":
        raise ValueError(f"need a 1-D contiguous float32/float64 CPU tensor, got {tuple(t.shape)} {t.dtype}")
    return t.detach().numpy()
