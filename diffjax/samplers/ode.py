"""Fixed-step Runge-Kutta solvers of the probability-flow ODE in the path's own time ``t``.

    dx/dt = v(x, t) = alpha'(t) x0_hat(x, t) + sigma'(t) eps_hat(x, t)

is the same equation for every path (Song et al. 2021, eq. 13, written for a Gaussian path;
Lipman et al. 2022 for the linear one). The grid sets the step sizes; the order is the
textbook one in ``t``: Euler 1, Heun 2, classic RK4 4 (Butcher tableaux below).

The stages run in a ``fori_loop`` rather than unrolled, so the model is compiled once per
sampler, not once per stage (a large network's compile time is otherwise multiplied by 4).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem, run_grid

Array = jax.Array

# Butcher tableaux (c, A, b) of explicit methods.
EULER = ((0.0,), ((0.0,),), (1.0,))
HEUN = ((0.0, 1.0), ((0.0, 0.0), (1.0, 0.0)), (0.5, 0.5))
RK4 = ((0.0, 0.5, 0.5, 1.0),
       ((0.0, 0.0, 0.0, 0.0), (0.5, 0.0, 0.0, 0.0), (0.0, 0.5, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0)),
       (1 / 6, 1 / 3, 1 / 3, 1 / 6))


def runge_kutta_step(velocity, x: Array, t: Array, h: Array, tableau, num_stages=None,
                     b=None) -> Array:
    """One explicit RK step ``x(t) -> x(t + h)``; the first ``num_stages`` stages with weights
    ``b`` when given (a lower-order method embedded in the tableau)."""
    c, a, b_full = (jnp.asarray(v, x.dtype) for v in tableau)
    size = c.shape[0]

    def stage(j, ks):
        x_j = x + h * jnp.tensordot(a[j], ks, axes=1)
        return ks.at[j].set(velocity(x_j, t + c[j] * h))

    ks = jax.lax.fori_loop(0, size if num_stages is None else num_stages, stage,
                           jnp.zeros((size,) + x.shape, x.dtype))
    return x + h * jnp.tensordot(b_full if b is None else b, ks, axes=1)


def euler(problem: Problem, x: Array, ts: Array, keys, plan: Plan):
    """Explicit Euler. NFE: 1 per interval."""
    def step(x, state, i, t, s, key):
        return x + (s - t) * problem.velocity(x, t), state

    return run_grid(problem, step, x, ts, keys, plan)


def heun(problem: Problem, x: Array, ts: Array, keys, plan: Plan):
    """Heun's trapezoidal predictor-corrector. NFE: 2 per interval.

    If ``plan.evals`` is odd the last interval is an Euler step, so the NFE is exactly
    ``plan.evals`` (as Karras et al.'s final step).
    """
    last_is_euler = plan.evals < 2 * plan.num_intervals

    def step(x, state, i, t, s, key):
        if not last_is_euler:
            return runge_kutta_step(problem.velocity, x, t, s - t, HEUN), state
        euler_now = i == plan.num_intervals - 1
        b = jnp.where(euler_now, jnp.array([1.0, 0.0], x.dtype), jnp.array([0.5, 0.5], x.dtype))
        return runge_kutta_step(problem.velocity, x, t, s - t, HEUN,
                                jnp.where(euler_now, 1, 2), b), state

    return run_grid(problem, step, x, ts, keys, plan)


def rk4(problem: Problem, x: Array, ts: Array, keys, plan: Plan):
    """Classic fourth-order Runge-Kutta. NFE: 4 per interval."""
    def step(x, state, i, t, s, key):
        return runge_kutta_step(problem.velocity, x, t, s - t, RK4), state

    return run_grid(problem, step, x, ts, keys, plan)
