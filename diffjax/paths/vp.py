"""Variance-preserving paths: the score-SDE VP and sub-VP, discrete DDPM and the cosine path."""
from __future__ import annotations

import math
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.paths.base import Path, _log1mexp

Array = jax.Array



class VPLinear(Path):
    """Continuous-time DDPM / score-SDE VP path: ``beta(t) = b0 + t (b1 - b0)``."""

    name = "vp_linear"
    variance_preserving = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 t_max: float = 1.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"vp_linear needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.t_min, self.t_max = beta_min, beta_max, t_min, t_max

    def _params(self):
        return dict(beta_min=self.beta_min, beta_max=self.beta_max, t_min=self.t_min,
                    t_max=self.t_max)

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def log_sigma(self, t):
        return 0.5 * _log1mexp(2.0 * self.log_alpha(t))

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        # d/dt sqrt(1 - a^2) = -a a' / sigma = 0.5 beta a^2 / sigma
        return 0.5 * self.beta(t) * jnp.exp(2 * self.log_alpha(t) - self.log_sigma(t))

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion_sq(self, t):
        return self.beta(t)

    def _t_from_log_alpha(self, log_alpha: Array) -> Array:
        # (b1-b0)/4 t^2 + b0/2 t + log_alpha = 0, positive root, written without cancellation.
        c = -2.0 * log_alpha
        db = self.beta_max - self.beta_min
        return 2.0 * c / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * db * c))

    def t_from_logsnr(self, logsnr):
        # alpha^2 = sigmoid(lambda) on a VP path.
        return self._t_from_log_alpha(0.5 * jax.nn.log_sigmoid(logsnr))


class SubVP(VPLinear):
    """Sub-VP path of Song et al. 2021: VP's alpha with ``sigma = 1 - alpha^2``."""

    name = "subvp"
    variance_preserving = False

    def log_sigma(self, t):
        return _log1mexp(2.0 * self.log_alpha(t))

    def d_sigma(self, t):
        return self.beta(t) * jnp.exp(2.0 * self.log_alpha(t))

    def diffusion_sq(self, t):
        # Song et al. 2021, eq. (29): beta(t) (1 - exp(-2 int_0^t beta)).
        return self.beta(t) * -jnp.expm1(4.0 * self.log_alpha(t))

    def t_from_logsnr(self, logsnr):
        # lambda = log a - 2 log(1 - a) with a = alpha^2; smaller root of
        # e^lambda (1 - a)^2 = a, in terms of u = e^-lambda to avoid overflow:
        # a = 2 / (2 + u + sqrt(u^2 + 4u)).
        logsnr = jnp.asarray(logsnr)
        u = jnp.exp(-jnp.minimum(logsnr, 50.0))
        log_a_mid = math.log(2.0) - jnp.log(2.0 + u + jnp.sqrt(u * u + 4.0 * u))
        # For very negative lambda, a ~ e^lambda (1 - a)^2 ~ e^lambda.
        log_a = jnp.where(logsnr < -30.0, logsnr, log_a_mid)
        return self._t_from_log_alpha(0.5 * log_a)


def _interp(x, xp, fp, uniform: bool = False):
    """``jnp.interp(x, xp, fp)`` (constant beyond the ends) for strictly increasing ``xp``;
    ``uniform``: ``xp`` is ``arange(n + 1) / n`` (as ``x``'s dtype rounds it).

    The bracketing index is the count of grid points ``<= x``, as ``searchsorted(side=
    "right")`` gives it, found without a loop: inside a sampler's ``scan``, XLA:GPU's
    dynamic-slice annotator fails to compile a table read whose offset depends on
    ``jnp.interp``'s bisection ``while`` loop (``Failed to evaluate instruction (min.N) since
    it depends on ... parameters``, openxla/xla#49299; seen with JAX 0.11.2 on an H200). On a
    uniform grid it is ``floor(n x) + 1``, corrected by one comparison each way for rounding
    (the same index, so the same values bit for bit); otherwise one comparison per grid
    point (``method="compare_all"``), which on the ddpm path's 1001 points made a 1999-step
    Heun solve of the exact ring mixture on 512 points 7.5x slower than this (37 s against
    5 s on the 2-core CPU; the bare path lookups dominated).
    """
    i = _bracket(x, xp, uniform)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    f = f0 + (x - x0) / (x1 - x0) * (f1 - f0)
    return jnp.where(x < xp[0], fp[0], jnp.where(x > xp[-1], fp[-1], f))


