"""Karras et al. 2022 ("Elucidating the design space ...", Algorithm 2): stochastic Heun.

EDM writes every path as ``x = alpha(t) (x0 + s eps)`` with the VE-equivalent noise level
``s = sigma/alpha = exp(-lambda/2)`` and integrates ``x~ = x/alpha`` in ``s``, where the
probability-flow ODE is ``dx~/ds = eps_hat``. Step ``i`` from ``s_i`` to ``s_{i+1}``:

    gamma = min(S_churn / N, sqrt(2) - 1) if S_tmin <= s_i <= S_tmax else 0
    s^ = (1 + gamma) s_i,   x^ = x~ + sqrt(s^2 - s_i^2) S_noise z         (churn: add noise)
    x~' = x^ + (s_{i+1} - s^) eps_hat(x^, s^)                              (Euler)
    x~' = x^ + (s_{i+1} - s^) (eps_hat(x^, s^) + eps_hat(x~', s_{i+1})) / 2  (Heun)

``N`` is the number of EDM steps (grid intervals plus the final step to data). With
``S_churn = 0`` this is the deterministic Heun sampler of Karras et al.'s Algorithm 1.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem, run_grid

Array = jax.Array


def edm(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, s_churn: float,
        s_tmin: float, s_tmax: float, s_noise: float):
    """EDM stochastic Heun. NFE: 2 per interval; if ``plan.evals`` is odd the last interval is
    an Euler step (NFE exactly ``plan.evals``). Needs ``alpha > 0`` on the grid."""
    path = problem.path
    last_is_euler = plan.evals < 2 * plan.num_intervals
    gamma_max = min(s_churn / (plan.num_intervals + plan.denoise), math.sqrt(2.0) - 1.0)

    def noise_level(t):
        return jnp.exp(-0.5 * path.logsnr(t))

    def eps_at(x_ve, t):
        return problem.denoise(path.alpha(t) * x_ve, t)[1]

    def step(x, state, i, t, s, key):
        s_i, s_next = noise_level(t), noise_level(s)
        x_ve = x / path.alpha(t)
        if gamma_max > 0:
            gamma = jnp.where((s_i >= s_tmin) & (s_i <= s_tmax), gamma_max, 0.0)
            s_hat = s_i * (1.0 + gamma)
            z = jax.random.normal(key, x.shape, x.dtype)
            # s_i sqrt((1 + gamma)^2 - 1), not sqrt(s_hat^2 - s_i^2): where gamma = 0 the
            # difference of squares can round to a tiny negative number (a NaN sample).
            x_ve = x_ve + s_i * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * z
            t_hat = jnp.where(gamma > 0, path.t_from_logsnr(-2.0 * jnp.log(s_hat)), t)
        else:
            s_hat, t_hat = s_i, t
        # Euler then the trapezoidal correction, as a 2-stage loop (one compiled model).
        num_stages = 2
        if last_is_euler:
            num_stages = jnp.where(i < plan.num_intervals - 1, 2, 1)
        step_size = s_next - s_hat

        def stage(j, carry):
            d_sum, d = carry
            d = eps_at(x_ve + j * step_size * d, jnp.where(j == 0, t_hat, s))
            return d_sum + d, d

        zeros = jnp.zeros_like(x_ve)
        d_sum, _ = jax.lax.fori_loop(0, num_stages, stage, (zeros, zeros))
        x_next = x_ve + step_size * d_sum / num_stages
        return path.alpha(s) * x_next, state

    return run_grid(problem, step, x, ts, keys, plan)
