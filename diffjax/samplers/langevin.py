"""Annealed Langevin dynamics (Song & Ermon 2019, "Generative Modeling by Estimating Gradients
of the Data Distribution", Algorithm 1), with the denoiser as the score.

Tweedie's formula makes any denoiser a score model: ``grad log p_t(x) = -eps_hat(x, t) / sigma(t)``.
The noise levels are the grid times after ``t_max`` (the prior at ``t_max`` is already
``p_{t_max}``); at each level ``t_i`` the sampler takes ``steps_per_level`` Langevin steps

    x <- x + (a_i / 2) grad log p_{t_i}(x) + sqrt(a_i) z,    z ~ N(0, I),

with the step ``a_i`` set by

* ``step_rule="paper"``: ``a_i = step_size * sigma_i^2 / sigma_L^2`` (``sigma_i = sigma(t_i)``,
  ``sigma_L`` the last level's), the paper's rule that keeps the signal-to-noise ratio of the
  update fixed across levels;
* ``step_rule="snr"``: ``a = 4 (snr |z| / |grad|)^2`` per step (Song et al. 2021's corrector
  rule, ``x + eps grad + sqrt(2 eps) z`` with ``eps = 2 (snr |z| / |grad|)^2``; norms averaged
  over the batch as in their code). The rule fixes the ratio of the noise to the drift, so a
  sample far from the data moves by ``~ snr^2 |z|^2 / |grad|``: it was made as a corrector
  behind a predictor, and alone it needs ``snr`` scaled with the dimension (``|z| ~ sqrt(d)``;
  0.16 is Song et al.'s value for images, far too small in 2-D).

Between levels ``x`` is rescaled by ``alpha(t_{i+1}) / alpha(t_i)`` so that its signal keeps
the scale of the next marginal (a no-op on VE paths, where Song & Ermon's algorithm is exactly
this). NFE: ``steps_per_level`` per level.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem, run_grid

Array = jax.Array
STEP_RULES = ("paper", "snr")


def _mean_norm(x: Array) -> Array:
    return jnp.mean(jnp.linalg.norm(jnp.reshape(x, (x.shape[0], -1)), axis=-1))


def step_sizes(path, ts: Array, step_size: float) -> Array:
    """The paper's ``a_i = step_size * sigma_i^2 / sigma_L^2`` for the levels ``ts[1:]``."""
    sigma = path.sigma(ts[1:])
    return step_size * sigma**2 / sigma[-1] ** 2


def langevin(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, steps_per_level: int,
             step_size: float, step_rule: str, snr: float):
    """Annealed Langevin dynamics over the levels ``ts[1:]``; see the module docstring."""
    path = problem.path
    sizes = step_sizes(path, ts, step_size)

    def step(x, state, i, t, s, key):
        x = x * (path.alpha(s) / path.alpha(t))
        for k in jax.random.split(key, steps_per_level):
            _, eps = problem.denoise(x, s)
            grad = -eps / path.sigma(s)
            z = jax.random.normal(k, x.shape, x.dtype)
            if step_rule == "paper":
                a = sizes[i]
            else:
                a = 4.0 * (snr * _mean_norm(z) / _mean_norm(grad)) ** 2
            x = x + 0.5 * a * grad + jnp.sqrt(a) * z
        return x, state

    return run_grid(problem, step, x, ts, keys, plan)


__all__ = ["STEP_RULES", "langevin", "step_sizes"]
