"""Powers of two: the centre set of probabilistic weight fixing and its prior on the uncertainties.

PWFN (Subia-Waud & Dasmahapatra, NeurIPS 2023; docs/methods.md#pwfn) fixes every
weight to one value of a small network-wide set built from powers of two:

* :func:`power_terms` -- the powers 2^e for e = -b ... ceil(log2 max|mu|) - 1;
* :func:`centre_set` -- 0 and the sums of up to ``terms`` of those powers (with
  repetition) that do not exceed max|mu|, mirrored to both signs;
* :func:`pow2_closeness` / :func:`prior_sigma` -- the paper's ``--prior``
  initialisation of each weight's sigma: a weight that already sits near a power
  of two starts nearly certain;
* :func:`assign_centres` -- one fixing round: which weights go to which centre,
  with distances in units of each weight's own sigma (docs/methods.md#pwfn-fixing).

Everything is computed in float64; centres are exact sums of powers of two, so
they are exactly representable in float32 as long as they span < 24 octaves.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import torch

__all__ = [
    "SIGMA_MIN",
    "SIGMA_MAX",
    "PRIOR_SCALE",
    "power_terms",
    "centre_set",
    "pow2_closeness",
    "prior_sigma",
    "assign_centres",
    "Assignment",
]

# Clamp range and scale of the prior initialisation, as the reference code sets them (docs/methods.md#pwfn-sigma-init).
SIGMA_MIN = 2.0**-30
SIGMA_MAX = 0.05
PRIOR_SCALE = 0.0025
DISTANCE_FLOOR = 2.0**-20  # sigma floor of the distance |c - mu| / sigma (reference code)


def power_terms(b: int, max_abs: float) -> list[float]:
    """The powers 2^e, e = -b ... ceil(log2 max_abs) - 1, smallest first (empty when max_abs < 2^-b).

    The top exponent is the reference code's: the largest power strictly below max_abs
    (or max_abs / 2 when max_abs is itself a power of two).

    >>> power_terms(3, 1.0)
    [0.125, 0.25, 0.5]
    >>> power_terms(2, 0.3), power_terms(2, 0.0)
    ([0.25], [])
    """
    if b < 1:
        raise ValueError(f"setting 'b' must be >= 1; got {b}")
    if not math.isfinite(max_abs) or max_abs <= 0:
        return []
    top = math.ceil(math.log2(max_abs)) - 1
    return [2.0**e for e in range(-b, top + 1)]


def centre_set(b: int, terms: int, max_abs: float) -> torch.Tensor:
    """Sorted float64 centres: 0 and +-(sums of 1..``terms`` powers of :func:`power_terms`) <= max_abs.

    >>> centre_set(2, 1, 1.0).tolist()
    [-0.5, -0.25, 0.0, 0.25, 0.5]
    >>> centre_set(2, 2, 1.0).tolist()
    [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if terms < 1:
        raise ValueError(f"the number of power-of-two terms must be >= 1; got {terms}")
    powers = power_terms(b, max_abs)
    sums: set[float] = set()
    for k in range(1, terms + 1):
        for combo in itertools.combinations_with_replacement(powers, k):
            total = math.fsum(combo)
            if total <= max_abs:
                sums.add(total)
    positive = torch.tensor(sorted(sums), dtype=torch.float64)
    return torch.cat([-positive.flip(0), torch.zeros(1, dtype=torch.float64), positive])


def pow2_closeness(mu: torch.Tensor) -> torch.Tensor:
    """Per weight, r = product of the relative distances of |mu| to the powers of two just below and above.

    r is 0 exactly on a power of two and at most 1/8 (at 4/3 of a power of two; |mu| = 0.75 gives
    (0.25/0.75)·(0.25/0.75) = 1/9). The reference code divides by |mu| and gets NaN for mu = 0: a zero weight sits
    *on* the zero centre, so it gets r = 0 here; tiny weights are handled in float64, so r stays finite.

    >>> [round(v, 4) for v in pow2_closeness(torch.tensor([0.5, 0.75, 0.0, -3.0, 1e-42])).tolist()]
    [0.0, 0.1111, 0.0, 0.1111, 0.1228]
    """
    a = mu.detach().to(torch.float64).abs()
    nonzero = a > 0
    safe = torch.where(nonzero, a, torch.ones_like(a))
    below = torch.exp2(torch.floor(torch.log2(safe)))
    above = torch.exp2(torch.ceil(torch.log2(safe)))
    r = ((safe - below) / safe) * ((above - safe) / safe)
    return torch.where(nonzero, r, torch.zeros_like(r))


def _quantile(x: torch.Tensor, q: float) -> float:
    """Linear-interpolation quantile (as torch.quantile) of any size (torch.quantile stops at 2^24)."""
    flat = x.reshape(-1).sort().values
    pos = q * (flat.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, flat.numel() - 1)
    return float(flat[lo] + (flat[hi] - flat[lo]) * (pos - lo))


def prior_sigma(mu: torch.Tensor) -> torch.Tensor:
    """The paper's sigma initialisation: clamp(0.0025 · r / quantile_75(r), 2^-30, 0.05), r per tensor.

    Finite for every finite input: mu = 0 and weights on a power of two get the floor 2^-30; when
    three quarters of the tensor sit on powers of two (quantile 0) the rest get the cap 0.05.

    >>> s = prior_sigma(torch.tensor([0.5, 0.75, 0.7, 0.3, 0.0]))
    >>> [round(v, 6) for v in s.tolist()]
    [0.0, 0.0025, 0.002755, 0.0025, 0.0]
    >>> bool(torch.isfinite(prior_sigma(torch.zeros(3))).all())
    True
    """
    if mu.numel() == 0:
        return torch.empty_like(mu)
    r = pow2_closeness(mu)
    q75 = _quantile(r, 0.75)
    scaled = PRIOR_SCALE * r / q75 if q75 > 0 else torch.where(r > 0, SIGMA_MAX, 0.0)
    return torch.as_tensor(scaled).clamp(SIGMA_MIN, SIGMA_MAX).to(mu.dtype)


# --- one fixing round ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Assignment:
    """Weights fixed by one round: positions (into the given flat tensors), centre and group of each."""

    position: torch.Tensor
    centre: torch.Tensor
    group: torch.Tensor
    delta: float
    terms: int


def _reach(
    centres: torch.Tensor, mu: torch.Tensor, scale: torch.Tensor, delta: float, zero_ok: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per weight, the half-open range [lo, hi) of sorted centres within ``delta`` sigmas of mu.

    A zero-fix weight also reaches the zero centre; no other centre lies between it and 0 (|mu| < 2^-b).
    """
    lo = torch.searchsorted(centres, mu - delta * scale, side="left")
    hi = torch.searchsorted(centres, mu + delta * scale, side="right")
    zero = int(torch.searchsorted(centres, torch.zeros(1, dtype=centres.dtype)))
    lo = torch.where(zero_ok, lo.clamp(max=zero), lo)
    hi = torch.where(zero_ok, hi.clamp(min=zero + 1), hi)
    return lo, hi


def _counts(lo: torch.Tensor, hi: torch.Tensor, size: int) -> torch.Tensor:
    """How many ranges [lo, hi) cover each centre (a difference array)."""
    diff = torch.zeros(size + 1, dtype=torch.int64)
    diff.index_add_(0, lo, torch.ones_like(lo)).index_add_(0, hi, -torch.ones_like(hi))
    return diff.cumsum(0)[:size]


def _take(
    centres: torch.Tensor,
    k: int,
    mu: torch.Tensor,
    scale: torch.Tensor,
    members: torch.Tensor,
    zero_ok: torch.Tensor,
    need: int,
) -> torch.Tensor:
    """Up to ``need`` of the ``members`` of centre k, nearest first (distance in units of sigma)."""
    idx = members.nonzero().reshape(-1)
    dist = (centres[k] - mu[idx]).abs() / scale[idx]
    if float(centres[k]) == 0.0:  # zero_fix: tiny weights are at distance 0 from the zero centre
        dist = torch.where(zero_ok[idx], torch.zeros_like(dist), dist)
    return idx[torch.sort(dist, stable=True).indices[:need]]


def assign_centres(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    need: int,
    *,
    b: int,
    max_terms: int = 4,
    delta: float = 1.0,
    inc: float = 2.0,
    zero_fix: bool = True,
) -> Assignment:
    """Fix ``need`` of the given (unfixed) weights to power-of-two centres, the most certain first.

    One round of docs/methods.md#pwfn-fixing: the centre reaching the most weights within ``delta`` sigmas
    takes up to ``need`` of them, nearest first, and leaves the candidate list; when no candidate reaches a
    weight, the number of power-of-two terms (up to ``max_terms``) and the reach (``delta *= inc``) grow in
    turn.

    Two weights reach 0.25, one 0.5 and one (zero_fix: |mu| < 2^-3) the zero centre; the tie of one
    each goes to the first centre in ascending order:

    >>> a = assign_centres(torch.tensor([0.26, 0.24, 0.51, 0.001]), torch.full((4,), 0.02), 3, b=3)
    >>> a.position.tolist(), a.centre.tolist(), a.group.tolist()
    ([0, 1, 3], [0.25, 0.25, 0.0], [0, 0, 1])
    """
    if inc <= 1 or delta <= 0:
        raise ValueError(f"the reach must start > 0 and grow (inc > 1); got delta {delta}, inc {inc}")
    if not bool(torch.isfinite(mu).all()):
        raise ValueError("cannot fix non-finite weights to centres (did training diverge?)")
    need = min(need, mu.numel())
    mu, scale = mu.double(), sigma.double().clamp(min=DISTANCE_FLOOR)
    zero_ok = (mu.abs() < 2.0**-b) & zero_fix
    free = torch.ones_like(mu, dtype=torch.bool)
    taken: list[torch.Tensor] = []
    centre_of: list[float] = []
    terms, grow_terms = 1, True
    while need > 0:
        centres = centre_set(b, terms, float(mu[free].abs().max()))
        lo, hi = _reach(centres, mu, scale, delta, zero_ok)
        alive = torch.ones(centres.numel(), dtype=torch.bool)
        while need > 0:
            counts = _counts(lo[free], hi[free], centres.numel()).masked_fill(~alive, -1)
            k = int(counts.argmax())
            if counts[k] <= 0:
                break
            group = _take(centres, k, mu, scale, free & (lo <= k) & (hi > k), zero_ok, need)
            taken.append(group)
            centre_of.append(float(centres[k]))
            free[group] = False
            alive[k] = False
            need -= group.numel()
        if need > 0:
            if grow_terms and terms < max_terms:
                terms += 1
            else:
                delta *= inc
            grow_terms = not grow_terms
    return _assignment(taken, centre_of, delta, terms)


def _assignment(taken: list[torch.Tensor], centre_of: list[float], delta: float, terms: int) -> Assignment:
    sizes = torch.tensor([t.numel() for t in taken], dtype=torch.int64)
    group = torch.repeat_interleave(torch.arange(len(taken)), sizes)
    position = torch.cat(taken) if taken else torch.zeros(0, dtype=torch.int64)
    centre = torch.tensor(centre_of, dtype=torch.float64)[group]
    return Assignment(position, centre, group, delta, terms)
