"""Yang et al.'s quantization projection: per-layer codebooks of 2^b free levels plus a fixed 0, and the bits.

The ADMM method (:mod:`weightshare.methods.admm.method`, Yang, Gui, Zhu & Liu, CVPR 2020) projects X = W + U onto
"each layer's non-zeros take at most 2^b_l values" under the model-size budget
(docs/methods.md#admm-quantization-projection; the authors' ``util.py``: ``zerok_means1D``,
``km_quantize_tensor``, ``sparse_quantize``):

* the codebook for b bits is 1-D k-means of the layer's non-zeros with 2^b free centres plus a centre fixed
  at 0, linearly initialised over the non-zeros' range (:func:`weightshare.core.kmeans.kmeans1d`, ``fixed_zero``);
  the 0 is not counted, so a b-bit layer stores 2^b + 1 levels;
* a value is mapped to its nearest level, 0 included; |x| < 1e-5 counts as 0;
* the bit widths come from the greedy multiple-choice knapsack (:func:`weightshare.methods.admm.knapsack.mckp_greedy`)
  on distortion against b·nnz_l bits.
"""

from __future__ import annotations

import torch

from weightshare.core.kmeans import assign_nearest, kmeans1d
from weightshare.methods.admm.knapsack import mckp_greedy

__all__ = [
    "MAX_BITS",
    "ZERO_EPS",
    "zero_codebook",
    "refine_codebook",
    "zero_quantize",
    "masked_codebook",
    "refine_masked_codebook",
    "masked_quantize",
    "quantization_projection",
]

MAX_BITS = 8
# Yang's util.py (_NZ_PES): in the quantization projection |x| < 1e-5 counts as zero.
ZERO_EPS = 1e-5


def zero_codebook(x: torch.Tensor, bits: int, max_iter: int = 100) -> torch.Tensor:
    """Codebook of Yang's quantization projection: entry 0 is the fixed 0, then at most 2^bits centres from
    k-means of the non-zeros of ``x`` (|x| >= 1e-5), linearly initialised over their range.

    >>> zero_codebook(torch.tensor([0.0, 1e-6, 1.0, 1.2, -2.0]), 1)
    tensor([ 0.0000, -2.0000,  1.1000])
    """
    return _fresh_codebook(_nonzeros(x), bits, max_iter, fixed_zero=True)


def refine_codebook(x: torch.Tensor, codebook: torch.Tensor, max_iter: int) -> torch.Tensor:
    """A few Lloyd steps on the non-zeros of ``x``, starting from ``codebook`` (its 0 stays fixed).

    >>> refine_codebook(torch.tensor([0.0, 1.0, 1.2, -2.0]), torch.tensor([0.0, -1.0, 1.0]), 5)
    tensor([ 0.0000, -2.0000,  1.1000])
    """
    return _refined_codebook(_nonzeros(x), codebook, max_iter, fixed_zero=True)


def _nonzeros(x: torch.Tensor) -> torch.Tensor:
    values = x.detach().reshape(-1)
    return values[values.abs() >= ZERO_EPS]


