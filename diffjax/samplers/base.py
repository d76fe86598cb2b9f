"""What every sampler sees: the denoiser pair ``(x0_hat, eps_hat)``, the path and one scan.

A sampler is a function ``fn(problem, x, ts, keys, plan, **options) -> (x, trajectory)``
that walks the grid ``ts: [K + 1]`` (``t_max -> t_min``) with one ``lax.scan``. The random
keys are split outside the compiled loop (``keys: [K, 2]``, or None for deterministic runs):
threefry key splitting dominates the compile time of small programs. It never sees
the model's parameterisation: :func:`diffjax.samplers.sample` converts the model output once,
in :attr:`Problem.denoise`, with :func:`diffjax.targets.to_x0_eps`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from diffjax.paths import Path

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Plan:
    """How ``num_steps`` model evaluations are spent.

    ``num_intervals`` grid intervals ``K`` are integrated with ``evals`` evaluations; then
    ``denoise`` (0 or 1) more evaluation replaces ``x_{t_min}`` by ``x0_hat(x_{t_min})``.
    """

    num_intervals: int
    evals: int
    denoise: int
    keep_trajectory: bool = False

    @property
    def nfe(self) -> int:
        return self.evals + self.denoise


@dataclasses.dataclass(frozen=True)
class Problem:
    """The model as samplers see it.

    denoise: ``(x [B, ...], t scalar) -> (x0_hat, eps_hat)``, one model evaluation.
    constrain: ``(x, t, key) -> x`` applied after every step (inpainting; identity otherwise).
    denoise_to: ``(x, t, s) -> (x0_hat, eps_hat)`` of the model told the end ``s`` of its step
      (few-step models, :mod:`.few_step`).
    """

    path: Path
    denoise: Callable[[Array, Array], tuple[Array, Array]]
    constrain: Callable[[Array, Array, Array], Array]
    denoise_to: Optional[Callable[[Array, Array, Array], tuple[Array, Array]]] = None

    def velocity(self, x: Array, t: Array) -> Array:
        """Probability-flow ODE ``dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat``."""
        x0, eps = self.denoise(x, t)
        return self.path.d_alpha(t) * x0 + self.path.d_sigma(t) * eps


def run_grid(problem: Problem, step: Callable, x: Array, ts: Array, keys: Optional[Array],
             plan: Plan, state: Any = ()) -> tuple[Array, Optional[Array]]:
    """Scans ``x, state = step(x, state, i, t, s, key)`` over consecutive grid pairs ``t > s``.

    keys: ``[K, 2]`` keys (per step: the step's and the constraint's), drawn outside the
      loop, or None for deterministic runs (then ``key`` is None: no PRNG in the program).

    Returns ``x`` at ``t_min`` and, if ``plan.keep_trajectory``, ``x`` at every grid time,
    ``[K + 1, ...]``.
    """
    num = ts.shape[0] - 1

    def body(carry, inputs):
        x, state = carry
        i, t, s, k = inputs
        k_step, k_constrain = (None, None) if k is None else (k[0], k[1])
        x, state = step(x, state, i, t, s, k_step)
        x = problem.constrain(x, s, k_constrain)
        return (x, state), (x if plan.keep_trajectory else None)

    if num == 0:
        return x, (x[None] if plan.keep_trajectory else None)
    (x_end, _), traj = jax.lax.scan(body, (x, state), (jnp.arange(num), ts[:-1], ts[1:], keys))
    if plan.keep_trajectory:
        traj = jnp.concatenate([x[None], traj], axis=0)
    return x_end, traj


def half_logsnr(path: Path, t: Array) -> Array:
    """DPM-Solver's ``lambda = log(alpha / sigma)``, half of :meth:`Path.logsnr`."""
    return 0.5 * path.logsnr(t)
