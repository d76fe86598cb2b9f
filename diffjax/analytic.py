"""Exact ground truth: a Gaussian mixture pushed through any Gaussian path.

If ``x0 ~ sum_k pi_k N(mu_k, S_k)`` then ``x_t = alpha x0 + sigma eps`` is again a mixture,
``p_t = sum_k pi_k N(alpha mu_k, C_k)`` with ``C_k = alpha^2 S_k + sigma^2 I``, so the
log-density, the score and the posterior mean (the optimal denoiser, Tweedie's formula)

    E[x0 | x_t] = sum_k r_k(x_t) (mu_k + alpha S_k C_k^{-1} (x_t - alpha mu_k))

are available in closed form at every ``t``. Each ``S_k = U_k diag(d_k) U_k^T`` is
diagonalised once, so ``C_k`` shares ``U_k`` at all times and no matrix is factorised inside
a sampler loop.

Samplers and likelihoods are judged against this mixture without any training: hand
:meth:`GaussianMixture.model_fn` to :func:`diffjax.sample` as if it were a network.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import targets as targets_lib
from diffjax.paths import Path

Array = jax.Array


class GaussianMixture:
    """A mixture of full-covariance Gaussians in ``D`` dimensions, optionally labelled.

    Args:
      weights: ``[K]`` mixture weights (normalised here).
      means: ``[K, D]``.
      covs: ``[K, D, D]`` symmetric positive definite.
      labels: optional ``[K]`` int class of each component (for conditional densities and
        classifier-free guidance); ``num_classes`` is then ``max(labels) + 1``.
      event_shape: shape of one sample (e.g. ``(8, 8, 1)`` for digits); defaults to ``(D,)``.
    """

    def __init__(self, weights, means, covs, labels=None, event_shape: Optional[tuple] = None):
        weights = np.asarray(weights, np.float64)
        means = np.asarray(means, np.float64)
        covs = np.asarray(covs, np.float64)
        if means.ndim != 2 or covs.shape != means.shape + (means.shape[1],) or weights.shape != means.shape[:1]:
            raise ValueError(f"GaussianMixture needs weights [K], means [K, D], covs [K, D, D]; got "
                             f"{weights.shape}, {means.shape}, {covs.shape}")
        if np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("GaussianMixture weights must be non-negative with a positive sum")
        covs = 0.5 * (covs + np.swapaxes(covs, -1, -2))
        evals, evecs = np.linalg.eigh(covs)
        if np.any(evals <= 0):
            raise ValueError("GaussianMixture covariances must be positive definite "
                             f"(smallest eigenvalue {evals.min():.3g})")
        self.weights = weights / weights.sum()
        self.means, self.covs = means, covs
        self._evals, self._evecs = evals, evecs
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self.num_classes = 0 if labels is None else int(self.labels.max()) + 1
        self.dim = means.shape[1]
        self.event_shape = tuple(event_shape) if event_shape is not None else (self.dim,)
        if math.prod(self.event_shape) != self.dim:
            raise ValueError(f"event_shape {self.event_shape} does not hold {self.dim} dimensions")

    @property
    def num_components(self) -> int:
        return self.weights.shape[0]

    # -- moments and sampling of p_0 -------------------------------------------------
    def mean(self) -> np.ndarray:
        """Exact mean of ``p_0``: ``[D]``."""
        return self.weights @ self.means

    def covariance(self) -> np.ndarray:
        """Exact covariance of ``p_0``: ``[D, D]``."""
        m = self.mean()
        second = np.einsum("k,kij->ij", self.weights, self.covs + np.einsum("ki,kj->kij", self.means, self.means))
        return second - np.outer(m, m)

    def sample(self, key: Array, n: int, label: Optional[int] = None) -> tuple[Array, Array]:
        """Exact samples of ``p_0`` (or of ``p_0(. | label)``): ``([n, *event_shape], [n] component)``."""
        k_comp, k_eps = jax.random.split(key)
        with np.errstate(divide="ignore"):  # other classes' components get log 0 = -inf
            logits = np.log(self._class_weights(label))
        comp = jax.random.categorical(k_comp, jnp.asarray(logits), shape=(n,))
        eps = jax.random.normal(k_eps, (n, self.dim), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
        # S_k^{1/2} eps = U diag(sqrt d) U^T eps: a symmetric root, as good as Cholesky here.
        evecs, root = jnp.asarray(self._evecs)[comp], jnp.sqrt(jnp.asarray(self._evals))[comp]
        z = jnp.einsum("nij,nj->ni", evecs, root * jnp.einsum("nji,nj->ni", evecs, eps))
        x = jnp.asarray(self.means)[comp] + z
        return x.reshape((n,) + self.event_shape).astype(eps.dtype), comp

    def _class_weights(self, label: Optional[int]) -> np.ndarray:
        if label is None:
            return self.weights
        if self.labels is None or not 0 <= label < self.num_classes:
            raise ValueError(f"label {label!r} is not a class of this mixture "
                             f"(num_classes={self.num_classes})")
        w = np.where(self.labels == label, self.weights, 0.0)
        return w / w.sum()

    # -- the noised mixture ----------------------------------------------------------
    def _posterior(self, path: Path, x: Array, t: Array, label: Optional[Array] = None):
        """Per-component pieces at ``(x_t, t)``: log-responsibilities and whitened residuals.

        x: ``[B, D]``; t: ``[B]``; label: optional ``[B]`` ints, where ``num_classes`` means
        "unconditional" (the null label of classifier-free guidance).
        """
        dtype = x.dtype
        a = path.alpha(t).astype(dtype)[:, None, None]            # [B, 1, 1]
        s = path.sigma(t).astype(dtype)[:, None, None]
        evals = jnp.asarray(self._evals, dtype)[None]              # [1, K, D]
        evecs = jnp.asarray(self._evecs, dtype)                    # [K, D, D]
        means = jnp.asarray(self.means, dtype)                     # [K, D]
        c = a * a * evals + s * s                                  # eigenvalues of C_k: [B, K, D]
        resid = x[:, None, :] - a * means[None]                    # [B, K, D]
        y = jnp.einsum("kji,bkj->bki", evecs, resid)               # U_k^T (x - a mu_k)
        maha = jnp.sum(y * y / c, axis=-1)                         # [B, K]
        logdet = jnp.sum(jnp.log(c), axis=-1)
        log_w = jnp.log(jnp.asarray(self.weights, dtype))[None]
        if label is not None:
            if self.labels is None:
                raise ValueError("this mixture has no component labels; pass label=None")
            match = (jnp.asarray(self.labels)[None] == label[:, None]) | (label[:, None] == self.num_classes)
            log_w = jnp.where(match, log_w, -jnp.inf)
        log_joint = log_w - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        return log_joint, y, c, a, evecs, evals

    def _flat(self, x: Array) -> Array:
        return jnp.reshape(x, (x.shape[0], self.dim))

    def log_prob_t(self, path: Path, x: Array, t: Array, label: Optional[Array] = None) -> Array:
        """``log p_t(x)`` (or ``log p_t(x | label)``): x ``[B, *event_shape]``, t ``[B]`` -> ``[B]``."""
        log_joint, *_ = self._posterior(path, self._flat(x), jnp.broadcast_to(t, x.shape[:1]), label)
        return jax.nn.logsumexp(log_joint, axis=-1)

    def log_prob(self, x: Array) -> Array:
        """``log p_0(x)`` of the clean mixture: ``[B, *event_shape] -> [B]``."""
        x = self._flat(x)
        return self.log_prob_t(_ZeroNoise(), x, jnp.zeros(x.shape[:1], x.dtype))

    def x0_hat(self, path: Path, x: Array, t: Array, label: Optional[Array] = None) -> Array:
        """Posterior mean ``E[x0 | x_t = x]``: the exact denoiser. Shapes as :meth:`log_prob_t`."""
        xf = self._flat(x)
        t = jnp.broadcast_to(t, x.shape[:1])
        log_joint, y, c, a, evecs, evals = self._posterior(path, xf, t, label)
        resp = jax.nn.softmax(log_joint, axis=-1)                  # [B, K]
        gain = a * evals / c                                       # alpha S C^{-1} in the eigenbasis
        corr = jnp.einsum("kij,bkj->bki", evecs, gain * y)
        x0 = jnp.einsum("bk,bki->bi", resp, jnp.asarray(self.means, xf.dtype)[None] + corr)
        return x0.reshape(x.shape)

    def score(self, path: Path, x: Array, t: Array, label: Optional[Array] = None) -> Array:
        """``grad_x log p_t(x)``, exact. Shapes as :meth:`x0_hat`."""
        xf = self._flat(x)
        t = jnp.broadcast_to(t, x.shape[:1])
        log_joint, y, c, *_ = self._posterior(path, xf, t, label)
        evecs = jnp.asarray(self._evecs, xf.dtype)
        resp = jax.nn.softmax(log_joint, axis=-1)
        comp_scores = -jnp.einsum("kij,bkj->bki", evecs, y / c)   # -C_k^{-1} (x - alpha mu_k)
        return jnp.einsum("bk,bki->bi", resp, comp_scores).reshape(x.shape)

    def model_fn(self, path: Path, target: str = "eps") -> Callable[[Array, Array], Array]:
        """The exact model ``f(x, t)`` in ``target`` parameterisation, for :func:`diffjax.sample`."""
        conditional = self.conditional_model_fn(path, target)
        return lambda x, t: conditional(x, t, None)

    def conditional_model_fn(self, path: Path, target: str = "eps"):
        """The exact ``f(x, t, cond)`` for the condition dict ``cond`` (:mod:`diffjax.conditions`):
        ``cond["label"]`` selects the component(s); the null label ``num_classes``, a missing
        label or ``cond=None`` is the whole mixture."""
        targets_lib.check_target(target)

        def fn(x, t, cond=None):
            label = (cond or {}).get("label")
            t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
            x0 = self.x0_hat(path, x, t, label)
            s = path.sigma(t).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
            # Tweedie: E[eps | x_t] = -sigma grad log p_t. Taking eps from the exact score
            # keeps x - alpha x0 from cancelling where sigma is tiny.
            eps = -s * self.score(path, x, t, label)
            return targets_lib.from_x0_eps(target, path, x0, eps, t)

        return fn

    # -- constructors ----------------------------------------------------------------
    @classmethod
    def ring(cls, num_components: int = 8, radius: float = math.sqrt(2.0),
             std: float = 0.1) -> "GaussianMixture":
        """Equal-weight isotropic Gaussians on a circle in 2-D, component ``k`` labelled ``k``.

        The defaults are the distribution of the bundled ``ring`` toy dataset (unit variance
        per coordinate up to the components' own spread), so a model trained on that data can
        be compared with the exact one.
        """
        angles = 2 * np.pi * np.arange(num_components) / num_components
        means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
        covs = np.broadcast_to(std**2 * np.eye(2), (num_components, 2, 2))
        return cls(np.ones(num_components), means, covs, labels=np.arange(num_components))

    @classmethod
    def fit(cls, x: np.ndarray, labels: Optional[np.ndarray] = None, *, components_per_class: int = 1,
            reg_covar: float = 1e-2, seed: int = 0, event_shape: Optional[tuple] = None) -> "GaussianMixture":
        """Fits a full-covariance mixture (EM, scikit-learn) to ``x: [N, ...]``, per class if labelled."""
        from sklearn.mixture import GaussianMixture as SkGMM
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        groups = [(None, x)] if labels is None else [(c, x[labels == c]) for c in np.unique(labels)]
        weights, means, covs, comp_labels = [], [], [], []
        for c, xc in groups:
            gmm = SkGMM(components_per_class, covariance_type="full", reg_covar=reg_covar,
                        random_state=seed).fit(xc)
            weights.append(gmm.weights_ * len(xc) / len(x))
            means.append(gmm.means_)
            covs.append(gmm.covariances_)
            comp_labels.append(np.full(components_per_class, -1 if c is None else c))
        labels_out = None if labels is None else np.concatenate(comp_labels)
        return cls(np.concatenate(weights), np.concatenate(means), np.concatenate(covs), labels_out,
                   event_shape=event_shape)

    @classmethod
    def digits(cls, components_per_class: int = 2, reg_covar: float = 1e-2, seed: int = 0,
               data_dir: Optional[str] = None) -> "GaussianMixture":
        """A 64-d mixture fitted to the bundled 8x8 digits (train split, pixels in [-1, 1]).

        ``components_per_class`` full-covariance components per digit class, labelled by
        class; ``reg_covar`` is added to every covariance's diagonal (the border pixels of
        the digits are nearly constant, and the exact denoiser needs ``S_k`` invertible).
        """
        from diffjax import data
        x, y = data.load_arrays("digits", split="train", data_dir=data_dir)
        return cls.fit(x, y, components_per_class=components_per_class, reg_covar=reg_covar,
                       seed=seed, event_shape=tuple(x.shape[1:]))


class _ZeroNoise(Path):
    """``alpha = 1, sigma = 0``: evaluates the clean mixture through the noised formulas."""

    def alpha(self, t):
        return jnp.ones_like(t)

    def sigma(self, t):
        return jnp.zeros_like(t)
