"""Gaussian paths ``x_t = alpha(t) x0 + sigma(t) eps`` with time running data -> noise.

Every diffusion or flow model in diffjax is one of these paths plus a regression target
and a loss weighting. A path knows its coefficients, their time derivatives, its log-SNR
``lambda(t) = log(alpha^2 / sigma^2)`` and the inverse ``t(lambda)``, the forward SDE
``dx = f(t) x dt + g(t) dW`` that has these marginals, and the prior at ``t_max``.

For any such path (Kingma et al. 2021, "Variational Diffusion Models", eq. 1-4):

    f(t)   = alpha'(t) / alpha(t)
    g(t)^2 = d sigma^2/dt - 2 f(t) sigma^2 = -sigma(t)^2 lambda'(t).

Paths (``get(name, **kwargs)``; keyword arguments default to the papers' values):

=================  ==========================================================  ============
name               alpha(t), sigma(t)                                          source
=================  ==========================================================  ============
``vp_linear``      log alpha = -t^2 (b1-b0)/4 - t b0/2, sigma = sqrt(1-alpha^2)  Song et al. 2021 (score SDE)
``ddpm``           alpha^2 = prod_{j<=i} (1 - beta_j) at t = i/T, beta linear  Ho et al. 2020
``vp_cosine``      alpha^2 = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2)      Nichol & Dhariwal 2021
``ve``             alpha = 1, sigma = s_min (s_max/s_min)^t                     Song & Ermon 2019
``subvp``          alpha as vp_linear, sigma = 1 - alpha^2                      Song et al. 2021
``edm``            alpha = 1, sigma = (s_min^(1/rho) + t (s_max^(1/rho) - s_min^(1/rho)))^rho   Karras et al. 2022
``rectified_flow`` alpha = 1 - t, sigma = t                                     Liu et al. 2022; Lipman et al. 2022
=================  ==========================================================  ============

The ``edm`` path puts Karras et al.'s rho-spaced noise levels on ``t``, so a uniform grid
in ``t`` on this path *is* the EDM sampling grid.

All methods take arrays of any shape and are elementwise; they are jit-, vmap- and
grad-friendly. ``t_min``/``t_max`` are the ends of the range on which the path is used by
default for training and sampling (where coefficients are finite and the conversions
between targets are well conditioned).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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
        return jnp.interp(t, tg, lg)

    def log_sigma(self, t):
        return 0.5 * _log1mexp(2.0 * self.log_alpha(t))

    def t_from_logsnr(self, logsnr):
        logsnr = jnp.asarray(logsnr)
        tg, lg = self._grids(logsnr)
        log_alpha = 0.5 * jax.nn.log_sigmoid(logsnr)
        # log alpha is decreasing in t; interp wants increasing abscissae.
        return jnp.interp(log_alpha, lg[::-1], tg[::-1])


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


PATHS: dict[str, type[Path]] = {
    "vp_linear": VPLinear,
    "ddpm": DDPM,
    "vp_cosine": VPCosine,
    "ve": VE,
    "subvp": SubVP,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
}


def get(name: str, **kwargs) -> Path:
    """Returns the path called ``name`` built with ``kwargs`` (the papers' defaults otherwise).

    Raises:
      ValueError: unknown name, or a keyword the path does not take.
    """
    if name not in PATHS:
        raise ValueError(f"Unknown path {name!r}; valid paths: {', '.join(sorted(PATHS))}")
    cls = PATHS[name]
    import inspect
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"Path {name!r} got unknown option(s) {unknown}; it takes: "
                         f"{', '.join(accepted) or 'no options'}")
    return cls(**kwargs)
