"""Few-step samplers of the distilled models; each returns ``(samples, nfe)`` with the exact
number of network evaluations per sample.

Model functions are ``model_fn(params, x, t, cond)`` (``Denoiser.fn``; parameters traced).

* :func:`ddim` -- ``n`` DDIM steps on the grid ``t_i = t_max i / n`` (progressive-distillation
  students, whose grid this is), ``nfe = n``.
* :func:`consistency_multistep` -- Song et al. 2023, Alg. 1: ``x0 = f(x_T, T)``, then for each
  further time ``t``: ``x0 = f(alpha_t x0 + sigma_t z, t)``; ``nfe = len(times)``.
* :func:`average_velocity` -- shortcut models and MeanFlow: ``x_r = x_t - (t - r) u(x_t, r, t)``
  on ``n`` uniform steps (``cond["r"] = r``), ``nfe = n``.
* reflow students are flows: :func:`diffjax.sample` with ``sampler="euler"`` (NFE = steps).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from diffjax import targets
from diffjax.distill import nets, ode
from diffjax.paths import Path

Array = jax.Array
ModelFn = Callable[[Any, Array, Array, Mapping[str, Array]], Array]


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be an int >= 1")


def _t(x: Array, value) -> Array:
    return jnp.full(x.shape[:1], value, x.dtype)


def ddim(model_fn: ModelFn, params: Any, path: Path, target: str, shape: tuple[int, ...],
         key: Array, num_steps: int, cond: Optional[Mapping] = None) -> tuple[Array, int]:
    """DDIM from ``t_max`` on ``t_i = t_max i / num_steps``; the last step returns ``x0_hat``."""
    _check_steps(num_steps)
    cond = dict(cond or {})
    x = path.prior_sample(key, shape)
    for i in range(num_steps, 0, -1):
        t = _t(x, path.t_max * i / num_steps)
        x0 = targets.to_x0_eps(target, path, model_fn(params, x, t, cond), x, t)[0]
        x = x0 if i == 1 else ode.ddim_step(path, x, x0, t, _t(x, path.t_max * (i - 1) / num_steps))
    return x, num_steps


def consistency_multistep(f: ModelFn, params: Any, path: Path, shape: tuple[int, ...],
                          key: Array, times: Sequence[float],
                          cond: Optional[Mapping] = None) -> tuple[Array, int]:
    """``times``: decreasing, the first the path's ``t_max`` (e.g. ``(1.0,)`` for one step)."""
    if len(times) < 1 or any(a <= b for a, b in zip(times, times[1:])):
        raise ValueError(f"times={tuple(times)} must be a non-empty decreasing sequence")
    cond = dict(cond or {})
    keys = jax.random.split(key, len(times))
    x = path.prior_sample(keys[0], shape)
    x0 = f(params, x, _t(x, times[0]), cond)
    for k, t in zip(keys[1:], times[1:]):
        tt = _t(x0, t)
        x = path.marginal(x0, jax.random.normal(k, shape, x0.dtype), tt)
        x0 = f(params, x, tt, cond)
    return x0, len(times)


def average_velocity(u_fn: ModelFn, params: Any, path: Path, shape: tuple[int, ...],
                     key: Array, num_steps: int,
                     cond: Optional[Mapping] = None) -> tuple[Array, int]:
    """``num_steps`` jumps ``t -> r = t - 1/num_steps`` from ``t = 1`` to ``0``."""
    _check_steps(num_steps)
    cond = dict(cond or {})
    x = path.prior_sample(key, shape)
    for i in range(num_steps, 0, -1):
        t, r = _t(x, i / num_steps), _t(x, (i - 1) / num_steps)
        u = u_fn(params, x, t, {**cond, nets.R_KEY: r})
        x = x - (1.0 / num_steps) * u
    return x, num_steps
