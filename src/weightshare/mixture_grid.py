"""Tabulated ("grid") mixture negative log-likelihood: soft weight-sharing at nearly plain-training cost.

The exact kernel (:mod:`weightshare.mixture_kernel`) evaluates N x K exponentials per step; for
LeNet-300-100 that alone is ~3x a plain training step (issue "A fast, memory-lean mixture prior").
But f(w) = -log sum_k pi_k N(w | mu_k, 1/lambda_k) is a smooth function of ONE variable, and every
mixture-parameter gradient is a sum over weights of a smooth function g(w). So:

1. One pass ``aminmax`` gives the weight range [lo, hi]; a uniform grid x_j = x_0 + j Delta covers it
   with Delta = sigma_min / ``cells_per_sigma`` (sigma_min: the narrowest component).
2. On the grid (G x K values, float64) we evaluate f, f', f'' and, for each component k,
   g^mu_k = -r_k a_k, g^lam_k = r_k (a_k d_k - 1) / 2, g^pi_k = -r_k and their w-derivatives
   (r_k: responsibilities, d_k = w - mu_k, a_k = lambda_k d_k; r_k' = r_k (f' - a_k),
   f'' = f'^2 - sum_k r_k a_k^2 + sum_k r_k lambda_k).
3. dS/dw_i = f'(w_i) is the cubic Hermite interpolant of f' (values f', slopes f'') in the weight's
   cell: per weight four table look-ups and a Horner evaluation.
4. S and the parameter gradients are sum_i q(w_i) with q in {f, g^mu_k, g^lam_k, g^pi_k}. Replacing
   q by its cubic Hermite interpolant (values q, slopes q') in each cell, the sum only needs the
   per-cell moments M_m = sum_{i in cell} u_i^m, m = 0..3 (u: position inside the cell), i.e. a
   4-moment histogram of the weights; the reduction against the grid tables is G x K work.

Error bound. Cubic Hermite interpolation of a C^4 function h on a cell of width Delta errs by
h''''(xi) Delta^4 u^2 (1 - u)^2 / 24 <= Delta^4 max|h''''| / 384. Inside a region where one component
dominates, f is a quadratic, f' linear and every g a polynomial of degree <= 2, so the interpolants
are exact there; errors arise only where responsibilities switch between components. Every cell is
checked a posteriori: the interpolants of f', f and all g are compared with exact values at u = 1/4,
1/2, 3/4 (the Hermite error kernel is maximal at 1/2, and a switch anywhere inside the cell shows at
one of the three points). A cell whose error exceeds ``tol`` in natural units (1/sigma_min for f',
1 nat for f, sqrt(lambda_k) for g^mu_k, 1 for g^lam_k and g^pi_k) is *flagged*; the weights in
flagged cells are evaluated exactly (float64) instead. Hence, to the accuracy of the three-point
check, every per-weight quantity has error <= tol in those units and each sum over N weights has
error <= N tol (same units); with the defaults (tol = 1e-6) this is far below float32 rounding
of the exact kernel's per-weight terms (~6e-8 relative, but the test suite checks it against the
float64 exact reference: tests/test_mixture_grid.py).

If G would exceed ``max_cells`` (a component absurdly narrow relative to the weight range) or a
weight is not finite, the exact kernel is used for that step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .mixture_kernel import mixture_nll

__all__ = ["mixture_nll_grid", "CELLS_PER_SIGMA", "GRID_TOL", "MAX_CELLS"]

# Measured (tests/test_mixture_grid.py, benchmarks/prior_speed.py): 16 cells per sigma resolves the
# component switches of trained mixtures, so few weights land in flagged cells.
CELLS_PER_SIGMA = 16.0
GRID_TOL = 1e-6
MAX_CELLS = 1 << 17
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_EXACT_CHUNK = 8192


def _grid_values(
    x: torch.Tensor, mu: torch.Tensor, log_prec: torch.Tensor, log_pis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact values and w-derivatives at points ``x`` (P,), float64, of the summed quantities.

    Returns (value, slope), each (P, 1 + 3K + 1): columns [f, g^mu (K), g^lam (K), g^pi (K), f'];
    the slope of the last column is f''.
    """
    lam = log_prec.exp()
    d = x.unsqueeze(1) - mu  # (P, K); differences first, no cancellation for narrow components
    a = lam * d
    logits = (log_pis + 0.5 * log_prec - _HALF_LOG_2PI) - 0.5 * a * d
    lse = torch.logsumexp(logits, 1, keepdim=True)
    r = (logits - lse).exp()
    fp = (r * a).sum(1, keepdim=True)
    ra = r * a
    fpp = fp.square() - (ra * a).sum(1, keepdim=True) + (r * lam).sum(1, keepdim=True)
    dr = r * (fp - a)  # r_k' = r_k (f' - a_k)
    half = 0.5 * (a * d - 1.0)
    value = torch.cat([-lse, -ra, r * half, -r, fp], 1)
    slope = torch.cat([fp, -(dr * a + r * lam), dr * half + ra, -dr, fpp], 1)
    return value, slope


