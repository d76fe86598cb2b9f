"""Time grids fitted to a model: few-step sampling where the grid matters most.

At 5-10 model evaluations the placement of the steps decides the error more than the solver
does (Sabour et al. 2024, "Align Your Steps"; Watson et al. 2021). :func:`optimise_grid`
fits the ``K - 1`` interior times of a deterministic sampler's grid to one model by gradient
descent (Adam) on

    L(grid) = E_eps |x_sampler(eps; grid) - x_ode(eps)|^2,

the squared distance from the sampler's output to the probability-flow ODE's own solution
from the same starting noise (a tight Dormand-Prince solve), i.e. the solver's global error,
not a sample-quality metric. The grid is parameterised by softmax weights of its log-SNR
increments, so it stays ordered with fixed ends. Fit on pilot noise; sample with fresh noise:
``diffjax.sample(..., grid=optimise_grid(...))``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from diffjax import conv, xla_options
from diffjax.paths import Path
from diffjax.samplers import SAMPLERS, _prepare, _run, sample

Array = jax.Array
# What the reference solve shares with the sampler: the model, its condition and guidance.
_MODEL_OPTIONS = ("params", "cond", "uncond", "label", "guidance_scale", "num_classes", "nulls",
                  "guide_fn", "guide_params", "guide_target", "guidance_interval")


def optimise_grid(model_fn: Callable, path: Path, shape: tuple, key: Array, *, target: str,
                  sampler: str, num_steps: int, iterations: int = 150,
                  learning_rate: float = 0.05, reference_tol: float = 1e-6,
                  **options) -> Array:
    """Returns a grid ``[K + 1]`` (``t_max ... t_min``) for ``sampler`` at ``num_steps``.

    Args:
      model_fn, path, target, sampler, num_steps, options: as for :func:`diffjax.sample`
        (``grid``, default the sampler's, is the starting point; ``t_min``/``t_max`` fix the ends).
      shape: ``(B, ...)`` of the pilot batch the loss is averaged over.
      key: PRNG key of the pilot noise (use a different one for the samples you report).
      iterations, learning_rate: Adam's.
      reference_tol: rtol = atol of the reference ODE solve.
    """
    spec = SAMPLERS.get(sampler)
    prep = _prepare(model_fn, path, shape, key, target=target, sampler=sampler,
                    num_steps=num_steps, **options)
    if spec is None or not spec.fixed_step or prep.keys is not None:
        raise ValueError(f"optimise_grid needs a deterministic fixed-step sampler, got {sampler!r} "
                         f"with options {options}")
    ts0 = prep.ts
    try:
        reference = sample(model_fn, path, shape, key, target=target, sampler="adaptive",
                           num_steps=100_000, rtol=reference_tol, atol=reference_tol,
                           t_max=float(ts0[0]), t_min=float(ts0[-1]),
                           denoise_to_zero=bool(prep.static.plan.denoise),
                           **{k: options[k] for k in _MODEL_OPTIONS if k in options})
    except ValueError as err:
        raise ValueError(f"optimise_grid's reference solve failed; loosen reference_tol "
                         f"({reference_tol:g}): {err}") from err

    half_logsnr = 0.5 * path.logsnr(ts0)
    if not bool(jnp.all(jnp.isfinite(half_logsnr))):
        raise ValueError("optimise_grid needs a finite log-SNR at both ends of the grid")
    lam_start, lam_end = half_logsnr[0], half_logsnr[-1]

    def grid(u):
        fractions = jnp.concatenate([jnp.zeros(1, u.dtype), jnp.cumsum(jax.nn.softmax(u))])
        ts = path.t_from_logsnr(2.0 * (lam_start + (lam_end - lam_start) * fractions))
        return ts.at[0].set(ts0[0]).at[-1].set(ts0[-1])

    def loss(u):
        x = _run(prep.static, conv.current_forward(), prep.eps0, grid(u), None,
                 prep.arrays)[0]
        return jnp.mean((x - reference) ** 2)

    u = jnp.log(jnp.maximum(jnp.diff(half_logsnr), 1e-6))  # start from the given grid
    optimiser = optax.adam(learning_rate)
    state = optimiser.init(u)

    @xla_options.jit
    def update(u, state):
        updates, state = optimiser.update(jax.grad(loss)(u), state)
        return optax.apply_updates(u, updates), state

    for _ in range(iterations):
        u, state = update(u, state)
    return grid(u)


__all__ = ["optimise_grid"]
