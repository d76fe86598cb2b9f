"""The path interface (:class:`Path`) and helpers shared by the path families."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


class Path:
    """Base class: subclasses define ``log_alpha`` and ``log_sigma`` (and may override more).

    Working in log-space keeps ``logsnr`` accurate where ``alpha`` or ``sigma`` is tiny.
    Derivatives default to forward-mode autodiff; subclasses give closed forms.
    """

    name: str = "path"
    t_min: float = 0.0
    t_max: float = 1.0
    #: True when alpha(t)^2 + sigma(t)^2 == 1 (variance preserving).
    variance_preserving: bool = False

    # -- coefficients -----------------------------------------------------------------
    def log_alpha(self, t: Array) -> Array:
        raise NotImplementedError

    def log_sigma(self, t: Array) -> Array:
        raise NotImplementedError

    def alpha(self, t: Array) -> Array:
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t: Array) -> Array:
        return jnp.exp(self.log_sigma(t))

    def d_alpha(self, t: Array) -> Array:
        """``d alpha / dt``."""
        return _elementwise_derivative(self.alpha, t)

    def d_sigma(self, t: Array) -> Array:
        """``d sigma / dt``."""
        return _elementwise_derivative(self.sigma, t)

    # -- log-SNR ---------------------------------------------------------------------
    def logsnr(self, t: Array) -> Array:
        """``lambda(t) = log(alpha^2 / sigma^2)``, strictly decreasing in ``t``."""
        return 2.0 * (self.log_alpha(t) - self.log_sigma(t))

    def d_logsnr(self, t: Array) -> Array:
        """``d lambda / dt = 2 (alpha'/alpha - sigma'/sigma)`` (negative)."""
        return 2.0 * (self.d_alpha(t) / self.alpha(t) - self.d_sigma(t) / self.sigma(t))

    def t_from_logsnr(self, logsnr: Array) -> Array:
        """Inverse of :meth:`logsnr`: the ``t`` at which ``lambda(t) = logsnr``."""
        raise NotImplementedError

    # -- forward SDE -----------------------------------------------------------------
    def drift_coef(self, t: Array) -> Array:
        """``f(t)`` with forward drift ``f(t) x``: ``alpha'(t) / alpha(t)``."""
        return self.d_alpha(t) / self.alpha(t)

    def diffusion_sq(self, t: Array) -> Array:
        """``g(t)^2 = 2 sigma sigma' - 2 f sigma^2``."""
        s = self.sigma(t)
        return 2.0 * s * self.d_sigma(t) - 2.0 * self.drift_coef(t) * s * s

    def diffusion(self, t: Array) -> Array:
        """``g(t)``, the forward SDE's diffusion coefficient."""
        return jnp.sqrt(jnp.maximum(self.diffusion_sq(t), 0.0))

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Forward SDE ``(drift, diffusion)`` at ``x: [B, ...]``, ``t: [B]``."""
        f = broadcast_to_x(self.drift_coef(t), x)
        return f * x, self.diffusion(t)

    # -- marginals and prior ---------------------------------------------------------
    def marginal(self, x0: Array, eps: Array, t: Array) -> Array:
        """``x_t = alpha(t) x0 + sigma(t) eps`` with ``t: [B]`` broadcast over ``x0: [B, ...]``."""
        a = broadcast_to_x(self.alpha(t), x0)
        s = broadcast_to_x(self.sigma(t), x0)
        return a * x0 + s * eps

    def prior_std(self) -> float:
        """Std of the prior ``N(0, (alpha^2 + sigma^2) I)`` at ``t_max``.

        That is the marginal's variance for data of unit variance per dimension: exactly
        ``N(0, I)`` on VP paths and rectified flow, ``~ sigma_max`` on VE-type paths.
        """
        with jax.enable_x64(True):  # a Python constant: compute it once, exactly
            t = jnp.asarray(self.t_max, jnp.float64)
            return float(jnp.sqrt(self.alpha(t) ** 2 + self.sigma(t) ** 2))

    def prior_sample(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        return self.prior_std() * jax.random.normal(key, shape, dtype)

    def prior_logp(self, x: Array) -> Array:
        """Log-density of the prior, summed over all but the leading axis: ``[B, ...] -> [B]``."""
        std = self.prior_std()
        d = math.prod(x.shape[1:])
        sq = jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1)
        return -0.5 * sq / std**2 - d * (math.log(std) + 0.5 * math.log(2 * math.pi))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({fields})"

    def _params(self) -> dict:
        return {}


def broadcast_to_x(c: Array, x: Array) -> Array:
    """Reshapes per-example coefficients ``c: [B]`` (or a scalar) to broadcast over ``x: [B, ...]``."""
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    return jnp.reshape(c, c.shape + (1,) * (x.ndim - c.ndim))


def _elementwise_derivative(fn: Callable[[Array], Array], t: Array) -> Array:
    t = jnp.asarray(t)
    _, dt = jax.jvp(fn, (t,), (jnp.ones_like(t),))
    return dt


def _log1mexp(x: Array) -> Array:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends (Maechler 2012)."""
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


# ---------------------------------------------------------------------------------------
