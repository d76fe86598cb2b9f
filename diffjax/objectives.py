"""One denoising objective for every path, target, weighting and time distribution.

    L = E_{t ~ p(t), x0, eps} [ w(t) * mean |f(x_t, t) - y(x0, eps, t)|^2 ],
    x_t = alpha(t) x0 + sigma(t) eps,  y = the target (diffjax.targets).

The weighting is chosen independently of the output parameterisation (Kingma & Gao 2023,
"Understanding Diffusion Objectives as the ELBO..."; Salimans & Ho 2022): every weighting
except ``mse`` is defined on the eps scale, ``w_eps(t) |eps_hat - eps|^2``, and turned into
the target's scale with :func:`diffjax.targets.eps_mse_factor`. So an ``eps``-weighted model
trained on ``v`` or ``velocity`` minimises the same objective as DDPM.

Weightings (``w_eps`` unless noted; ``lambda`` = log-SNR, ``s = exp(-lambda/2) = sigma/alpha``):

===========  ================================================  =================================
name         weight                                            source
===========  ================================================  =================================
``mse``      1 on the target's own scale                       per target: Ho 2020 (eps),
                                                               Lipman 2022 (velocity), ...
``eps``      1 (the same objective whatever the output)        Ho et al. 2020 (L_simple)
``elbo``     ``-lambda'(t) / 2 / p(t)``: the continuous-time   Kingma et al. 2021 (VDM eq. 17);
             ELBO's diffusion term in nats per dimension,     Song et al. 2021 (g^2 likelihood
             importance-weighted by the time density p(t)      weighting) -- the same quantity
``min_snr``  ``min(SNR, gamma) / SNR``                         Hang et al. 2023
``edm``      ``(s^2 + sd^2) / sd^2`` = EDM's                   Karras et al. 2022
             ``lambda(s) = (s^2 + sd^2)/(s sd)^2`` on x0
===========  ================================================  =================================

Time sampling: ``uniform`` on ``[t_min, t_max]``; ``stratified`` (uniform, one draw per
batch stratum: the low-variance estimator of VDM); ``discrete`` (``t = i/T``, ``i`` uniform
in ``1..T``, DDPM); ``lognormal`` (``log s ~ N(p_mean, p_std^2)``, EDM); ``logit_normal``
(``t = sigmoid(N(m, s^2))``, Esser et al. 2024, SD3).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from diffjax import conditions
from diffjax import targets as targets_lib
from diffjax.paths import Path

Array = jax.Array

WEIGHTINGS = ("mse", "eps", "elbo", "min_snr", "edm")
TIME_SAMPLINGS = ("uniform", "stratified", "discrete", "lognormal", "logit_normal")


def _check(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; valid choices: {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class Objective:
    """The loss of the one recipe. Call it as ``objective(model_fn, x0, key, cond)``.

    ``model_fn(x_t, t, cond)`` returns the prediction in ``target`` space. ``cond`` is the
    condition dict (:mod:`diffjax.conditions`, ``{}`` or None for none); with probability
    ``label_dropout`` an example's conditions are replaced by their null values (classifier-free
    guidance training, Ho & Salimans 2022), ``nulls`` (default: the null label ``num_classes``).
    """

    path: Path
    target: str
    weighting: str = "mse"
    time_sampling: str = "uniform"
    t_min: Optional[float] = None      # None: the path's t_min (resolved at construction)
    t_max: Optional[float] = None      # None: the path's t_max
    num_timesteps: Optional[int] = None  # None: the path's (discrete paths), else 1000
    min_snr_gamma: float = 5.0
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    logit_mean: float = 0.0
    logit_std: float = 1.0
    label_dropout: float = 0.0
    num_classes: int = 0
    nulls: Optional[conditions.Nulls] = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        # t_min / t_max left None mean the path's own range; resolved here so that they
        # always hold the range the times are drawn from.
        if self.t_min is None:
            object.__setattr__(self, "t_min", float(self.path.t_min))
        if self.t_max is None:
            object.__setattr__(self, "t_max", float(self.path.t_max))
        if self.num_timesteps is None:
            steps = int(getattr(self.path, "num_timesteps", 1000))
            object.__setattr__(self, "num_timesteps", steps)
        targets_lib.check_target(self.target)
        _check("weighting", self.weighting, WEIGHTINGS)
        _check("time_sampling", self.time_sampling, TIME_SAMPLINGS)
        if not self.t_min < self.t_max:
            raise ValueError(f"Objective needs t_min < t_max, got {self.t_min}, {self.t_max}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.time_sampling == "discrete" and self.num_timesteps < 1:
            raise ValueError("discrete time sampling needs num_timesteps >= 1, got "
                             f"{self.num_timesteps}")

    # -- time ------------------------------------------------------------------------
    def sample_t(self, key: Array, n: int) -> Array:
        """Draws ``n`` training times, ``[n]``, in ``[t_min, t_max]``."""
        lo, hi = self.t_min, self.t_max
        if self.time_sampling == "uniform":
            return jax.random.uniform(key, (n,), minval=lo, maxval=hi)
        if self.time_sampling == "stratified":
            u = (jnp.arange(n) + jax.random.uniform(key, ())) / n
            return lo + (hi - lo) * u
        if self.time_sampling == "discrete":
            i = jax.random.randint(key, (n,), 1, self.num_timesteps + 1)
            return jnp.clip(i / self.num_timesteps, lo, hi)
        if self.time_sampling == "lognormal":
            log_s = self.p_mean + self.p_std * jax.random.normal(key, (n,))
            return jnp.clip(self.path.t_from_logsnr(-2.0 * log_s), lo, hi)
        z = self.logit_mean + self.logit_std * jax.random.normal(key, (n,))
        return jnp.clip(jax.nn.sigmoid(z), lo, hi)

    def t_density(self, t: Array) -> Array:
        """The density ``p(t)`` of :meth:`sample_t` (ignoring clipping at the ends)."""
        if self.time_sampling in ("uniform", "stratified", "discrete"):
            return jnp.full_like(t, 1.0 / (self.t_max - self.t_min))
        if self.time_sampling == "lognormal":
            log_s = -0.5 * self.path.logsnr(t)
            jac = 0.5 * jnp.abs(self.path.d_logsnr(t))
            return _normal_pdf(log_s, self.p_mean, self.p_std) * jac
        logit = jnp.log(t) - jnp.log1p(-t)
        return _normal_pdf(logit, self.logit_mean, self.logit_std) / (t * (1.0 - t))

    # -- weighting -------------------------------------------------------------------
    def eps_weight(self, t: Array) -> Array:
        """``w_eps(t)``: the weight on ``|eps_hat - eps|^2`` (``[B]``); not used by ``mse``."""
        if self.weighting == "eps":
            return jnp.ones_like(t)
        if self.weighting == "elbo":
            return -0.5 * self.path.d_logsnr(t) / self.t_density(t)
        logsnr = self.path.logsnr(t)
        if self.weighting == "min_snr":
            return jnp.minimum(1.0, self.min_snr_gamma * jnp.exp(-logsnr))
        if self.weighting == "edm":
            return 1.0 + jnp.exp(-logsnr) / self.sigma_data**2
        raise ValueError(f"weighting {self.weighting!r} has no eps-scale weight")

    def loss_weight(self, t: Array) -> Array:
        """The weight on ``mean |f - y|^2`` in the target's own space, ``[B]``."""
        if self.weighting == "mse":
            return jnp.ones_like(t)
        return self.eps_weight(t) / targets_lib.eps_mse_factor(self.target, self.path, t)

    # -- the loss --------------------------------------------------------------------
    @property
    def null_values(self) -> conditions.Nulls:
        return self.nulls or conditions.Nulls(num_classes=self.num_classes)

    def draw(self, key: Array, x0: Array, cond: Optional[Mapping[str, Array]] = None,
             batch: Optional[int] = None):
        """The random draws of one step for the whole batch: ``(t [B], eps [B, ...], masks)``.

        ``masks`` (:func:`diffjax.conditions.drop_masks`) say which examples' conditions are
        dropped; ``batch`` overrides ``x0.shape[0]`` (``x0`` is then only a shape stand-in).
        """
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        n = x0.shape[0] if batch is None else batch
        t = self.sample_t(k_t, n).astype(x0.dtype)
        eps = jax.random.normal(k_eps, (n, *x0.shape[1:]), x0.dtype)
        masks = {}
        if cond and self.label_dropout > 0:
            masks = conditions.drop_masks(tuple(cond), k_drop, n, self.label_dropout)
        return t, eps, masks

    def per_example(self, model_fn: Callable, x0: Array, t: Array, eps: Array,
                    cond: Optional[Mapping[str, Array]] = None) -> Array:
        """Weighted squared error per example, ``[B]`` (mean over the non-batch axes)."""
        x_t = self.path.marginal(x0, eps, t)
        y = targets_lib.from_x0_eps(self.target, self.path, x0, eps, t)
        out = model_fn(x_t, t, dict(cond or {}))
        sq = jnp.mean(jnp.reshape((out - y) ** 2, (x0.shape[0], -1)), axis=-1)
        return self.loss_weight(t) * sq

    def __call__(self, model_fn: Callable, x0: Array, key: Array,
                 cond: Optional[Mapping[str, Array]] = None) -> tuple[Array, dict]:
        """Mean loss over the batch and a dict of metrics."""
        t, eps, masks = self.draw(key, x0, cond)
        cond = self.null_values.apply_masks(dict(cond or {}), masks)
        losses = self.per_example(model_fn, x0, t, eps, cond)
        return jnp.mean(losses), {"loss": jnp.mean(losses)}


