"""Few-step samplers of distilled and one-step models (issue 16; :mod:`diffjax.distill`).

Both walk the grid ``t_0 = t_max > t_1 > ... > t_K = t_min`` with one model evaluation per
interval (NFE = ``K``), and both end on the model's own estimate of the data, so neither takes
a final ``x0_hat`` evaluation by default:

* :func:`consistency` -- multistep consistency sampling (Song et al. 2023, Alg. 1). The model
  is a consistency function read as an ``x0`` model: ``x0 = f(x_{t_k}, t_k)``, then fresh noise
  to the next interior time, ``x_{t_{k+1}} = alpha x0 + sigma z``; the last interval returns
  ``x0``. One step is ``f(x_T, T)``; the re-noising times are the grid's interior points
  (``uniform``: evenly spaced between ``t_max`` and ``t_min``; an explicit ``grid`` of
  ``K + 1`` times chooses them, its last time unused).
* :func:`average_velocity` -- shortcut models (Frans et al. 2024) and MeanFlow (Geng et al.
  2025): the model is told the end ``s`` of its step (``cond["r"] = s``,
  :data:`END_TIME_KEY`) and returns the average velocity ``u(x_t, t, s)`` over it (or any
  target); the step is DDIM's with that prediction, ``x_s = alpha_s x0_hat + sigma_s eps_hat``,
  which on the ``rectified_flow`` path with a velocity model is the jump
  ``x_s = x_t - (t - s) u`` exactly. A model without a condition is then called
  ``model_fn(x, t, cond)`` (it needs ``cond["r"]``).
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem, run_grid

Array = jax.Array

# The condition key that carries the end of a step (diffjax.distill.nets.EndTime reads it).
END_TIME_KEY = "r"


def with_end_time(cond: Optional[Mapping[str, Array]], s: Array, batch: int,
                  dtype) -> dict:
    """``cond`` plus ``END_TIME_KEY: [batch]`` filled with ``s``."""
    return {**(cond or {}), END_TIME_KEY: jnp.full((batch,), s, dtype)}


def consistency(problem: Problem, x: Array, ts: Array, keys, plan: Plan):
    """Multistep consistency sampling; NFE 1 per interval (see the module docstring)."""
    path, last = problem.path, ts.shape[0] - 2

    def step(x, state, i, t, s, key):
        x0, _ = problem.denoise(x, t)
        z = jax.random.normal(key, x.shape, x.dtype)
        return jnp.where(i == last, x0, path.alpha(s) * x0 + path.sigma(s) * z), state

    return run_grid(problem, step, x, ts, keys, plan)


def average_velocity(problem: Problem, x: Array, ts: Array, keys, plan: Plan):
    """Jumps ``t -> s`` of a model told its step's end; NFE 1 per interval."""
    path = problem.path

    def step(x, state, i, t, s, key):
        x0, eps = problem.denoise_to(x, t, s)
        return path.alpha(s) * x0 + path.sigma(s) * eps, state

    return run_grid(problem, step, x, ts, keys, plan)