def zero_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of each value's nearest codebook entry (``codebook[0]`` = 0); |x| < 1e-5 and entries that
    are exactly 0 map to index 0, as in Yang's ``km_quantize_tensor``.

    >>> zero_quantize(torch.tensor([0.4, 1e-6, -1.9, 0.6]), torch.tensor([0.0, -2.0, 1.0]))
    tensor([0, 0, 1, 2])
    """
    index = assign_nearest(x, codebook)
    index[(x.detach().abs() < ZERO_EPS) | (codebook[index] == 0)] = 0
    return index


def masked_codebook(x: torch.Tensor, mask: torch.Tensor, bits: int, max_iter: int = 100) -> torch.Tensor:
    """Codebook ``[0, 2^bits centres]`` from k-means of ``x[mask]`` with no centre at 0, linearly initialised:
    the levels of a fine-tuning in which every weight of the mask stays non-zero (``finetune_keep_nonzeros``).

    >>> masked_codebook(torch.tensor([0.0, 0.01, 1.0, -2.0]), torch.tensor([False, True, True, True]), 1)
    tensor([ 0.0000, -2.0000,  0.5050])
    """
    return _fresh_codebook(x.detach()[mask], bits, max_iter, fixed_zero=False)


def refine_masked_codebook(x: torch.Tensor, mask: torch.Tensor, codebook: torch.Tensor, max_iter: int) -> torch.Tensor:
    """A few Lloyd steps on ``x[mask]`` from the free centres of ``codebook`` (no centre at 0).

    >>> m = torch.tensor([True, True, True])
    >>> refine_masked_codebook(torch.tensor([0.01, 1.0, -2.0]), m, torch.tensor([0.0, -1.0, 1.0]), 5)
    tensor([ 0.0000, -2.0000,  0.5050])
    """
    return _refined_codebook(x.detach()[mask], codebook, max_iter, fixed_zero=False)


# The four codebook functions above differ only in the values clustered and in whether the 0 is a centre
# k-means assigns to (fixed_zero, the reference) or only the level of the weights outside the mask.
def _fresh_codebook(values: torch.Tensor, bits: int, max_iter: int, *, fixed_zero: bool) -> torch.Tensor:
    if values.numel() == 0:
        return values.new_zeros(1)
    return _with_zero(values, 2**bits, "linear", max_iter, fixed_zero)


def _refined_codebook(values: torch.Tensor, codebook: torch.Tensor, max_iter: int, *, fixed_zero: bool) -> torch.Tensor:
    if values.numel() == 0 or codebook.numel() < 2:
        return codebook
    return _with_zero(values, codebook.numel() - 1, codebook[1:], max_iter, fixed_zero)


def _with_zero(values: torch.Tensor, k: int, init: str | torch.Tensor, max_iter: int, fixed_zero: bool) -> torch.Tensor:
    centroids = kmeans1d(values, k, init=init, max_iter=max_iter, fixed_zero=fixed_zero).centroids
    return centroids if fixed_zero else torch.cat([centroids.new_zeros(1), centroids])


def masked_quantize(x: torch.Tensor, codebook: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of each masked value's nearest non-zero level (never 0); index 0 outside the mask.

    >>> mask = torch.tensor([True, False, True])
    >>> masked_quantize(torch.tensor([0.01, 0.3, -1.9]), torch.tensor([0.0, -2.0, 1.0]), mask)
    tensor([2, 0, 1])
    """
    if codebook.numel() < 2:
        return torch.zeros_like(x, dtype=torch.int64)
    index = assign_nearest(x, codebook[1:]) + 1
    return index.masked_fill_(~mask, 0)


def _distortion(x: torch.Tensor, codebook: torch.Tensor) -> float:
    return float(((x.to(torch.float64) - codebook.to(torch.float64)[zero_quantize(x, codebook)]) ** 2).sum())


def quantization_projection(
    xs: dict[str, torch.Tensor],
    nnz: dict[str, int],
    budget: float,
    bwlb: int,
    max_iter: int,
    bwub: int = MAX_BITS,
) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Yang's ``sparse_quantize``: bit widths b_l by the greedy MCKP on distortion vs ``b * nnz_l`` bits,
    and the projection V_l = Q_{b_l}(X_l), each b_l in ``bwlb..bwub``. Returns ``(bits, V)``.

    >>> xs = {"a": torch.tensor([0.0, 1.0, 1.1, 3.0]), "b": torch.tensor([0.5, -0.5, 0.0])}
    >>> quantization_projection(xs, {"a": 3, "b": 2}, budget=5, bwlb=1, max_iter=20)  # 1 bit each: 5 bits
    ({'a': 1, 'b': 1}, {'a': tensor([0.0000, 1.0500, 1.0500, 3.0000]), 'b': tensor([ 0.5000, -0.5000,  0.0000])})
    >>> quantization_projection(xs, {"a": 3, "b": 2}, budget=8, bwlb=1, max_iter=20)[0]  # a's 2nd bit is exact
    {'a': 2, 'b': 1}
    >>> quantization_projection(xs, {"a": 3, "b": 2}, budget=100, bwlb=1, max_iter=20, bwub=1)[0]  # capped
    {'a': 1, 'b': 1}
    """
    choices = list(range(bwlb, bwub + 1))
    codebooks = {n: [zero_codebook(x, b, max_iter) for b in choices] for n, x in xs.items()}
    costs = [[float(b * nnz[n]) for b in choices] for n in xs]
    losses = [[_distortion(x, cb) for cb in codebooks[n]] for n, x in xs.items()]
    picked = mckp_greedy(costs, losses, budget)
    bits, projected = {}, {}
    for (n, x), j in zip(xs.items(), picked, strict=True):
        codebook = codebooks[n][j]
        bits[n], projected[n] = choices[j], codebook[zero_quantize(x, codebook)]
    return bits, projected
