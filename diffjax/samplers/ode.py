"""Fixed-step Runge-Kutta solvers of the probability-flow ODE, in ``t`` or in ``sigma/alpha``.

In the path's own time ``t`` the ODE is

    dx/dt = v(x, t) = alpha'(t) x0_hat(x, t) + sigma'(t) eps_hat(x, t),

the same equation for every path (Song et al. 2021, eq. 13, written for a Gaussian path;
Lipman et al. 2022 for the linear one). With ``variable="sigma"`` the solvers step instead in
the VE-equivalent noise level ``u = sigma/alpha`` on ``x~ = x/alpha``, where the ODE is

    dx~/du = eps_hat(alpha x~, t(u))

(Karras et al. 2022, eq. 4 and Algorithm 1; there Euler *is* DDIM and Heun is EDM's
deterministic sampler). The grid sets the step sizes either way; the order is the textbook
one in the chosen variable: Euler 1, Heun 2, classic RK4 4 (Butcher tableaux below). Stages
at the ends of a step are evaluated at the grid times themselves; interior stages (RK4's
midpoints) at the time of the interior ``t`` or ``u``.

The stages run in a ``fori_loop`` rather than unrolled, so the model is compiled once per
sampler, not once per stage (a large network's compile time is otherwise multiplied by 4).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem, run_grid

Array = jax.Array

VARIABLES = ("t", "sigma")

# Butcher tableaux (c, A, b) of explicit methods.
EULER = ((0.0,), ((0.0,),), (1.0,))
HEUN = ((0.0, 1.0), ((0.0, 0.0), (1.0, 0.0)), (0.5, 0.5))
RK4 = ((0.0, 0.5, 0.5, 1.0),
       ((0.0, 0.0, 0.0, 0.0), (0.5, 0.0, 0.0, 0.0), (0.0, 0.5, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0)),
       (1 / 6, 1 / 3, 1 / 3, 1 / 6))


def runge_kutta_step(velocity, x: Array, h: Array, tableau, num_stages=None, b=None) -> Array:
    """One explicit RK step of size ``h`` from ``x``: ``velocity(x_j, c_j)`` is the derivative
    at stage ``j`` (``c_j`` the stage's fraction of the step). The first ``num_stages``
    stages with weights ``b`` when given (a lower-order method embedded in the tableau)."""
    c, a, b_full = (jnp.asarray(v, x.dtype) for v in tableau)
    size = c.shape[0]

    def stage(j, ks):
        x_j = x + h * jnp.tensordot(a[j], ks, axes=1)
        return ks.at[j].set(velocity(x_j, c[j]))

    ks = jax.lax.fori_loop(0, size if num_stages is None else num_stages, stage,
                           jnp.zeros((size,) + x.shape, x.dtype))
    return x + h * jnp.tensordot(b_full if b is None else b, ks, axes=1)


def noise_level(path, t: Array) -> Array:
    """``u = sigma/alpha = exp(-lambda/2)``."""
    return jnp.exp(-0.5 * path.logsnr(t))


def ode_step(problem: Problem, variable: str, x: Array, t: Array, s: Array, tableau,
             num_stages=None, b=None) -> Array:
    """One RK step ``x(t) -> x(s)`` in ``variable`` (``"t"`` or ``"sigma"``)."""
    path = problem.path
    if variable == "t":
        def time(c):
            return jnp.where(c == 0, t, jnp.where(c == 1, s, t + c * (s - t)))

        return runge_kutta_step(lambda y, c: problem.velocity(y, time(c)), x, s - t, tableau,
                                num_stages, b)
    u_t, u_s = noise_level(path, t), noise_level(path, s)

    def time_u(c):
        interior = path.t_from_logsnr(-2.0 * jnp.log(u_t + c * (u_s - u_t)))
        return jnp.where(c == 0, t, jnp.where(c == 1, s, interior))

    def eps(y, c):
        tau = time_u(c)
        return problem.denoise(path.alpha(tau) * y, tau)[1]

    x_tilde = runge_kutta_step(eps, x / path.alpha(t), u_s - u_t, tableau, num_stages, b)
    return path.alpha(s) * x_tilde


def euler(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, variable: str):
    """Explicit Euler. NFE: 1 per interval."""
    def step(x, state, i, t, s, key):
        return ode_step(problem, variable, x, t, s, EULER), state

    return run_grid(problem, step, x, ts, keys, plan)


def heun(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, variable: str):
    """Heun's trapezoidal predictor-corrector. NFE: 2 per interval.

    If ``plan.evals`` is odd the last interval is an Euler step, so the NFE is exactly
    ``plan.evals`` (as Karras et al.'s final step).
    """
    last_is_euler = plan.evals < 2 * plan.num_intervals

    def step(x, state, i, t, s, key):
        if not last_is_euler:
            return ode_step(problem, variable, x, t, s, HEUN), state
        euler_now = i == plan.num_intervals - 1
        b = jnp.where(euler_now, jnp.array([1.0, 0.0], x.dtype), jnp.array([0.5, 0.5], x.dtype))
        return ode_step(problem, variable, x, t, s, HEUN, jnp.where(euler_now, 1, 2), b), state

    return run_grid(problem, step, x, ts, keys, plan)


def rk4(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, variable: str):
    """Classic fourth-order Runge-Kutta. NFE: 4 per interval."""
    def step(x, state, i, t, s, key):
        return ode_step(problem, variable, x, t, s, RK4), state

    return run_grid(problem, step, x, ts, keys, plan)
