"""MeanFlow (Geng et al. 2025): a network ``u(z, r, t)`` of the average velocity
``u = (1/(t - r)) int_r^t v(z_tau, tau) dtau`` along the ODE, so one step
``z_r = z_t - (t - r) u`` jumps from ``t`` to ``r`` (data at 0, noise at 1, as in the paper).

Training uses the MeanFlow identity ``u = v - (t - r) du/dt`` with the total derivative
``du/dt = v . grad_z u + d_t u``, one ``jax.jvp`` of the network along ``(v, 0, 1)`` inside the
jitted step; the target ``v - (t - r) du/dt`` is held fixed (stop-gradient) and the loss is
the paper's adaptively weighted ``|u - u_tgt|^2 / sg(|u - u_tgt|^2 + c)^p``. ``v`` is the
path's conditional velocity ``alpha' x0 + sigma' eps`` (from scratch), or the teacher's ODE
velocity when ``config.distill.teacher`` is set. The network is the configured one wrapped by
:class:`diffjax.distill.nets.EndTime` (``cond["r"]``) with ``model.target = "velocity"``;
``r = t`` makes it the instantaneous velocity, as ``u(z, t, t) = v(z, t)``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffjax import targets
from diffjax.distill import nets, settings
from diffjax.distill import teacher as teacher_lib
from diffjax.distill.shortcut import check_velocity_model
from diffjax.paths import broadcast_to_x
from diffjax.training import setup as setup_lib
from diffjax.training import tasks
from diffjax.training.setup import Setup

Array = jax.Array


def target(u_fn: Callable[[Array, Array, Array], Array], z: Array, r: Array, t: Array,
           v: Array) -> tuple[Array, Array]:
    """``(u(z, r, t), v - (t - r) du/dt)`` with ``du/dt`` the jvp of ``u_fn(z, r, t)`` along
    ``(v, 0, 1)``. ``z, v: [B, ...]``; ``r, t: [B]``."""
    u, dudt = jax.jvp(u_fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
    return u, v - broadcast_to_x(t - r, z) * dudt


def draw_times(key: Array, n: int, mu: float, sigma: float, r_neq_t: float):
    """``(r, t)``, ``[n]`` each: two logit-normal draws, ``t`` the larger; ``r = t`` on all but
    a fraction ``r_neq_t`` of rows (the paper's ratio)."""
    k_a, k_b, k_m = jax.random.split(key, 3)
    a = jax.nn.sigmoid(mu + sigma * jax.random.normal(k_a, (n,)))
    b = jax.nn.sigmoid(mu + sigma * jax.random.normal(k_b, (n,)))
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    return jnp.where(jax.random.uniform(k_m, (n,)) < r_neq_t, r, t), t


@dataclasses.dataclass(frozen=True)
class MeanFlow:
    setup: Setup
    teacher: Optional[teacher_lib.Teacher]
    r_neq_t: float
    p: float
    c: float
    mu: float
    sigma: float

    def loss(self, params, batch, key, frozen, rows=None):
        path, den = self.setup.denoiser.path, self.setup.denoiser
        x0 = batch["x"]
        cond = tasks.condition(self.setup, batch)
        total = x0.shape[0] if rows is None else rows.total
        take = (lambda a: a) if rows is None else rows.take
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        r, t = draw_times(k_t, total, self.mu, self.sigma, self.r_neq_t)
        r, t = take(r).astype(x0.dtype), take(t).astype(x0.dtype)
        eps = take(jax.random.normal(k_eps, (total,) + x0.shape[1:], x0.dtype))
        z = path.marginal(x0, eps, t)
        if self.teacher is None:
            v = targets.from_x0_eps("velocity", path, x0, eps, t)
        else:
            x0_hat = self.teacher.x0_hat(teacher_lib.frozen_params(frozen), z, t, cond)
            v = targets.convert(x0_hat, z, t, path, "x0", "velocity")

        def u_fn(z_, r_, t_):
            return den.apply({"params": params}, z_, t_, {**cond, nets.R_KEY: r_}, train=True,
                             rngs={"dropout": k_drop})

        u, u_tgt = target(u_fn, z, r, t, v)
        sq = jnp.sum(jnp.reshape(u - jax.lax.stop_gradient(u_tgt), (x0.shape[0], -1)) ** 2, -1)
        weight = jax.lax.stop_gradient(1.0 / (sq + self.c) ** self.p)
        return jnp.mean(weight * sq), {"mse": jnp.mean(sq) / x0[0].size}


def build(setup: Setup, references) -> MeanFlow:
    config = setup.config
    check_velocity_model(config)
    teacher = (teacher_lib.teacher_of(setup, references)
               if teacher_lib.TEACHER_KEY in references else None)
    g = lambda k: float(settings.get(config, k))  # noqa: E731
    return MeanFlow(setup, teacher, g("r_neq_t"), g("adaptive_p"), g("adaptive_c"), g("t_mu"),
                    g("t_sigma"))


setup_lib.NETWORKS["meanflow"] = nets.end_time
tasks.register("meanflow", tasks.TaskSpec(build, teacher_lib.optional_teacher_key))
