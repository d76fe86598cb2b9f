"""Paths with alpha = 1 (VE / SMLD and EDM) and the rectified-flow path."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.paths.base import Path

Array = jax.Array


class VE(Path):
    """Variance-exploding (SMLD / NCSN) path: ``alpha = 1``, geometric ``sigma`` (Song & Ermon 2019)."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"ve needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._log_ratio = math.log(sigma_max / sigma_min)

    def _params(self):
        return dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.result_type(t, float)))

    def log_sigma(self, t):
        return math.log(self.sigma_min) + t * self._log_ratio

    def d_alpha(self, t):
        return jnp.zeros_like(self.log_alpha(t))

    def d_sigma(self, t):
        return self.sigma(t) * self._log_ratio

    def drift_coef(self, t):
        return jnp.zeros_like(self.log_alpha(t))

    def diffusion_sq(self, t):
        return 2.0 * self._log_ratio * self.sigma(t) ** 2

    def t_from_logsnr(self, logsnr):
        return (-0.5 * logsnr - math.log(self.sigma_min)) / self._log_ratio


class EDM(Path):
    """EDM noise levels (Karras et al. 2022) on ``t``: ``alpha = 1``, rho-spaced ``sigma``."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"edm needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if rho <= 0:
            raise ValueError(f"edm needs rho > 0, got {rho}")
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self._a = sigma_min ** (1.0 / rho)
        self._b = sigma_max ** (1.0 / rho) - self._a

    def _params(self):
        return dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho)

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.result_type(t, float)))

    def log_sigma(self, t):
        return self.rho * jnp.log(self._a + t * self._b)

    def d_alpha(self, t):
        return jnp.zeros_like(self.log_alpha(t))

    def d_sigma(self, t):
        return self.rho * self._b * (self._a + t * self._b) ** (self.rho - 1.0)

    def drift_coef(self, t):
        return jnp.zeros_like(self.log_alpha(t))

    def t_from_logsnr(self, logsnr):
        sigma_root = jnp.exp(-0.5 * logsnr / self.rho)
        return (sigma_root - self._a) / self._b


class RectifiedFlow(Path):
    """Linear interpolation ``alpha = 1 - t``, ``sigma = t`` (Liu et al. 2022; Lipman et al. 2022).

    Velocity is ``eps - x0``. At ``t = 1`` ``alpha = 0``: eps/score outputs cannot be turned
    into ``x0`` there, so samplers that need that conversion start at ``t_max < 1``.
    """

    name = "rectified_flow"

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0):
        self.t_min, self.t_max = t_min, t_max

    def _params(self):
        return dict(t_min=self.t_min, t_max=self.t_max)

    def log_alpha(self, t):
        return jnp.log1p(-t)

    def log_sigma(self, t):
        return jnp.log(t)

    def alpha(self, t):
        return 1.0 - jnp.asarray(t)

    def sigma(self, t):
        return jnp.asarray(t)

    def d_alpha(self, t):
        return -jnp.ones_like(jnp.asarray(t, jnp.result_type(t, float)))

    def d_sigma(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.result_type(t, float)))

    def t_from_logsnr(self, logsnr):
        return jax.nn.sigmoid(-0.5 * jnp.asarray(logsnr))
