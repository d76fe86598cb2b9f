"""Ancestral DDPM and DDIM on any Gaussian path, in terms of ``(x0_hat, eps_hat)``.

For ``s < t`` the path's forward kernel is ``x_t | x_s ~ N(alpha_ts x_s, sigma_ts^2 I)``
with ``alpha_ts = alpha_t / alpha_s``, ``sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2``, and
the posterior is (Ho et al. 2020, eq. 6-7; Kingma et al. 2021, eq. 31-33, for any path)

    q(x_s | x_t, x0) = N(r (sigma_s / sigma_t) x_t + alpha_s (1 - r^2) x0,  sigma_s^2 (1 - r^2) I),
    r = exp((lambda_t - lambda_s) / 2) = alpha_t sigma_s / (alpha_s sigma_t) in [0, 1).

DDIM (Song et al. 2021, eq. 12) keeps the marginals and sets the noise by ``eta``:

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,   c = eta sigma_s sqrt(1 - r^2),

so ``eta = 1`` is the posterior above and ``eta = 0`` is deterministic. Both are written
without ``1/alpha_t``: they run at ``alpha_t = 0`` (rectified flow's ``t = 1``) when the model's
target allows ``x0_hat`` there.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem, run_grid

Array = jax.Array


def _ratio(path, t: Array, s: Array) -> tuple[Array, Array]:
    """``(r, 1 - r^2)`` for the step ``t -> s``; ``1 - r^2`` via expm1, exact for tiny steps."""
    dlam = path.logsnr(t) - path.logsnr(s)
    return jnp.exp(0.5 * dlam), -jnp.expm1(dlam)


def ddpm(problem: Problem, x: Array, ts: Array, keys, plan: Plan):
    """Ancestral sampling from the posterior ``q(x_s | x_t, x0 = x0_hat)``. NFE: 1 per interval."""
    path = problem.path

    def step(x, state, i, t, s, key):
        x0, _ = problem.denoise(x, t)
        r, one_minus_r2 = _ratio(path, t, s)
        sigma_s = path.sigma(s)
        mean = r * (sigma_s / path.sigma(t)) * x + path.alpha(s) * one_minus_r2 * x0
        z = jax.random.normal(key, x.shape, x.dtype)
        return mean + sigma_s * jnp.sqrt(one_minus_r2) * z, state

    return run_grid(problem, step, x, ts, keys, plan)


def ddim(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, eta: float):
    """DDIM with noise ``eta`` in [0, 1]. NFE: 1 per interval."""
    path = problem.path

    def step(x, state, i, t, s, key):
        x0, eps = problem.denoise(x, t)
        _, one_minus_r2 = _ratio(path, t, s)
        sigma_s = path.sigma(s)
        c = eta * sigma_s * jnp.sqrt(one_minus_r2)
        x_s = path.alpha(s) * x0 + jnp.sqrt(jnp.maximum(sigma_s**2 - c**2, 0.0)) * eps
        if eta > 0:
            x_s = x_s + c * jax.random.normal(key, x.shape, x.dtype)
        return x_s, state

    return run_grid(problem, step, x, ts, keys, plan)