def _bracket(x, xp, uniform: bool = False):
    """The upper end ``i`` (in ``1..n``) of the grid interval holding ``x``: the count of grid
    points ``<= x``, clipped (see :func:`_interp`)."""
    n = xp.shape[0] - 1
    if uniform:
        k = jnp.floor(jnp.clip(x * n, 0, n)).astype(jnp.int32) + 1
        k = k + ((k <= n) & (xp[jnp.minimum(k, n)] <= x))   # x*n rounded down past a point
        k = k - (xp[k - 1] > x)                              # ... or up past one
    else:
        k = jnp.searchsorted(xp, x, side="right", method="compare_all")
    return jnp.clip(k, 1, n)


class DDPM(Path):
    """Discrete DDPM (Ho et al. 2020): ``alpha_bar_i = prod_{j<=i} (1 - beta_j)`` at ``t = i/T``.

    ``beta_j`` is linear from ``beta_start`` to ``beta_end`` over ``T`` steps. Between grid
    points ``log alpha_bar`` is interpolated linearly in ``t`` (exact at ``t = i/T``,
    continuous and monotone), so continuous-time samplers run on this path too.
    """

    name = "ddpm"
    variance_preserving = True

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if num_timesteps < 1:
            raise ValueError(f"ddpm needs num_timesteps >= 1, got {num_timesteps}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"ddpm needs 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.num_timesteps, self.beta_start, self.beta_end = num_timesteps, beta_start, beta_end
        self.betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
        log_abar = np.concatenate([[0.0], np.cumsum(np.log1p(-self.betas))])
        self._log_alpha_grid = 0.5 * log_abar  # log alpha at t = i/T, i = 0..T
        self._t_grid = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        self.t_min = 1.0 / num_timesteps
        self.t_max = 1.0

    def _params(self):
        return dict(num_timesteps=self.num_timesteps, beta_start=self.beta_start,
                    beta_end=self.beta_end)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """``alpha_bar_i`` for ``i = 1..T`` (float64), as in the paper."""
        return np.exp(2.0 * self._log_alpha_grid[1:])

    def _grids(self, t):
        dtype = jnp.result_type(t, float)
        return jnp.asarray(self._t_grid, dtype), jnp.asarray(self._log_alpha_grid, dtype)

    def log_alpha(self, t):
        t = jnp.asarray(t)
        tg, lg = self._grids(t)
        return _interp(t, tg, lg, uniform=True)   # tg: i / T, i = 0..T

    def log_sigma(self, t):
        return 0.5 * _log1mexp(2.0 * self.log_alpha(t))

    def t_from_logsnr(self, logsnr):
        logsnr = jnp.asarray(logsnr)
        tg, lg = self._grids(logsnr)
        log_alpha = 0.5 * jax.nn.log_sigmoid(logsnr)
        # log alpha is decreasing in t; interp wants increasing abscissae.
        return _interp(log_alpha, lg[::-1], tg[::-1])


class VPCosine(Path):
    """Cosine schedule of Nichol & Dhariwal 2021 (improved DDPM), continuous in ``t``.

    ``alpha(1) = 0`` exactly, where log-SNR is ``-inf`` and eps/score outputs cannot be
    converted to ``x0``; ``t_max`` therefore defaults to ``1 - 1e-3`` (log-SNR ~ -12.9),
    playing the role of iDDPM's clipping of ``beta`` at 0.999.
    """

    name = "vp_cosine"
    variance_preserving = True

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 1.0 - 1e-3):
        self.s, self.t_min, self.t_max = s, t_min, t_max
        self._theta0 = 0.5 * math.pi * s / (1.0 + s)

    def _params(self):
        return dict(s=self.s, t_min=self.t_min, t_max=self.t_max)

    def _theta(self, t):
        return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

    def log_alpha(self, t):
        return jnp.log(jnp.cos(self._theta(t))) - math.log(math.cos(self._theta0))

    def log_sigma(self, t):
        return 0.5 * _log1mexp(2.0 * self.log_alpha(t))

    def d_alpha(self, t):
        return -0.5 * math.pi / (1.0 + self.s) * jnp.sin(self._theta(t)) / math.cos(self._theta0)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def t_from_logsnr(self, logsnr):
        cos_theta = jnp.exp(0.5 * jax.nn.log_sigmoid(logsnr)) * math.cos(self._theta0)
        return jnp.arccos(cos_theta) * 2.0 * (1.0 + self.s) / math.pi - self.s
