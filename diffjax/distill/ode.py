"""Deterministic steps of the probability-flow ODE from an ``x0_hat`` model, on any path.

``x0_fn(x, t) -> x0_hat`` (``x: [B, ...]``, ``t: [B]``). The DDIM step (Song et al. 2021) is
the ODE's exact step when ``x0_hat`` is constant over the step; RK4 on the velocity
``alpha' x0_hat + sigma' eps_hat`` is the tight solve the tests and the couplings of reflow use.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from diffjax import targets
from diffjax.paths import Path, broadcast_to_x

Array = jax.Array
X0Fn = Callable[[Array, Array], Array]


def _rows(t, x: Array) -> Array:
    return jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])


def ddim_step(path: Path, x: Array, x0_hat: Array, t: Array, s: Array) -> Array:
    """``x_s = alpha_s x0_hat + sigma_s eps_hat``, ``eps_hat = (x - alpha_t x0_hat) / sigma_t``."""
    t, s = _rows(t, x), _rows(s, x)
    a_t, s_t = broadcast_to_x(path.alpha(t), x), broadcast_to_x(path.sigma(t), x)
    a_s, s_s = broadcast_to_x(path.alpha(s), x), broadcast_to_x(path.sigma(s), x)
    eps = (x - a_t * x0_hat) / s_t
    return a_s * x0_hat + s_s * eps


def velocity(path: Path, x0_fn: X0Fn, x: Array, t: Array) -> Array:
    """``dx/dt`` of the probability-flow ODE at ``(x, t)`` (needs ``sigma(t) > 0``)."""
    t = _rows(t, x)
    return targets.convert(x0_fn(x, t), x, t, path, "x0", "velocity")


def rk4(path: Path, x0_fn: X0Fn, x: Array, t: Array, s: Array, num_steps: int) -> Array:
    """``x_s`` from ``x_t`` by ``num_steps`` classical Runge-Kutta steps; ``t, s: [B]`` or
    scalars, ``sigma > 0`` on ``[s, t]``."""
    t, s = _rows(t, x), _rows(s, x)
    h = (s - t) / num_steps
    hb = lambda a: broadcast_to_x(a, x)  # noqa: E731

    def body(i, y):
        tau = t + i * h
        k1 = velocity(path, x0_fn, y, tau)
        k2 = velocity(path, x0_fn, y + 0.5 * hb(h) * k1, tau + 0.5 * h)
        k3 = velocity(path, x0_fn, y + 0.5 * hb(h) * k2, tau + 0.5 * h)
        k4 = velocity(path, x0_fn, y + hb(h) * k3, tau + h)
        return (y + hb(h) / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)).astype(y.dtype)

    return lax.fori_loop(0, num_steps, body, x)


def solve_to_data(path: Path, x0_fn: X0Fn, x: Array, t: Array, num_steps: int,
                  t_end: float = 1e-3) -> Array:
    """The ODE's sample from ``x_t``: RK4 to ``t_end`` (where ``sigma > 0``), then the
    model's ``x0_hat`` there (the remaining step is below ``sigma(t_end)``)."""
    y = rk4(path, x0_fn, x, t, _rows(t_end, x), num_steps)
    return x0_fn(y, _rows(t_end, x))
