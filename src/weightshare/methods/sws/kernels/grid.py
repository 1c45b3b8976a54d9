"""Tabulated ("grid") mixture negative log-likelihood: soft weight-sharing at nearly plain-training cost.

The exact kernel (:mod:`weightshare.methods.sws.kernels.exact`) evaluates N x K exponentials per step; for
LeNet-300-100 that alone is ~3x a plain training step (issue "A fast, memory-lean mixture prior").
But f(w) = -log sum_k pi_k N(w | mu_k, 1/lambda_k) is a smooth function of ONE variable, and every
mixture-parameter gradient is a sum over weights of a smooth function g(w). So:

1. One ``aminmax`` pass gives the weight range [lo, hi]; a uniform grid x_j = x_0 + j Delta covers
   it with Delta = sigma_min / ``cells_per_sigma`` (sigma_min: the narrowest component).
2. At the G + 1 nodes (float64, G x K work) we evaluate f, f', f'' and, per component k,
   g^mu_k = -r_k a_k, g^lam_k = r_k (a_k d_k - 1) / 2, g^pi_k = -r_k with their w-derivatives
   (r_k: responsibilities, d_k = w - mu_k, a_k = lambda_k d_k; r_k' = r_k (f' - a_k),
   f'' = f'^2 - sum_k r_k a_k^2 + sum_k r_k lambda_k).
3. dS/dw_i = f'(w_i) is the cubic Hermite interpolant of f' (values f', slopes f'') in the weight's
   cell: four table look-ups and a Horner evaluation per weight.
4. S and the parameter gradients are sums sum_i q(w_i), q in {f, g^mu_k, g^lam_k, g^pi_k}. With q
   replaced by its cubic Hermite interpolant in each cell, they only need the per-cell moments
   M_m = sum_{i in cell} u_i^m, m = 0..3 (u: position inside the cell) -- a 4-moment histogram of
   the weights -- reduced against the node tables (G x K work).

Error bound. Cubic Hermite interpolation of a C^4 function h on a cell of width Delta errs by
h''''(xi) Delta^4 u^2 (1 - u)^2 / 24 <= Delta^4 max|h''''| / 384. Where one component dominates,
f is a quadratic, f' linear and every g a polynomial of degree <= 2, so the interpolants are exact
there; errors arise only where the responsibilities switch between components. Each cell's error
is estimated a posteriori from the node tables (:func:`_cell_error`); a cell whose estimate exceeds
``tol`` in natural units -- 1 nat for f, sqrt(lambda_k) for g^mu_k, 1 for g^lam_k and g^pi_k,
1 / sigma_min for f' -- is *flagged*, and the weights in flagged cells are evaluated exactly
(float64) instead. Hence every per-weight quantity errs by <= tol in those units and each sum over
N weights by <= N tol, up to the accuracy of the estimate, plus float32 rounding of the weights'
cell positions (the same order as rounding the weights themselves). tests/methods/sws/kernels/test_grid.py
checks the result against the float64 exact reference, weight by weight in the cells that are not flagged.

If G would exceed ``max_cells`` (a component absurdly narrow relative to the weight range) or a
weight is not finite, the exact kernel is used for that step.

Two implementations of steps 2-4: compiled loops over the occupied cells only
(:mod:`weightshare.methods.sws.kernels.grid_jit`, numba; the default wherever numba runs) and the torch ops in
this module (every cell; the fallback, ``WEIGHTSHARE_JIT=0``, and the path for tensors on any other
device, e.g. CUDA: the compiled kernel reads CPU memory through numpy and is chosen for CPU tensors only;
every table and buffer of the torch path lives on the weights' device). Both are held to the same
float64 reference by the same tests.
"""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from collections.abc import Sequence

import torch

from weightshare.methods.sws.kernels.exact import mixture_nll
from weightshare.methods.sws.kernels.grid_jit import CompiledGrid, jit_available

__all__ = ["mixture_nll_grid", "CELLS_PER_SIGMA", "CELLS_PER_SIGMA_COMPILED", "GRID_TOL", "MAX_CELLS", "DEFAULT_CHUNK"]

