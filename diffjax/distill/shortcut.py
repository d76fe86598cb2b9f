"""Shortcut models (Frans et al. 2024): one network ``s(x_t, t, d)`` that jumps a step of any
size ``d``, ``x_{t-d} = x_t - d s``, trained from scratch.

Time runs from data (0) to noise (1) here, the paper's the other way. The network is the
configured one wrapped by :class:`diffjax.distill.nets.EndTime` (``cond["r"] = t - d``), with
``model.target = "velocity"``. Rows split in two (the paper's 1/4 : 3/4):

* self-consistency: ``d = 2^-j``, ``j ~ U{0..L-1}``, ``t ~ U{d, 2d, ..., 1}``; the target is the
  mean of two half steps of the model itself (stop-gradient),
  ``(s(x_t, t, d/2) + s(x_t - d/2 s(x_t, t, d/2), t - d/2, d/2)) / 2``, where the finest
  level's half steps use ``d = 0``;
* flow matching: ``d = 0`` and the path's velocity ``alpha' x0 + sigma' eps``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from diffjax import targets
from diffjax.distill import nets, settings
from diffjax.paths import broadcast_to_x
from diffjax.training import setup as setup_lib
from diffjax.training import tasks
from diffjax.training.setup import Setup

Array = jax.Array


def check_velocity_model(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError unless ``model.target = "velocity"`` without preconditioning."""
    if config.model.target != "velocity" or config.model.preconditioning != "none":
        raise ValueError(f"config.task={config.task!r} reads the network as an average velocity: "
                         "set model.target='velocity' and model.preconditioning='none' (got "
                         f"{config.model.target!r}, {config.model.preconditioning!r})")


def bootstrap_target(u_fn, x_t: Array, t: Array, d: Array, finest: Array) -> Array:
    """The mean of two half steps of ``u_fn(x, t, r)`` (step ``d/2``, or ``0`` where
    ``finest``): the velocity of the two-step jump from ``t`` to ``t - d``. ``[B, ...]``."""
    h = d / 2
    h_query = jnp.where(finest, 0.0, h)
    s1 = u_fn(x_t, t, t - h_query)
    x_mid = x_t - broadcast_to_x(h, x_t) * s1
    s2 = u_fn(x_mid, t - h, t - h - h_query)
    return 0.5 * (s1 + s2)


@dataclasses.dataclass(frozen=True)
class Shortcut:
    setup: Setup
    levels: int
    bootstrap_fraction: float

    def loss(self, params, batch, key, frozen, rows=None):
        del frozen
        path, den = self.setup.denoiser.path, self.setup.denoiser
        x0 = batch["x"]
        cond = tasks.condition(self.setup, batch)
        total = x0.shape[0] if rows is None else rows.total
        take = (lambda a: a) if rows is None else rows.take
        k_j, k_m, k_t, k_eps, k_drop = jax.random.split(key, 5)
        j = jax.random.randint(k_j, (total,), 0, self.levels)
        d_boot = 2.0 ** (-j.astype(jnp.float32))
        m = jax.random.randint(k_m, (total,), 1, 2 ** self.levels + 1) % (2 ** j) + 1
        t_boot = m * d_boot
        boot = jnp.arange(total) < int(round(self.bootstrap_fraction * total))
        t_fm = jax.random.uniform(k_t, (total,))
        t = take(jnp.where(boot, t_boot, t_fm)).astype(x0.dtype)
        d = take(jnp.where(boot, d_boot, 0.0)).astype(x0.dtype)
        boot, finest = take(boot), take(j == self.levels - 1)
        eps = take(jax.random.normal(k_eps, (total,) + x0.shape[1:], x0.dtype))
        x_t = path.marginal(x0, eps, t)
        rngs = {"dropout": k_drop}

        def u_fn(p, x, s, r):
            return den.apply({"params": p}, x, s, {**cond, nets.R_KEY: r}, train=True, rngs=rngs)

        fixed = jax.lax.stop_gradient(params)
        v_boot = jax.lax.stop_gradient(
            bootstrap_target(lambda x, s, r: u_fn(fixed, x, s, r), x_t, t, d, finest))
        v_fm = targets.from_x0_eps("velocity", path, x0, eps, t)
        target = jnp.where(broadcast_to_x(boot, x0), v_boot, v_fm)
        err = jnp.mean(jnp.reshape(u_fn(params, x_t, t, t - d) - target, (x0.shape[0], -1)) ** 2,
                       axis=-1)
        return jnp.mean(err), {"loss_bootstrap": jnp.sum(err * boot) / jnp.maximum(boot.sum(), 1)}


def build(setup: Setup, references) -> Shortcut:
    del references
    config = setup.config
    check_velocity_model(config)
    levels = int(settings.get(config, "log2_levels"))
    frac = float(settings.get(config, "bootstrap_fraction"))
    if levels < 1 or not 0.0 <= frac < 1.0:
        raise ValueError(f"config.distill.log2_levels={levels} must be >= 1 and "
                         f"bootstrap_fraction={frac} in [0, 1)")
    return Shortcut(setup, levels, frac)


setup_lib.NETWORKS["shortcut"] = nets.end_time
tasks.register("shortcut", tasks.TaskSpec(build))