def _hermite(y0: torch.Tensor, m0: torch.Tensor, y1: torch.Tensor, m1: torch.Tensor, u: float) -> torch.Tensor:
    """Cubic Hermite interpolant at fraction ``u`` of a cell (slopes already scaled by Delta)."""
    h01 = u * u * (3.0 - 2.0 * u)
    return (1.0 - h01) * y0 + u * (1.0 - u) ** 2 * m0 + h01 * y1 - u * u * (1.0 - u) * m1


def _flagged_cells(
    value: torch.Tensor, slope: torch.Tensor, checks: list[torch.Tensor], delta: float, scale: torch.Tensor, tol: float
) -> torch.Tensor:
    """Cells whose interpolants miss the exact check values by more than ``tol * scale``."""
    y0, y1 = value[:-1], value[1:]
    m0, m1 = delta * slope[:-1], delta * slope[1:]
    err = torch.zeros(y0.shape[0], dtype=torch.float64)
    for frac, exact in zip((0.25, 0.5, 0.75), checks, strict=True):
        miss = (_hermite(y0, m0, y1, m1, frac) - exact).abs() / scale
        err = torch.maximum(err, miss.amax(1))
    return ~(err <= tol)  # NaN counts as flagged


def _exact_subset(
    w: torch.Tensor, mu: torch.Tensor, log_prec: torch.Tensor, log_pis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 sum of [f, g^mu, g^lam, g^pi] over ``w`` and f'(w), chunked (O(chunk x K) memory)."""
    total = torch.zeros(1 + 3 * mu.shape[0], dtype=torch.float64)
    grad = torch.empty(w.shape[0], dtype=torch.float64)
    for start in range(0, w.shape[0], _EXACT_CHUNK):
        part = w[start : start + _EXACT_CHUNK].double()
        value, _ = _grid_values(part, mu, log_prec, log_pis)
        total += value[:, :-1].sum(0)
        grad[start : start + _EXACT_CHUNK] = value[:, -1]
    return total, grad


class _GridNLL(torch.autograd.Function):
    """S(w, mu, log lambda, log pi) by grid interpolation, gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, means, log_prec, log_pis, x0, delta, cells, tol, *weights):  # type: ignore[override]
        dtype = weights[0].dtype
        mu, lp, lpi = (t.detach().double() for t in (means, log_prec, log_pis))
        k = mu.shape[0]
        # Nodes, then the check points at 1/4, 1/2, 3/4 of every cell: one (4G + 1)-point evaluation.
        fine = x0 + (delta / 4.0) * torch.arange(4 * cells + 1, dtype=torch.float64)
        value, slope = _grid_values(fine, mu, lp, lpi)
        nodes_v, nodes_s = value[::4], slope[::4]
        scale = torch.cat(
            [
                torch.ones(1, dtype=torch.float64),
                (0.5 * lp).exp(),
                torch.ones(2 * k, dtype=torch.float64),
                (0.5 * lp.max()).exp().reshape(1),
            ]
        )
        checks = [value[1::4], value[2::4], value[3::4]]
        flagged = _flagged_cells(nodes_v, nodes_s, checks, delta, scale, tol)
        # Per-cell cubic in u for f' (Horner coefficients), in the weights' dtype.
        y0, y1 = nodes_v[:-1, -1], nodes_v[1:, -1]
        m0, m1 = delta * nodes_s[:-1, -1], delta * nodes_s[1:, -1]
        coef = [y0, m0, 3.0 * (y1 - y0) - 2.0 * m0 - m1, 2.0 * (y0 - y1) + m0 + m1]
        coef = [c.to(dtype).contiguous() for c in coef]
        moments = torch.zeros(4, cells, dtype=torch.float64)
        exact = torch.zeros(1 + 3 * k, dtype=torch.float64)
        inv = 1.0 / delta  # exactly representable in the weights' dtype (see mixture_nll_grid)
        grads = []
        for idx, weight in enumerate(weights):
            flat = weight.detach().reshape(-1)
            t = torch.sub(flat, x0).mul_(inv)  # position in cells; >= 1 by the padding
            j = t.long()
            u = t.frac_()
            need_grad = ctx.needs_input_grad[7 + idx]
            grad = None
            if need_grad:
                grad = coef[3].index_select(0, j)
                tmp = torch.empty_like(grad)
                for c in (coef[2], coef[1], coef[0]):
                    torch.addcmul(torch.index_select(c, 0, j, out=tmp), grad, u, out=grad)
            _accumulate_moments(moments, j, u)
            counts_flagged = flagged.any() and bool((flagged & (moments[0] > 0)).any())
            if counts_flagged:
                mask = flagged.index_select(0, j)
                sel = mask.nonzero().squeeze(1)
                sums, exact_grad = _exact_subset(flat.index_select(0, sel), mu, lp, lpi)
                exact += sums
                if grad is not None:
                    grad.index_copy_(0, sel, exact_grad.to(dtype))
            grads.append(grad.view_as(weight) if grad is not None else None)
        moments[:, flagged] = 0.0  # weights in flagged cells were summed exactly
        m0_, m1_, m2_, m3_ = moments
        # Cell sums of the Hermite basis: h00 = 1 - 3u^2 + 2u^3, h10 = u - 2u^2 + u^3,
        # h01 = 3u^2 - 2u^3, h11 = u^3 - u^2; node weights collect both adjacent cells.
        b01 = 3.0 * m2_ - 2.0 * m3_
        b10, b11 = m1_ - 2.0 * m2_ + m3_, m3_ - m2_
        wv = torch.zeros(cells + 1, dtype=torch.float64)
        ws = torch.zeros(cells + 1, dtype=torch.float64)
        wv[:-1] += m0_ - b01
        wv[1:] += b01
        ws[:-1] += delta * b10
        ws[1:] += delta * b11
        sums = wv @ nodes_v[:, :-1] + ws @ nodes_s[:, :-1] + exact
        ctx.param_grads = (sums[1 : 1 + k], sums[1 + k : 1 + 2 * k], sums[1 + 2 * k :])
        ctx.weight_grads = grads
        return sums[0].to(dtype)

    @staticmethod
    def backward(ctx, grad_s):  # type: ignore[override]
        g_mu, g_lp, g_pi = (g.to(grad_s.dtype) * grad_s for g in ctx.param_grads)
        wgrads = tuple(None if g is None else g * grad_s for g in ctx.weight_grads)
        return (g_mu, g_lp, g_pi, None, None, None, None, *wgrads)


def _accumulate_moments(moments: torch.Tensor, j: torch.Tensor, u: torch.Tensor) -> None:
    """moments[m, c] += sum over weights in cell c of u^m, m = 0..3 (float64 sums)."""
    cells = moments.shape[1]
    moments[0] += torch.bincount(j, minlength=cells)
    # float64: per-cell sums of thousands of u's in float32 lose ~1e-4 of the mean gradients, whose
    # terms cancel around each component (measured: 2.5e-4 of max|dS/dmu| on a trained-like mixture).
    u64 = u.double()
    power = u64
    for m in (1, 2, 3):
        if m > 1:
            power = power * u64
        moments[m].scatter_add_(0, j, power)


def mixture_nll_grid(
    weights: Sequence[torch.Tensor],
    means: torch.Tensor,
    log_precisions: torch.Tensor,
    log_pis: torch.Tensor,
    *,
    cells_per_sigma: float = CELLS_PER_SIGMA,
    tol: float = GRID_TOL,
    max_cells: int = MAX_CELLS,
) -> torch.Tensor:
    """``-sum_i log sum_k pi_k N(w_i | mu_k, 1/lambda_k)`` by grid interpolation (see module docstring).

    Same arguments and gradients as :func:`weightshare.mixture_kernel.mixture_nll`, with a
    tested error bound (``tol`` per weight in natural units); falls back to that exact kernel when
    the grid would need more than ``max_cells`` cells.

    >>> w = [torch.linspace(-0.3, 0.3, 1001)]
    >>> mu, lp, lpi = torch.tensor([0.0, 0.2]), torch.full((2,), 6.0), torch.log(torch.tensor([0.6, 0.4]))
    >>> abs(float(mixture_nll_grid(w, mu, lp, lpi)) - float(mixture_nll(w, mu, lp, lpi))) < 1e-3
    True
    """
    if not (cells_per_sigma > 0 and tol > 0 and max_cells >= 4):
        raise ValueError(
            f"need cells_per_sigma > 0, tol > 0, max_cells >= 4; got {cells_per_sigma}, {tol}, {max_cells}"
        )
    weights = [w for w in weights if w.numel() > 0]
    if not weights:
        return mixture_nll(weights, means, log_precisions, log_pis)
    with torch.no_grad():
        ranges = [torch.aminmax(w.detach()) for w in weights]
        lo = min(float(r.min) for r in ranges)
        hi = max(float(r.max) for r in ranges)
        sigma_min = math.exp(-0.5 * float(log_precisions.detach().max()))
    delta = sigma_min / cells_per_sigma
    span = hi - lo
    if not (math.isfinite(span) and delta > 0 and span / delta < max_cells - 3):
        return mixture_nll(weights, means, log_precisions, log_pis)
    # One padding cell left and right keeps every weight's cell index in [1, G - 2] despite rounding.
    cells = math.ceil(span / delta) + 3
    # x0 and 1/Delta are rounded to the weights' dtype and the grid is built from exactly those
    # values: otherwise their rounding shifts every weight by the same ~1e-8 and biases dS/dmu by
    # N lambda 1e-8 (measured 2.5e-4 of max|dS/dmu| on a trained-like LeNet-300 mixture).
    dtype = weights[0].dtype
    x0 = float(torch.tensor(lo - delta, dtype=dtype))
    delta = 1.0 / float(torch.tensor(1.0 / delta, dtype=dtype))
    return _GridNLL.apply(means, log_precisions, log_pis, x0, delta, cells, float(tol), *weights)