# 16 cells per sigma resolves the component switches of trained mixtures well enough that few
# weights land in flagged cells (measured: ~2 % for sigma = 0.01, 0 at initialisation). The compiled
# kernel positions weights in float64 and evaluates flagged cells cheaply, so coarser cells pay off
# there: 8 per sigma is 7-17 % faster on trained LeNet-300/LeNet-5 mixtures (6 gains no more), while
# the torch kernel's float32 positions miss the tested tolerance at 8 (measured).
CELLS_PER_SIGMA = 16.0
CELLS_PER_SIGMA_COMPILED = 8.0
GRID_TOL = 1e-6
MAX_CELLS = 1 << 17
DEFAULT_CHUNK = 1 << 19
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_EXACT_CHUNK = 8192
_WORKSPACES: dict[tuple[int, int, torch.dtype, torch.device], list[torch.Tensor]] = {}
_GRAD_BUFFERS: dict[tuple[int, int, torch.dtype, torch.device], tuple[torch.Tensor, weakref.ref]] = {}


def _grid_values(
    x: torch.Tensor, mu: torch.Tensor, log_prec: torch.Tensor, log_pis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact values and w-derivatives at points ``x`` (P,), float64, of the summed quantities.

    Returns (value, slope), each (P, 3K + 2): columns [f, g^mu (K), g^lam (K), g^pi (K), f'];
    the slope of the last column is f''.
    """
    lam = log_prec.exp()
    d = x.unsqueeze(1) - mu  # (P, K); differences first, no cancellation for narrow components
    a = lam * d
    logits = (log_pis + 0.5 * log_prec - _HALF_LOG_2PI) - 0.5 * a * d
    lse = torch.logsumexp(logits, 1, keepdim=True)
    r = (logits - lse).exp_()
    ra = r * a
    fp = ra.sum(1, keepdim=True)
    fpp = fp.square() - (ra * a).sum(1, keepdim=True) + (r * lam).sum(1, keepdim=True)
    dr = r * (fp - a)  # r_k' = r_k (f' - a_k)
    half = (a * d).sub_(1.0).mul_(0.5)
    value = torch.cat([-lse, -ra, r * half, -r, fp], 1)
    slope = torch.cat([fp, -(dr * a + r * lam), dr * half + ra, -dr, fpp], 1)
    return value, slope


def _cell_error(value: torch.Tensor, slope: torch.Tensor, delta: float) -> torch.Tensor:
    """A posteriori Hermite error per cell and column, (G, C), from the node tables alone.

    The cubic of cell j has the constant third derivative 6 c3_j / Delta^3 with
    c3 = 2 (y0 - y1) + m0 + m1 (m = Delta y'), so 6 (c3_{j+1} - c3_j) / Delta^4 estimates h''''
    and the bound Delta^4 max|h''''| / 384 becomes |c3_{j+1} - c3_j| / 64 (worst neighbour). A
    switch of components that the grid does not resolve makes its cell's c3 of the order of the
    jump, so that cell (and its neighbours) are flagged as well.
    """
    c3 = 2.0 * (value[:-1] - value[1:]) + delta * (slope[:-1] + slope[1:])
    jump = (c3[1:] - c3[:-1]).abs()
    edge = jump.new_zeros(1, jump.shape[1])
    return torch.maximum(torch.cat([edge, jump]), torch.cat([jump, edge])) / 64.0


def _exact_subset(
    w: torch.Tensor, mu: torch.Tensor, log_prec: torch.Tensor, log_pis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 sum of [f, g^mu, g^lam, g^pi] over ``w`` and f'(w), chunked (O(chunk x K) memory)."""
    total = torch.zeros(1 + 3 * mu.shape[0], dtype=torch.float64, device=w.device)
    grad = torch.empty(w.shape[0], dtype=torch.float64, device=w.device)
    for start in range(0, w.shape[0], _EXACT_CHUNK):
        value, _ = _grid_values(w[start : start + _EXACT_CHUNK].double(), mu, log_prec, log_pis)
        total += value[:, :-1].sum(0)
        grad[start : start + _EXACT_CHUNK] = value[:, -1]
    return total, grad


def _workspace(n: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Reused per-chunk buffers: t/u, tmp, u^m, ones (``dtype``), j (int64), packed weights (``dtype``).

    A fresh output above glibc's mmap threshold is page-faulted on every step (~0.4 ms per MB,
    measured), more than the arithmetic; cf. the workspace of :mod:`weightshare.methods.sws.kernels.exact`.
    """
    key = (threading.get_ident(), n, dtype, device)
    bufs = _WORKSPACES.get(key)
    if bufs is None:
        if len(_WORKSPACES) >= 4:  # bounded when shapes keep changing
            _WORKSPACES.clear()
        bufs = [torch.empty(n, dtype=dtype, device=device) for _ in range(3)]
        bufs += [torch.ones(n, dtype=dtype, device=device), torch.empty(n, dtype=torch.int64, device=device)]
        bufs += [torch.empty(n, dtype=dtype, device=device)]
        _WORKSPACES[key] = bufs
    return bufs


def _hermite(y0: torch.Tensor, y1: torch.Tensor, m0: torch.Tensor, m1: torch.Tensor) -> list[torch.Tensor]:
    """Coefficients [c0, c1, c2, c3] in u of the cubic with values y and slopes m (per unit u) at both ends."""
    return [y0, m0, 3.0 * (y1 - y0) - 2.0 * m0 - m1, 2.0 * (y0 - y1) + m0 + m1]


def _torch_pass(
    grid: _Grid,
    flats: list[torch.Tensor],
    ends: list[int],
    grad_all: torch.Tensor,
    chunk: int,
    bufs: list[torch.Tensor],
) -> None:
    """The per-weight pass in torch ops. Chunks are ranges of the concatenated weights: small tensors
    share a chunk (packed into a workspace buffer), so a step costs a fixed number of torch calls
    (~5 us each) per chunk, not per tensor."""
    for start in range(0, ends[-1], chunk):
        stop = min(start + chunk, ends[-1])
        pieces = []
        for flat, end in zip(flats, ends, strict=True):
            lo, hi = max(start, end - flat.numel()), min(stop, end)
            if lo < hi:
                pieces.append(flat[lo - end + flat.numel() : hi - end + flat.numel()])
        w = pieces[0] if len(pieces) == 1 else torch.cat(pieces, out=bufs[5][: stop - start])
        grid.chunk(w, grad_all[start:stop], bufs)


def _compiled_sums(grid: CompiledGrid, flats: list[torch.Tensor], grad_all: torch.Tensor, chunk: int) -> torch.Tensor:
    """The sums of :meth:`_Grid.sums`, and f' into ``grad_all``, by the compiled kernel."""
    flats = [f.contiguous() for f in flats]
    for flat in flats:
        grid.mark(flat)
    grid.build()
    start = 0
    for flat in flats:
        for lo in range(0, flat.numel(), chunk):  # chunks bound the scratch of left-over indices
            grid.interpolate(flat[lo : lo + chunk], grad_all[start + lo : start + lo + chunk])
        start += flat.numel()
    return torch.from_numpy(grid.sums())


class _Grid:
    """The node tables of one step, the per-chunk work against them and the final reduction."""

    def __init__(
        self, x0: float, delta: float, cells: int, params: tuple[torch.Tensor, ...], tol: float, dtype: torch.dtype
    ) -> None:
        self.x0, self.delta, self.cells, self.params = x0, delta, cells, params
        mu, lp, _ = params
        k, self.device = mu.shape[0], mu.device  # every table on the parameters' (= the weights') device
        nodes = x0 + delta * torch.arange(cells + 1, dtype=torch.float64, device=self.device)
        self.value, self.slope = _grid_values(nodes, *params)
        one = torch.ones(1, dtype=torch.float64, device=self.device)
        scale = torch.cat([one, (0.5 * lp).exp(), one.expand(2 * k), (0.5 * lp.max()).exp().reshape(1)])
        err = (_cell_error(self.value, self.slope, delta) / scale).amax(1)
        self.flagged = ~(err <= tol)  # NaN counts as flagged
        self.any_flagged = bool(self.flagged.any())
        self.moments = torch.zeros(4, cells, dtype=torch.float64, device=self.device)
        self.scratch = torch.zeros(4, cells, dtype=dtype, device=self.device)
        self.exact = torch.zeros(1 + 3 * k, dtype=torch.float64, device=self.device)
        self.coef: list[torch.Tensor] = []

    def horner(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """Per-cell coefficients [c0, c1, c2, c3] of the Hermite cubic of f' in u, in ``dtype``."""
        if not self.coef:
            y0, y1 = self.value[:-1, -1], self.value[1:, -1]
            m0, m1 = self.delta * self.slope[:-1, -1], self.delta * self.slope[1:, -1]
            self.coef = [c.to(dtype).contiguous() for c in _hermite(y0, y1, m0, m1)]
        return self.coef

    def chunk(self, w: torch.Tensor, grad: torch.Tensor | None, bufs: list[torch.Tensor]) -> None:
        """Interpolate f' into ``grad``, add the chunk's cell moments; weights in flagged cells exactly."""
        n = w.shape[0]
        t, tmp, power, ones, j = (b[:n] for b in bufs[:5])
        torch.sub(w, self.x0, out=t).mul_(1.0 / self.delta)  # cell position, >= 1 by the padding
        j.copy_(t)  # truncation = floor as t > 0
        u = t.frac_()
        if grad is not None:
            c0, c1, c2, c3 = self.horner(w.dtype)
            torch.index_select(c3, 0, j, out=grad)
            for c in (c2, c1, c0):
                torch.addcmul(torch.index_select(c, 0, j, out=tmp), grad, u, out=grad)
        # Per-chunk float32 sums (exact counts below 2^24) folded into float64 totals, of the centred
        # v = u - 1/2: a running float32 sum of u over ~1e4 weights in one cell loses ~1e-4 of dS/dmu
        # (measured for wide components), one of v stays small. scatter_add_ of ones, not bincount:
        # bincount also scans j for its min and max.
        v = u.sub_(0.5)
        part = self.scratch.zero_()
        part[0].scatter_add_(0, j, ones)
        part[1].scatter_add_(0, j, v)
        part[2].scatter_add_(0, j, torch.mul(v, v, out=power))
        part[3].scatter_add_(0, j, power.mul_(v))
        self.moments += part
        if self.any_flagged:
            sel = self.flagged.index_select(0, j).nonzero().squeeze(1)
            if sel.numel():
                sums, exact_grad = _exact_subset(w.index_select(0, sel), *self.params)
                self.exact += sums
                if grad is not None:
                    grad.index_copy_(0, sel, exact_grad.to(grad.dtype))

    def sums(self) -> torch.Tensor:
        """[S, dS/dmu (K), dS/dlog lambda (K), dS/dlog pi (K)], float64."""
        moments = self.moments
        moments[:, self.flagged] = 0.0  # the weights in flagged cells were summed exactly
        m0, v1, v2, v3 = moments  # moments of v = u - 1/2; those of u follow binomially
        m1 = v1 + 0.5 * m0
        m2 = v2 + v1 + 0.25 * m0
        m3 = v3 + 1.5 * v2 + 0.75 * v1 + 0.125 * m0
        # Cell sums of the Hermite basis h00 = 1 - 3u^2 + 2u^3, h10 = u - 2u^2 + u^3,
        # h01 = 3u^2 - 2u^3, h11 = u^3 - u^2; each node collects both adjacent cells.
        b01 = 3.0 * m2 - 2.0 * m3
        node_v = torch.zeros(self.cells + 1, dtype=torch.float64, device=self.device)
        node_s = torch.zeros(self.cells + 1, dtype=torch.float64, device=self.device)
        node_v[:-1] += m0 - b01
        node_v[1:] += b01
        node_s[:-1] += self.delta * (m1 - 2.0 * m2 + m3)
        node_s[1:] += self.delta * (m3 - m2)
        return node_v @ self.value[:, :-1] + node_s @ self.slope[:, :-1] + self.exact


class _Owner:
    """Marks which forward last used a reused gradient buffer, and whether its backward has run."""

    __slots__ = ("__weakref__", "done")

    def __init__(self) -> None:
        self.done = False


def _gradient_buffer(n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, _Owner]:
    """The N-sized dS/dw output, reused from step to step: a fresh 1 MB tensor costs ~0.35 ms of page
    faults (measured, one thread), ~10 % of the prior's cost on LeNet-300-100. A buffer whose last
    forward still waits for its backward (two losses summed, say) is not reused: a fresh one is
    returned instead. The module keeps a reference, so autograd never adopts the buffer as a .grad
    (it copies); a stale second backward is caught by the version check in ``_GridNLL.backward``."""
    key, owner = (threading.get_ident(), n, dtype, device), _Owner()
    entry = _GRAD_BUFFERS.get(key)
    if entry is not None:
        previous = entry[1]()
        if previous is not None and not previous.done:
            return torch.empty(n, dtype=dtype, device=device), owner
        buf = entry[0]
        torch.autograd.graph.increment_version(buf)  # numba writes through numpy: bump it ourselves
    else:
        if len(_GRAD_BUFFERS) >= 4:  # bounded when shapes keep changing
            _GRAD_BUFFERS.clear()
        buf = torch.empty(n, dtype=dtype, device=device)
    _GRAD_BUFFERS[key] = (buf, weakref.ref(owner))
    return buf, owner


class _GridNLL(torch.autograd.Function):
    """S(w, mu, log lambda, log pi) by grid interpolation, gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, means, log_prec, log_pis, x0, delta, cells, tol, chunk, *weights):  # type: ignore[override]
        params = tuple(t.detach().double() for t in (means, log_prec, log_pis))
        k = params[0].shape[0]
        flats = [w.detach().reshape(-1) for w in weights]
        ends = list(itertools.accumulate(f.numel() for f in flats))
        dtype, device = flats[0].dtype, flats[0].device
        grad_all, ctx.owner = _gradient_buffer(ends[-1], dtype, device)  # one output for every tensor
        if _compiled(weights):
            sums = _compiled_sums(
                CompiledGrid(x0, delta, cells, tuple(p.numpy() for p in params), tol), flats, grad_all, chunk
            )
        else:
            grid = _Grid(x0, delta, cells, params, tol, dtype)
            _torch_pass(grid, flats, ends, grad_all, chunk, _workspace(chunk, dtype, device))
            sums = grid.sums()
        grads = [
            grad_all[end - f.numel() : end].view_as(wt) if ctx.needs_input_grad[8 + i] else None
            for i, (f, end, wt) in enumerate(zip(flats, ends, weights, strict=True))
        ]
        ctx.param_grads = (sums[1 : 1 + k], sums[1 + k : 1 + 2 * k], sums[1 + 2 * k :])
        ctx.weight_grads, ctx.grad_all, ctx.applied = grads, grad_all, None
        ctx.version = grad_all._version
        return sums[0].to(weights[0].dtype)

    @staticmethod
    def backward(ctx, grad_s):  # type: ignore[override]
        g_mu, g_lp, g_pi = (g.to(grad_s.dtype) * grad_s for g in ctx.param_grads)
        scale = float(grad_s)
        if ctx.grad_all._version != ctx.version:
            raise RuntimeError(
                "the grid complexity loss was evaluated again (a new step) before this second backward; "
                "its weight gradients were overwritten. Call backward(retain_graph=True) twice only "
                "before the next complexity_loss, or use kernel='fast'."
            )
        ctx.owner.done = True
        if ctx.applied is None and scale != 0.0:
            # Scale the stashed N-sized gradients in place: a fresh output costs page faults (see
            # _workspace). A second backward (retain_graph=True) rescales by the ratio.
            ctx.grad_all.mul_(scale)  # one pass; the per-tensor gradients are views of it
            ctx.version = ctx.grad_all._version
            wgrads = tuple(ctx.weight_grads)
            ctx.applied = scale
        else:
            ratio = scale / ctx.applied if ctx.applied else scale
            wgrads = tuple(None if g is None else g * ratio for g in ctx.weight_grads)
        return (g_mu, g_lp, g_pi, None, None, None, None, None, *wgrads)


def _compiled(weights: Sequence[torch.Tensor]) -> bool:
    """Whether the compiled kernel takes these weights: CPU tensors only (it reads them through numpy);
    on any other device the torch ops of :class:`_Grid` run there."""
    return weights[0].device.type == "cpu" and jit_available(weights[0].dtype)


def grid_spec(
    lo: float, hi: float, sigma_min: float, cells_per_sigma: float, dtype: torch.dtype
) -> tuple[float, float, int]:
    """(x0, Delta, G) of the grid covering [lo, hi]; x0 and 1/Delta exact in ``dtype``.

    One padding cell on each side keeps every weight's cell index in [1, G - 2] despite rounding.
    x0 and 1/Delta are rounded to the weights' dtype and the nodes are built from exactly those
    values: otherwise their rounding shifts every weight by the same ~1e-8 and biases dS/dmu by
    N lambda 1e-8 (measured: 2.5e-4 of max|dS/dmu| for a trained-like LeNet-300 mixture).

    >>> grid_spec(-1.0, 1.0, 0.25, 16.0, torch.float32)
    (-1.015625, 0.015625, 131)
    """
    delta = sigma_min / cells_per_sigma
    cells = math.ceil((hi - lo) / delta) + 3
    x0 = float(torch.tensor(lo - delta, dtype=dtype, device="cpu"))  # rounding a number: on the CPU
    return x0, 1.0 / float(torch.tensor(1.0 / delta, dtype=dtype, device="cpu")), cells


def mixture_nll_grid(
    weights: Sequence[torch.Tensor],
    means: torch.Tensor,
    log_precisions: torch.Tensor,
    log_pis: torch.Tensor,
    *,
    cells_per_sigma: float | None = None,
    tol: float = GRID_TOL,
    max_cells: int = MAX_CELLS,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """``-sum_i log sum_k pi_k N(w_i | mu_k, 1/lambda_k)`` by grid interpolation (module docstring).

    Same arguments and gradients as :func:`weightshare.methods.sws.kernels.exact.mixture_nll`, within the
    error bound ``tol`` (per weight, natural units); uses that exact kernel instead when the grid
    would need more than ``max_cells`` cells or a weight is not finite. ``cells_per_sigma`` defaults
    to ``CELLS_PER_SIGMA_COMPILED`` for the compiled kernel and ``CELLS_PER_SIGMA`` for the torch one.

    >>> w = [torch.linspace(-0.3, 0.3, 1001)]
    >>> mu, lp, lpi = torch.tensor([0.0, 0.2]), torch.full((2,), 6.0), torch.log(torch.tensor([0.6, 0.4]))
    >>> abs(float(mixture_nll_grid(w, mu, lp, lpi)) / float(mixture_nll(w, mu, lp, lpi)) - 1) < 1e-6
    True
    """
    if cells_per_sigma is None:
        cells_per_sigma = CELLS_PER_SIGMA_COMPILED if weights and _compiled(weights) else CELLS_PER_SIGMA
    if not (cells_per_sigma > 0 and tol > 0 and max_cells >= 4 and chunk_size >= 1):
        raise ValueError(
            "need cells_per_sigma > 0, tol > 0, max_cells >= 4, chunk_size >= 1; "
            f"got {cells_per_sigma}, {tol}, {max_cells}, {chunk_size}"
        )
    weights = [w for w in weights if w.numel() > 0]
    if not weights:
        return mixture_nll(weights, means, log_precisions, log_pis)
    with torch.no_grad():
        ranges = [torch.aminmax(w.detach()) for w in weights]
        lo = min(float(r.min) for r in ranges)
        hi = max(float(r.max) for r in ranges)
        sigma_min = math.exp(-0.5 * float(log_precisions.detach().max()))
    span_cells = (hi - lo) * cells_per_sigma / sigma_min if sigma_min > 0 else math.inf
    if not (math.isfinite(span_cells) and span_cells < max_cells - 4):
        return mixture_nll(weights, means, log_precisions, log_pis)
    x0, delta, cells = grid_spec(lo, hi, sigma_min, cells_per_sigma, weights[0].dtype)
    return _GridNLL.apply(means, log_precisions, log_pis, x0, delta, cells, float(tol), int(chunk_size), *weights)
