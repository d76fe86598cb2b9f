"""Fréchet distance between Gaussians fitted to two sets of feature vectors.

The squared 2-Wasserstein distance between ``N(mu1, C1)`` and ``N(mu2, C2)`` is
(Dowson & Landau 1982, "The Fréchet distance between multivariate normal distributions")

    |mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1^{1/2} C2 C1^{1/2})^{1/2}),

which Heusel et al. 2017 ("GANs trained by a two time-scale update rule ...") apply to
Inception features as FID. Everything here runs in float64 numpy: the result is a small
difference of large traces, and float32 loses it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["frechet_distance", "frechet_from_samples", "gaussian_stats"]


def _symmetric_sqrt(cov: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric PSD matrix, ``[D, D] -> [D, D]``.

    Eigenvalues below zero are rounding noise of a PSD matrix and are clipped, so that a
    rank-deficient covariance (fewer samples than dimensions) still has a real root.
    """
    eigvals, eigvecs = np.linalg.eigh(cov)
    root = np.sqrt(np.clip(eigvals, 0.0, None))
    return (eigvecs * root) @ eigvecs.T


def _check_stats(mu: np.ndarray, cov: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if mu.ndim != 1 or cov.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: expected mu [D] and cov [D, D], got {mu.shape} and {cov.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(cov))):
        raise ValueError(f"{name}: mean or covariance is not finite")
    return mu, 0.5 * (cov + cov.T)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray,
                     mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between two Gaussians.

    Args:
      mu1, mu2: means, ``[D]``.
      cov1, cov2: covariances, ``[D, D]``, symmetric positive semi-definite.

    Returns:
      The distance as a Python float, ``>= 0``. This is the quantity reported as FID.

    ``tr((C1 C2)^{1/2})`` is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix ``C1^{1/2} C2 C1^{1/2}``, which has the same spectrum as ``C1 C2``.
    Unlike a general ``sqrtm(C1 @ C2)`` this never produces complex parts or needs an
    ``eps * I`` regulariser for singular covariances.
    """
    mu1, cov1 = _check_stats(mu1, cov1, "first Gaussian")
    mu2, cov2 = _check_stats(mu2, cov2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimension mismatch: {mu1.shape[0]} vs {mu2.shape[0]}")
    root1 = _symmetric_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    eigvals = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    trace_sqrt = np.sum(np.sqrt(np.clip(eigvals, 0.0, None)))
    diff = mu1 - mu2
    value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt
    # Negative only by rounding when the two Gaussians coincide.
    return float(max(value, 0.0))


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a set of vectors.

    Args:
      x: ``[N, ...]`` with ``N >= 2``; trailing axes are flattened to ``D`` features.

    Returns:
      ``(mu [D], cov [D, D])`` in float64.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"need [N, ...] with N >= 2 samples, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    mu = x.mean(axis=0)
    centred = x - mu
    cov = centred.T @ centred / (x.shape[0] - 1)
    return mu, cov


def frechet_from_samples(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to ``a: [N, ...]`` and ``b: [M, ...]``."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
