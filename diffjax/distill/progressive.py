"""Progressive distillation (Salimans & Ho 2022): a student's one DDIM step matches two of
its teacher's, round after round, halving the step count each round.

Round ``k`` of ``config.distill.steps = (N_0, N_1, ...)`` (each half the one before) trains a
student of ``N = N_k`` steps on the grid ``t_i = t_max i / N`` from a teacher of ``2N`` steps
(``config.distill.teacher``: the previous round's workdir, or any run/mixture for round 1);
the student starts as its teacher when the teacher is a run with the same network
(``config.distill.init_from_teacher``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from diffjax import configs, paths, targets
from diffjax.distill import ode, settings
from diffjax.distill import teacher as teacher_lib
from diffjax.paths import Path, broadcast_to_x
from diffjax.training import tasks
from diffjax.training.setup import Setup

Array = jax.Array


def check_rounds(steps: Sequence[int], round_: int) -> tuple[int, int]:
    """``(teacher steps, student steps)`` of round ``round_`` of ``steps``.

    Raises:
      ValueError: a step count below 1, a schedule that does not halve, or a round outside it.
    """
    steps = tuple(steps)
    if len(steps) < 2 or any(not isinstance(n, int) or n < 1 for n in steps):
        raise ValueError(f"config.distill.steps={steps} must list at least two step counts, "
                         "each an int >= 1 (teacher steps of round 1, then each round's)")
    for a, b in zip(steps, steps[1:]):
        if a != 2 * b:
            raise ValueError(f"config.distill.steps={steps} must halve every round: {a} -> {b} "
                             f"does not (expected {a} -> {a // 2 if a % 2 == 0 else a / 2})")
    if not 1 <= round_ < len(steps):
        raise ValueError(f"config.distill.round={round_} must be in 1..{len(steps) - 1} for "
                         f"config.distill.steps={steps}")
    return steps[round_ - 1], steps[round_]


def target(x0_teacher: Callable[[Array, Array], Array], path: Path, z_t: Array, t: Array,
           dt: float) -> Array:
    """The x0 target of a student step from ``t`` to ``t - dt`` (Salimans & Ho, Alg. 2).

    Two teacher DDIM steps ``t -> t - dt/2 -> t - dt`` land on ``z''``; the target
    ``x~ = (z'' - (sigma''/sigma) z_t) / (alpha'' - (sigma''/sigma) alpha_t)`` is the ``x0``
    whose single DDIM step from ``z_t`` lands on ``z''`` too. ``z_t: [B, ...]``, ``t: [B]``.
    """
    t1, t2 = t - 0.5 * dt, t - dt
    z1 = ode.ddim_step(path, z_t, x0_teacher(z_t, t), t, t1)
    z2 = ode.ddim_step(path, z1, x0_teacher(z1, t1), t1, t2)
    ratio = broadcast_to_x(path.sigma(t2) / path.sigma(t), z_t)
    a_t, a_2 = broadcast_to_x(path.alpha(t), z_t), broadcast_to_x(path.alpha(t2), z_t)
    return (z2 - ratio * z_t) / (a_2 - ratio * a_t)


@dataclasses.dataclass(frozen=True)
class Progressive:
    """Loss ``max(SNR(t), 1) |x0_student - x~|^2`` (the paper's truncated-SNR weighting),
    ``t = t_max i / n`` with ``i ~ U{1..n}`` (the student's grid; ``t_max`` the path's)."""

    setup: Setup
    teacher: teacher_lib.Teacher
    n: int

    def loss(self, params, batch, key, frozen, rows=None):
        path, den = self.setup.denoiser.path, self.setup.denoiser
        x0 = batch["x"]
        cond = tasks.condition(self.setup, batch)
        total = x0.shape[0] if rows is None else rows.total
        take = (lambda a: a) if rows is None else rows.take
        k_i, k_eps = jax.random.split(key)
        dt = path.t_max / self.n
        t = take(jax.random.randint(k_i, (total,), 1, self.n + 1) * dt).astype(x0.dtype)
        eps = take(jax.random.normal(k_eps, (total,) + x0.shape[1:], x0.dtype))
        z_t = path.marginal(x0, eps, t)
        tp = teacher_lib.frozen_params(frozen)
        x_tilde = jax.lax.stop_gradient(
            target(lambda x, s: self.teacher.x0_hat(tp, x, s, cond), path, z_t, t, dt))
        out = den.apply({"params": params}, z_t, t, cond, train=True,
                        rngs={"dropout": jax.random.fold_in(key, 7)})
        x0_hat = targets.to_x0_eps(den.target, path, out, z_t, t)[0]
        weight = jnp.maximum(jnp.exp(path.logsnr(t)), 1.0)
        err = jnp.mean(jnp.reshape(x0_hat - x_tilde, (x0.shape[0], -1)) ** 2, axis=-1)
        return jnp.mean(weight * err), {}


_initialize = teacher_lib.start_from_teacher


def build(setup: Setup, references) -> Progressive:
    _, n = check_rounds(settings.get(setup.config, "steps"),
                        int(settings.get(setup.config, "round")))
    return Progressive(setup, teacher_lib.teacher_of(setup, references), n)


def references(config: ml_collections.ConfigDict) -> dict[str, str]:
    check_rounds(settings.get(config, "steps"), int(settings.get(config, "round")))
    return teacher_lib.teacher_and_start_keys(config)


def sampling_defaults(config: ml_collections.ConfigDict, sampling) -> dict:
    """The student's own grid when it is sampled by ``ddim`` at ``n = num_steps > 1`` and
    neither ``grid`` nor ``t_min`` is set: uniform down to ``t_min = t_max / n``, i.e. DDIM
    steps from ``t_max i / n`` to ``t_max (i - 1) / n`` for ``i = n..2``, then ``x0_hat`` at
    ``t_max / n`` (ddim's final step, which its NFE counts): the ``n`` student steps of
    training (Salimans & Ho, Alg. 2). The sampler's default grid would end at the path's
    ``t_min`` and give the student ``n - 1`` steps it was not trained on."""
    n = int(sampling.num_steps)
    if (sampling.sampler != "ddim" or n < 2 or sampling.get("grid") is not None
            or sampling.get("t_min") is not None):
        return {}
    t_max = sampling.get("t_max")
    if t_max is None:
        t_max = paths.get(config.path.name, **configs.path_kwargs(config.path)).t_max
    return {"grid": "uniform", "t_min": float(t_max) / n}


tasks.register("progressive", tasks.TaskSpec(build, references, _initialize,
                                             sampling_defaults=sampling_defaults))
