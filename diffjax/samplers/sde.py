"""The reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6) and its predictor-corrector.

For the forward SDE ``dx = f(t) x dt + g(t) dW`` of a Gaussian path, the reverse SDE is

    dx = [f(t) x - g(t)^2 grad log p_t(x)] dt + g(t) dW_bar,   grad log p_t = -eps_hat / sigma(t),

integrated from ``t_max`` down to ``t_min`` (``dt < 0``). Both samplers need ``alpha > 0``:
``f = alpha'/alpha`` is infinite where ``alpha = 0``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem, run_grid

Array = jax.Array


def _reverse_sde_step(problem: Problem, x: Array, t: Array, s: Array, key: Array) -> Array:
    """One Euler-Maruyama step of the reverse SDE from ``t`` to ``s < t``."""
    path = problem.path
    _, eps = problem.denoise(x, t)
    drift = path.drift_coef(t) * x + path.diffusion_sq(t) * eps / path.sigma(t)
    z = jax.random.normal(key, x.shape, x.dtype)
    return x + (s - t) * drift + path.diffusion(t) * jnp.sqrt(t - s) * z


def euler_maruyama(problem: Problem, x: Array, ts: Array, keys, plan: Plan):
    """Euler-Maruyama on the reverse SDE (strong order 1/2, weak order 1). NFE: 1 per interval."""
    def step(x, state, i, t, s, key):
        return _reverse_sde_step(problem, x, t, s, key), state

    return run_grid(problem, step, x, ts, keys, plan)


def _mean_norm(x: Array) -> Array:
    return jnp.mean(jnp.linalg.norm(jnp.reshape(x, (x.shape[0], -1)), axis=-1))


def pc(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, snr: float,
       corrector_steps: int):
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3).

    At each grid time ``t``: ``corrector_steps`` Langevin steps on ``p_t`` with the step size
    set by the signal-to-noise ratio ``snr``,

        delta = 2 a (snr |z| / |grad log p_t|)^2,  x <- x + delta grad log p_t + sqrt(2 delta) z,

    (``a = alpha_t^2 / alpha_s^2``, the discrete ``1 - beta`` of the VP case, ``1`` on VE
    paths), then one Euler-Maruyama predictor step to ``s``. As in Song et al.'s code the norms
    are averaged over the batch: per-example norms blow the step up for an example that sits
    at a mode, where its score vanishes. NFE: ``1 + corrector_steps`` per interval.
    """
    path = problem.path

    def step(x, state, i, t, s, key):
        a = jnp.exp(2.0 * (path.log_alpha(t) - path.log_alpha(s)))
        ks = jax.random.split(key, corrector_steps + 1)
        for k in ks[:-1]:
            _, eps = problem.denoise(x, t)
            grad = -eps / path.sigma(t)
            z = jax.random.normal(k, x.shape, x.dtype)
            delta = 2.0 * a * (snr * _mean_norm(z) / _mean_norm(grad)) ** 2
            x = x + delta * grad + jnp.sqrt(2.0 * delta) * z
        return _reverse_sde_step(problem, x, t, s, ks[-1]), state

    return run_grid(problem, step, x, ts, keys, plan)
