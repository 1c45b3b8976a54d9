"""Tests for weightshare.core.kmeans: agreement with scikit-learn's Lloyd, the fixed zero, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from weightshare.core.kmeans import INIT_METHODS, assign_nearest, init_centroids, kmeans1d


def _weights(n: int = 3000, seed: int = 0) -> torch.Tensor:
    """Weight-like data: a narrow peak at 0 plus two broader bumps (float64)."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(0, 0.01, n // 2), rng.normal(-0.1, 0.05, n // 4), rng.normal(0.12, 0.04, n - n // 2 - n // 4)]
    return torch.from_numpy(np.concatenate(parts))


def _reference_lloyd(x: np.ndarray, c: np.ndarray, fixed: int = 0, iters: int = 100) -> np.ndarray:
    """Textbook N x K Lloyd (float64), the first ``fixed`` centroids frozen, empty clusters kept."""
    c = c.astype(np.float64).copy()
    for _ in range(iters):
        labels = np.abs(x[:, None] - c[None, :]).argmin(1)
        new = c.copy()
        for j in range(fixed, len(c)):
            if (labels == j).any():
                new[j] = x[labels == j].mean()
        if np.array_equal(new, c):
            break
        c = new
    return c


@pytest.mark.parametrize("init", INIT_METHODS)
@pytest.mark.parametrize("k", [2, 5, 16])
def test_agrees_with_sklearn_lloyd(init: str, k: int) -> None:
    x = _weights()
    start = init_centroids(x, k, init, seed=3)
    ours = kmeans1d(x, k, init=start)
    ref = KMeans(n_clusters=k, init=start.numpy()[:, None], n_init=1, algorithm="lloyd", tol=0.0, max_iter=100)
    ref.fit(x.numpy()[:, None])
    np.testing.assert_allclose(ours.centroids.numpy(), ref.cluster_centers_[:, 0], rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(ours.labels.numpy(), ref.labels_)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-6)
    assert ours.n_iter == ref.n_iter_


def test_named_init_equals_explicit_init() -> None:
    x = _weights(seed=1)
    for init in INIT_METHODS:
        a = kmeans1d(x, 8, init=init, seed=5)
        b = kmeans1d(x, 8, init=init_centroids(x, 8, init, seed=5))
        assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)


def test_linear_and_density_init_values() -> None:
    x = torch.arange(11, dtype=torch.float64)  # 0..10
    assert init_centroids(x, 3, "linear").tolist() == [0.0, 5.0, 10.0]
    # levels (i + 0.5) / 2 = 0.25, 0.75 of the CDF -> positions 2.5 and 7.5 in the sorted data
    assert init_centroids(x, 2, "density").tolist() == [2.5, 7.5]


def test_seeded_inits_are_deterministic_and_pick_data_points() -> None:
    x = _weights(seed=2)
    for init in ("forgy", "kmeans++"):
        a, b = init_centroids(x, 6, init, seed=7), init_centroids(x, 6, init, seed=7)
        assert torch.equal(a, b)
        assert not torch.equal(a, init_centroids(x, 6, init, seed=8))
        assert torch.isin(a, x).all()
        assert kmeans1d(x, 6, init=init, seed=7).centroids.equal(kmeans1d(x, 6, init=init, seed=7).centroids)


def test_kmeanspp_spreads_centres_over_separated_groups() -> None:
    # D^2 sampling: once a group holds a centre, its points have tiny weight, so 3 far groups get 3 centres.
    x = torch.cat([torch.linspace(-0.01, 0.01, 500) + off for off in (-10.0, 0.0, 10.0)]).double()
    c = init_centroids(x, 3, "kmeans++", seed=0).sort().values
    assert torch.allclose(c, torch.tensor([-10.0, 0.0, 10.0], dtype=torch.float64), atol=0.02)


def test_labels_are_nearest_centroid() -> None:
    x = _weights(seed=4)
    r = kmeans1d(x, 7, init="density")
    brute = (x[:, None] - r.centroids[None, :]).abs().argmin(1)
    assert torch.equal(r.labels, brute)
    assert r.inertia == pytest.approx(float(((x - r.centroids[r.labels]) ** 2).sum()), rel=1e-12)


def test_assign_nearest_ties_shape_and_chunks() -> None:
    c = torch.tensor([1.0, 0.0, 3.0])
    x = torch.tensor([[0.5, 2.0], [-4.0, 9.0]])  # 0.5 and 2.0 lie on midpoints: the smaller centroid wins
    assert assign_nearest(x, c).tolist() == [[1, 0], [1, 2]]
    y = torch.randn(1000)
    assert torch.equal(assign_nearest(y, c, chunk_size=7), assign_nearest(y, c))