def _normal_pdf(x: Array, mean: float, std: float) -> Array:
    return jnp.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2.0 * math.pi))


def from_config(path: Path, target: str, loss_cfg, *, num_classes: int = 0,
                sigma_data: float = 0.5,
                nulls: Optional[conditions.Nulls] = None) -> Objective:
    """Builds the :class:`Objective` from ``config.loss`` (keys named as the fields).

    ``sigma_data`` is ``config.model.sigma_data``: one data scale for the preconditioning
    and the ``edm`` weighting, so it is not a ``config.loss`` key. ``nulls``: the null
    value of each condition (default: the null label ``num_classes``).
    """
    fields = {f.name for f in dataclasses.fields(Objective)} - {
        "path", "target", "num_classes", "nulls", "sigma_data"}
    kwargs = {}
    for key, value in dict(loss_cfg).items():
        if key not in fields:
            if key == "sigma_data":  # configs stored before it became one key
                if float(value) == float(sigma_data):
                    continue
                raise ValueError(f"config.loss.sigma_data={value} differs from "
                                 f"config.model.sigma_data={sigma_data}: the data scale is one "
                                 "key, config.model.sigma_data (preconditioning and weighting)")
            raise ValueError(f"Unknown key config.loss.{key}; valid keys: "
                             f"{', '.join(sorted(fields))}")
        kwargs[key] = value
    return Objective(path=path, target=target, num_classes=num_classes, sigma_data=sigma_data,
                     nulls=nulls, **kwargs)


__all__ = ["Objective", "WEIGHTINGS", "TIME_SAMPLINGS", "from_config"]
