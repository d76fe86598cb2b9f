"""Multistep DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast solver for guided sampling ...").

With ``lambda = log(alpha/sigma)`` (half the log-SNR) and ``h = lambda_s - lambda_t > 0``, the
probability-flow ODE in data-prediction form integrates exactly to

    x_s = (sigma_s/sigma_t) x_t + alpha_s int_{lambda_t}^{lambda_s} e^{lambda - lambda_s} x0_hat,

and the multistep solvers approximate ``x0_hat`` by the polynomial through the last
``order`` predictions ``m0, m1, m2`` (at ``lambda_t`` and the two previous grid times), with
``r0 = h_0 / h``, ``r1 = h_1 / h`` the ratios of the previous steps to this one:

    order 1 (DDIM):  x_s = (sigma_s/sigma_t) x_t - alpha_s phi1 m0,     phi1 = expm1(-h)
    order 2 (2M):    ... - alpha_s phi1 (m0 + (m0 - m1) / (2 r0))
    order 3 (3M):    ... - alpha_s phi1 m0 + alpha_s phi2 D1 - alpha_s phi3 D2,
                     phi2 = phi1/h + 1,  phi3 = phi2/h - 1/2,
                     D1_0 = (m0 - m1)/r0,  D1_1 = (m1 - m2)/r1,
                     D1 = D1_0 + r0 (D1_0 - D1_1)/(r0 + r1),  D2 = (D1_0 - D1_1)/(r0 + r1).

The first steps warm up with orders 1, 2, ...; with ``lower_order_final`` the last steps drop
in order, by one of two conventions (``convention``):

* ``"reference"`` (Lu et al.'s reference code): with fewer than 10 intervals the step
  ``i`` has order at most ``K - i``; the sampler stops at ``t_min`` (no final evaluation).
* ``"diffusers"`` (diffusers' ``DPMSolverMultistepScheduler``, ``final_sigmas_type="zero"``):
  ``N = K + 1`` steps, the last one a first-order step to ``sigma = 0``, i.e. the
  ``denoise_to_zero`` evaluation ``x0_hat(x_{t_K})``; with ``N < 15`` the step before it has
  order at most 2: step ``i`` has order at most ``N - i``.

The SDE variant (SDE-DPM-Solver++(2M), Lu et al. 2022, Sec. 5 / App. D, "midpoint" form)
integrates the reverse SDE exactly in its linear part:

    x_s = (sigma_s/sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) (m0 + (m0 - m1)/(2 r0))
          + sigma_s sqrt(1 - e^{-2h}) z.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem, half_logsnr, run_grid

Array = jax.Array


CONVENTIONS = ("reference", "diffusers")


def step_order(i: Array, num: int, order: int, lower_order_final: bool, convention: str,
               denoise: int) -> Array:
    """The order of interval ``i`` of ``num`` (``denoise``: 1 if a final ``x0_hat`` follows)."""
    k = jnp.minimum(order, i + 1)
    if not lower_order_final:
        return k
    if convention == "reference":
        return jnp.minimum(k, num - i) if num < 10 else k
    steps = num + denoise  # diffusers counts the final step to sigma = 0
    return jnp.minimum(k, steps - i) if steps < 15 else k


def _ode_coefs(h, r0, r1, alpha_s, k):
    """Coefficients ``(c0, c1, c2)`` of ``(m0, m1, m2)`` in the order-``k`` update."""
    phi1 = jnp.expm1(-h)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    order1 = (-phi1, 0.0, 0.0)
    order2 = (-phi1 * (1.0 + 0.5 / r0), 0.5 * phi1 / r0, 0.0)
    kappa = (phi2 * r0 - phi3) / (r0 + r1)
    order3 = (-phi1 + (phi2 + kappa) / r0,
              -phi2 / r0 - kappa * (1.0 / r0 + 1.0 / r1),
              kappa / r1)
    return tuple(alpha_s * jnp.where(k == 1, a, jnp.where(k == 2, b, c))
                 for a, b, c in zip(order1, order2, order3))


def _sde_coefs(h, r0, alpha_s, k):
    one_minus = -jnp.expm1(-2.0 * h)
    c0 = jnp.where(k == 1, one_minus, one_minus * (1.0 + 0.5 / r0))
    c1 = jnp.where(k == 1, 0.0, -0.5 * one_minus / r0)
    return alpha_s * c0, alpha_s * c1


def dpm_solver_pp(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *,
                  order: int, lower_order_final: bool, sde: bool, convention: str):
    """DPM-Solver++(1/2/3M), or SDE-DPM-Solver++(1/2M) with ``sde=True``. NFE: 1 per interval.

    Needs a finite log-SNR on the whole grid.
    """
    path = problem.path
    num = ts.shape[0] - 1
    lam = half_logsnr(path, ts)

    def step(x, history, i, t, s, key):
        m1, m2 = history
        m0, _ = problem.denoise(x, t)
        h = lam[i + 1] - lam[i]
        r0 = (lam[i] - lam[jnp.maximum(i - 1, 0)]) / h
        r1 = (lam[jnp.maximum(i - 1, 0)] - lam[jnp.maximum(i - 2, 0)]) / h
        k = step_order(i, num, order, lower_order_final, convention, plan.denoise)
        # Ratios of steps that do not exist yet are unused; keep them finite so that the
        # unselected branches of jnp.where have finite gradients (grids can be optimised).
        r0, r1 = jnp.where(k >= 2, r0, 1.0), jnp.where(k >= 3, r1, 1.0)
        sigma_ratio = path.sigma(s) / path.sigma(t)
        if sde:
            c0, c1 = _sde_coefs(h, r0, path.alpha(s), k)
            noise = path.sigma(s) * jnp.sqrt(-jnp.expm1(-2.0 * h))
            z = jax.random.normal(key, x.shape, x.dtype)
            x_s = sigma_ratio * jnp.exp(-h) * x + c0 * m0 + c1 * m1 + noise * z
        else:
            c0, c1, c2 = _ode_coefs(h, r0, r1, path.alpha(s), k)
            x_s = sigma_ratio * x + c0 * m0 + c1 * m1 + c2 * m2
        return x_s, (m0, m1)

    zeros = jnp.zeros_like(x)
    return run_grid(problem, step, x, ts, keys, plan, state=(zeros, zeros))