def test_fixed_zero_keeps_exact_zero_and_matches_reference() -> None:
    x = _weights(seed=5)
    x = x[x.abs() > 0.02]  # ADMM clusters the non-zeros with 2^b free centres plus a fixed 0
    r = kmeans1d(x, 4, fixed_zero=True)
    assert r.centroids.numel() == 5 and r.centroids[0].item() == 0.0
    start = np.concatenate([[0.0], np.linspace(float(x.min()), float(x.max()), 4)])
    np.testing.assert_allclose(r.centroids.numpy(), _reference_lloyd(x.numpy(), start, fixed=1), rtol=1e-9)
    # values nearer to 0 than to any free centre are labelled 0 (they would be pruned)
    near_zero = x.abs() < (r.centroids[1:].abs().min() / 2)
    assert near_zero.any() and (r.labels[near_zero] == 0).all()


def test_empty_cluster_keeps_its_centroid() -> None:
    x = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0, 12.0], dtype=torch.float64)
    r = kmeans1d(x, 3, init=torch.tensor([0.5, 11.0, 100.0]))
    assert r.centroids.tolist() == [1.0, 11.0, 100.0]
    assert r.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert r.inertia == pytest.approx(4.0)


def test_fewer_distinct_values_than_clusters_is_exact() -> None:
    x = torch.tensor([3.0, 1.0, 1.0, 2.0, 3.0])
    r = kmeans1d(x, 5)
    assert r.centroids.tolist() == [1.0, 2.0, 3.0]
    assert r.labels.tolist() == [2, 0, 0, 1, 2]
    assert (r.inertia, r.n_iter) == (0.0, 0)
    z = kmeans1d(torch.tensor([0.0, -1.0, 2.0, 2.0]), 2, fixed_zero=True)  # 2 non-zero values for 2 free centres
    assert z.centroids.tolist() == [0.0, -1.0, 2.0]
    assert z.labels.tolist() == [0, 1, 2, 2]


def test_float32_and_float64_agree() -> None:
    x64 = _weights(seed=6)
    r64, r32 = kmeans1d(x64, 8), kmeans1d(x64.float(), 8)
    assert r64.centroids.dtype == torch.float64 and r32.centroids.dtype == torch.float32
    np.testing.assert_allclose(r32.centroids.numpy(), r64.centroids.numpy(), rtol=1e-5, atol=1e-7)
    assert (r32.labels != r64.labels).float().mean() < 1e-3


def test_tol_and_max_iter_stop_early() -> None:
    x = _weights(seed=7)
    full = kmeans1d(x, 8, init="forgy")
    assert full.n_iter > 2
    assert kmeans1d(x, 8, init="forgy", max_iter=2).n_iter == 2
    assert kmeans1d(x, 8, init="forgy", tol=1e9).n_iter == 1


@pytest.mark.slow
def test_big_input_in_chunks() -> None:
    x = torch.randn(5_000_000, generator=torch.Generator().manual_seed(0))
    r = kmeans1d(x, 16, max_iter=5, chunk_size=1 << 18)
    assert r.labels.shape == x.shape and r.labels.dtype == torch.int64
    counts = torch.bincount(r.labels, minlength=16)
    assert (counts > 0).all() and int(counts.sum()) == x.numel()
    assert torch.all(r.centroids[1:] > r.centroids[:-1])  # linear init on one hump keeps the order
    small = kmeans1d(x[:100_000], 16, max_iter=5)
    assert torch.equal(small.labels, kmeans1d(x[:100_000], 16, max_iter=5, chunk_size=999).labels)


def test_any_shape_in_labels_out() -> None:
    w = _weights(seed=8)[:2400].reshape(4, 6, 10, 10)
    r = kmeans1d(w, 4)
    assert r.labels.shape == w.shape
    assert torch.equal(r.labels.reshape(-1), kmeans1d(w.reshape(-1), 4).labels)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((torch.tensor([1, 2, 3]), 2), TypeError),
        ((torch.tensor([]), 2), ValueError),
        ((torch.tensor([1.0, float("nan")]), 1), ValueError),
        ((torch.randn(10), 0), ValueError),
    ],
)
def test_bad_inputs(args: tuple, error: type[Exception]) -> None:
    with pytest.raises(error):
        kmeans1d(*args)


def test_bad_init() -> None:
    x = torch.randn(50)
    with pytest.raises(ValueError, match="expected k=3"):
        kmeans1d(x, 3, init=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="unknown init"):
        kmeans1d(x, 3, init="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="forgy"):
        init_centroids(x, 51, "forgy")
