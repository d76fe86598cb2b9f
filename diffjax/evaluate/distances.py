"""Sample-based distances between two point sets: sliced Wasserstein and kernel MMD.

Both take ``[N, ...]`` arrays and flatten trailing axes, so they apply to 2-D toy sets and,
in pixel space, to images. They run in float64 numpy on the host: the sets a sweep
compares are small enough, and the reductions (sums of many kernel values, sorted
differences) are where float32 would bias the result.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["BANDWIDTH_SCALES", "median_bandwidth", "mmd", "sliced_wasserstein"]

# Largest kernel block held in memory at once (float64 entries, ~32 MB).
_BLOCK_ENTRIES = 1 << 22
# Pairwise distances for the median heuristic are taken on at most this many pooled points.
_MEDIAN_POINTS = 1000
# Multiples of the median distance used when no bandwidths are given: a sum of kernels
# over scales is still characteristic and is less sensitive to a poor median.
BANDWIDTH_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: expected [N, ...] with N >= 1, got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1:]} vs {b.shape[1:]}")
    return a, b


def _wasserstein_1d_pow(sa: np.ndarray, sb: np.ndarray, p: float) -> np.ndarray:
    """``W_p^p`` between empirical 1-D distributions, for each column.

    Args:
      sa: ``[N, K]`` sorted along axis 0 (K independent 1-D sets).
      sb: ``[M, K]`` sorted along axis 0.

    Returns:
      ``[K]``: ``int_0^1 |F_a^{-1}(u) - F_b^{-1}(u)|^p du``, exactly. The two quantile
      functions are step functions with jumps at ``i / N`` and ``j / M``; between
      consecutive jumps of the merged grid both are constant, so the integral is a finite
      weighted sum. Jumps are kept as integers in units of ``1 / (N M)`` so that coinciding
      jumps merge exactly.
    """
    n, m = sa.shape[0], sb.shape[0]
    if n == m:
        return np.mean(np.abs(sa - sb) ** p, axis=0)
    cuts = np.union1d(np.arange(1, n + 1, dtype=np.int64) * m,
                      np.arange(1, m + 1, dtype=np.int64) * n)
    starts = np.concatenate([[0], cuts[:-1]])
    widths = (cuts - starts) / float(n * m)
    # Interval (start, cut] lies inside quantile step floor(midpoint * N) of `a`.
    doubled_mid = starts + cuts
    ia = doubled_mid // (2 * m)
    ib = doubled_mid // (2 * n)
    return widths @ (np.abs(sa[ia] - sb[ib]) ** p)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, *, num_projections: int = 256,
                       seed: int = 0, p: float = 2) -> float:
    """Monte Carlo sliced p-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015).

    ``SW_p(a, b) = (E_theta W_p^p(<a, theta>, <b, theta>))^{1/p}`` with ``theta`` uniform on
    the unit sphere. The expectation is estimated with ``num_projections`` directions drawn
    from ``seed``; each 1-D ``W_p`` is exact (sorted quantiles, see `_wasserstein_1d_pow`),
    including for sets of different sizes.

    Args:
      a: ``[N, ...]``; trailing axes are flattened to ``D``.
      b: ``[M, ...]`` with the same trailing shape.
      num_projections: number of random directions.
      seed: seed of the directions, so two calls compare like with like.
      p: order, ``>= 1``.

    Returns:
      ``SW_p`` as a float (same units as the data, not raised to the power ``p``).
    """
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    if num_projections < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    a, b = _pair(a, b)
    theta = np.random.default_rng(seed).standard_normal((a.shape[1], num_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    sa = np.sort(a @ theta, axis=0)
    sb = np.sort(b @ theta, axis=0)
    return float(np.mean(_wasserstein_1d_pow(sa, sb, p)) ** (1.0 / p))


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[n, D], [m, D] -> [n, m]`` squared Euclidean distances, clipped at 0."""
    sq = (np.sum(x * x, axis=1)[:, None] + np.sum(y * y, axis=1)[None, :]
          - 2.0 * (x @ y.T))
    return np.maximum(sq, 0.0)


def _kernel_sum(x: np.ndarray, y: np.ndarray, inv_two_h2: np.ndarray) -> float:
    """``sum_{i, j} k(x_i, y_j)`` for the sum-of-RBF kernel, in row blocks."""
    block = max(1, _BLOCK_ENTRIES // max(1, y.shape[0]))
    total = 0.0
    for start in range(0, x.shape[0], block):
        sq = _squared_distances(x[start:start + block], y)
        for c in inv_two_h2:
            total += float(np.sum(np.exp(-c * sq)))
    return total


def median_bandwidth(a: np.ndarray, b: np.ndarray) -> float:
    """Median pairwise Euclidean distance of the pooled set (Gretton et al. 2012, §8).

    At most `_MEDIAN_POINTS` pooled points are used (a fixed-seed subset), which pins the
    median to well under a percent at a fraction of the ``O(N^2)`` cost.
    """
    a, b = _pair(a, b)
    pooled = np.concatenate([a, b])
    if pooled.shape[0] > _MEDIAN_POINTS:
        keep = np.random.default_rng(0).choice(pooled.shape[0], _MEDIAN_POINTS, replace=False)
        pooled = pooled[keep]
    sq = _squared_distances(pooled, pooled)
    upper = sq[np.triu_indices(pooled.shape[0], k=1)]
    median = float(np.sqrt(np.median(upper))) if upper.size else 0.0
    if not median > 0.0:
        raise ValueError("median pairwise distance is 0: the pooled set is (nearly) one point; "
                         "pass explicit bandwidths")
    return median


def mmd(a: np.ndarray, b: np.ndarray, *,
        bandwidths: Sequence[float] | None = None) -> float:
    """Unbiased squared maximum mean discrepancy (Gretton et al. 2012, eq. 3).

    ``MMD_u^2 = mean_{i != j} k(a_i, a_j) + mean_{i != j} k(b_i, b_j) - 2 mean_{i, j} k(a_i, b_j)``
    with the kernel ``k(x, y) = sum_h exp(-|x - y|^2 / (2 h^2))`` over ``bandwidths``.

    Args:
      a: ``[N, ...]``, ``N >= 2``; trailing axes are flattened.
      b: ``[M, ...]``, ``M >= 2``, same trailing shape.
      bandwidths: kernel length scales ``h``. Default: the median pairwise distance of the
        pooled data times ``(1/4, 1/2, 1, 2, 4)``.

    Returns:
      ``MMD_u^2`` as a float. It is unbiased, so it is negative about half the time when
      ``a`` and ``b`` come from one distribution; its noise scales as ``1 / N``.
    """
    a, b = _pair(a, b)
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"unbiased MMD needs at least 2 points per set, got {n} and {m}")
    if bandwidths is None:
        median = median_bandwidth(a, b)
        bandwidths = [median * s for s in BANDWIDTH_SCALES]
    h = np.asarray(bandwidths, dtype=np.float64).reshape(-1)
    if h.size == 0 or not np.all(h > 0):
        raise ValueError(f"bandwidths must be positive, got {list(h)}")
    inv_two_h2 = 1.0 / (2.0 * h * h)
    # k(x, x) = number of kernels: removing it leaves the off-diagonal (i != j) sums.
    k_aa = (_kernel_sum(a, a, inv_two_h2) - n * h.size) / (n * (n - 1))
    k_bb = (_kernel_sum(b, b, inv_two_h2) - m * h.size) / (m * (m - 1))
    k_ab = _kernel_sum(a, b, inv_two_h2) / (n * m)
    return float(k_aa + k_bb - 2.0 * k_ab)
