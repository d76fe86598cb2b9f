"""Consistency distillation and consistency training (Song et al. 2023), with the improved
training recipe of Song & Dhariwal 2023 (iCT).

The model is the consistency function ``f_theta(x, t)`` of :class:`diffjax.distill.nets.
Consistency` (boundary condition ``f(x, 0) = x`` built in), read as an ``x0`` model. On the
grid ``t_i = i / (N - 1)`` (on the ``edm`` path: Karras et al.'s rho-spaced noise levels) a
step pairs ``x_{i+1} = alpha x0 + sigma eps`` with

* distillation: ``x_i`` = one teacher DDIM step from ``x_{i+1}`` (the ODE solver of CD);
* training: ``x_i = alpha_i x0 + sigma_i eps`` with the same ``eps`` (the estimator of CT),

and minimises ``lambda_i d(f_theta(x_{i+1}, t_{i+1}), f_{theta^-}(x_i, t_i))`` with
``theta^- = stop_grad(theta)`` (iCT: no EMA teacher), the pseudo-Huber metric
``d(a, b) = sqrt(|a - b|^2 + c^2) - c``, ``lambda_i = 1 / (s_{i+1} - s_i)``, the step ``i``
drawn from iCT's lognormal proposal over the noise levels ``s = sigma / alpha`` and ``N`` from
the discretisation curriculum ``N(k) = min(s0 2^floor(k / K'), s1) + 1``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax.scipy.special import erf

from diffjax.distill import nets, ode, settings
from diffjax.distill import teacher as teacher_lib
from diffjax.paths import Path
from diffjax.training import setup as setup_lib
from diffjax.training import tasks
from diffjax.training.setup import Setup

Array = jax.Array


def num_points(k: Array, total_steps: int, s0: int, s1: int) -> Array:
    """iCT's curriculum: ``N(k) = min(s0 2^floor(k / K'), s1) + 1``,
    ``K' = floor(K / (log2 floor(s1 / s0) + 1))``; int32 like ``k``."""
    k_prime = max(1, math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)))
    doublings = jnp.minimum(k // k_prime, 30)
    return jnp.minimum(s0 * 2 ** doublings, s1) + 1


def noise_level(path: Path, t: Array) -> Array:
    """The VE noise level ``s = sigma / alpha`` of ``t``."""
    return jnp.exp(-0.5 * path.logsnr(t))


def draw_index(key: Array, path: Path, n: Array, size: int, max_points: int, p_mean: float,
               p_std: float) -> Array:
    """``i`` in ``0..n-2`` with iCT's probability of the interval ``[s_i, s_{i+1}]`` under
    ``log s ~ N(p_mean, p_std^2)``. ``n``: int scalar (traced); returns int32 ``[size]``."""
    i = jnp.arange(max_points - 1)
    s_lo = noise_level(path, i / (n - 1.0))
    s_hi = noise_level(path, (i + 1) / (n - 1.0))
    cdf = lambda s: erf((jnp.log(s) - p_mean) / (math.sqrt(2.0) * p_std))  # noqa: E731
    p = jnp.where(i < n - 1, cdf(s_hi) - cdf(s_lo), 0.0)
    return jax.random.categorical(key, jnp.log(jnp.maximum(p, 1e-30)) +
                                  jnp.where(i < n - 1, 0.0, -jnp.inf), shape=(size,))


def pseudo_huber(a: Array, b: Array, c: float) -> Array:
    """``sqrt(|a - b|^2 + c^2) - c`` per row: ``[B, ...] -> [B]``."""
    d2 = jnp.sum(jnp.reshape(a - b, (a.shape[0], -1)) ** 2, axis=-1)
    return jnp.sqrt(d2 + c * c) - c


@dataclasses.dataclass(frozen=True)
class ConsistencyLoss:
    """``teacher`` None: consistency training; else consistency distillation."""

    setup: Setup
    teacher: Optional[teacher_lib.Teacher]
    s0: int
    s1: int
    total_steps: int
    p_mean: float
    p_std: float
    huber_c: float
    reads_step = True

    def loss(self, params, batch, key, frozen, rows=None):
        path, den = self.setup.denoiser.path, self.setup.denoiser
        x0 = batch["x"]
        cond = tasks.condition(self.setup, batch)
        total = x0.shape[0] if rows is None else rows.total
        take = (lambda a: a) if rows is None else rows.take
        n = num_points(batch["step"][0], self.total_steps, self.s0, self.s1)
        k_i, k_eps, k_drop = jax.random.split(key, 3)
        i = take(draw_index(k_i, path, n, total, self.s1 + 1, self.p_mean, self.p_std))
        eps = take(jax.random.normal(k_eps, (total,) + x0.shape[1:], x0.dtype))
        t_lo, t_hi = (i / (n - 1.0)).astype(x0.dtype), ((i + 1) / (n - 1.0)).astype(x0.dtype)
        x_hi = path.marginal(x0, eps, t_hi)
        if self.teacher is None:
            x_lo = path.marginal(x0, eps, t_lo)
        else:
            tp = teacher_lib.frozen_params(frozen)
            x_lo = ode.ddim_step(path, x_hi, self.teacher.x0_hat(tp, x_hi, t_hi, cond), t_hi, t_lo)
        rngs = {"dropout": k_drop}
        f_hi = den.apply({"params": params}, x_hi, t_hi, cond, train=True, rngs=rngs)
        f_lo = jax.lax.stop_gradient(
            den.apply({"params": params}, x_lo, t_lo, cond, train=True, rngs=rngs))
        weight = 1.0 / (noise_level(path, t_hi) - noise_level(path, t_lo))
        c = self.huber_c if self.huber_c >= 0 else 0.00054 * math.sqrt(math.prod(x0.shape[1:]))
        return jnp.mean(weight * pseudo_huber(f_hi, f_lo, c)), {"num_points": n.astype(jnp.float32)}


def check(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError for a config the consistency tasks cannot train."""
    s0, s1 = int(settings.get(config, "s0")), int(settings.get(config, "s1"))
    if not 1 <= s0 <= s1:
        raise ValueError(f"config.distill.s0={s0}, s1={s1}: need 1 <= s0 <= s1")
    if config.model.target != "x0" or config.model.preconditioning != "none":
        raise ValueError(f"config.task={config.task!r} reads the network as the consistency "
                         "function (an x0 model with its own boundary scalings): set "
                         "model.target='x0' and model.preconditioning='none' (got "
                         f"{config.model.target!r}, {config.model.preconditioning!r})")


def _build(setup: Setup, references, distill: bool) -> ConsistencyLoss:
    config = setup.config
    check(config)
    teacher = teacher_lib.teacher_of(setup, references) if distill else None
    return ConsistencyLoss(setup, teacher, int(settings.get(config, "s0")),
                           int(settings.get(config, "s1")), int(config.training.num_steps),
                           float(settings.get(config, "p_mean")),
                           float(settings.get(config, "p_std")),
                           float(settings.get(config, "huber_c")))


for _name, _distill in (("consistency_distillation", True), ("consistency_training", False)):
    setup_lib.NETWORKS[_name] = nets.consistency
    tasks.register(_name, tasks.TaskSpec(
        lambda setup, refs, d=_distill: _build(setup, refs, d),
        teacher_lib.teacher_key if _distill else (lambda config: {})))
