"""Reads a network's raw output as a model in target space, plainly or with EDM preconditioning.

Networks in :mod:`diffjax.models` map ``(x, noise_cond, cond) -> F`` and know nothing of
paths. :class:`Denoiser` decides what they see and how ``F`` is read:

* ``preconditioning="none"``: ``noise_cond = t`` and ``F`` is the prediction of ``target``.
* ``preconditioning="edm"`` (Karras et al. 2022, Table 1): on any path, with the VE-equivalent
  noise level ``s = sigma/alpha`` and ``x~ = x/alpha``,

      D(x; s) = c_skip(s) x~ + c_out(s) F(c_in(s) x~, c_noise(s)),
      c_skip = sd^2 / (s^2 + sd^2),  c_out = s sd / sqrt(s^2 + sd^2),
      c_in = 1 / sqrt(s^2 + sd^2),   c_noise = log(s) / 4,

  and ``D`` is an ``x0`` prediction (so ``target`` must be ``"x0"``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from diffjax import targets as targets_lib
from diffjax.paths import Path, broadcast_to_x

Array = jax.Array

PRECONDITIONINGS = ("none", "edm")


def edm_coefficients(sigma: Array, sigma_data: float = 0.5) -> tuple[Array, Array, Array, Array]:
    """``(c_skip, c_out, c_in, c_noise)`` of Karras et al. 2022 (Table 1, "Ours")."""
    sd2 = sigma_data**2
    s2 = sigma**2
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data / jnp.sqrt(s2 + sd2)
    c_in = 1.0 / jnp.sqrt(s2 + sd2)
    c_noise = 0.25 * jnp.log(sigma)
    return c_skip, c_out, c_in, c_noise


def check_preconditioning(preconditioning: str, target: str) -> None:
    if preconditioning not in PRECONDITIONINGS:
        raise ValueError(f"Unknown preconditioning {preconditioning!r}; valid choices: "
                         f"{', '.join(PRECONDITIONINGS)}")
    targets_lib.check_target(target)
    if preconditioning == "edm" and target != "x0":
        raise ValueError(f"preconditioning='edm' makes the model an x0 predictor (EDM's D); "
                         f"set target='x0' (got target={target!r})")


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """A Flax network read as a model in ``target`` space.

    ``apply(variables, x, t, cond, train=..., rngs=...)`` returns the prediction of
    ``target`` at ``x: [B, ...]``, ``t: [B]`` under the condition dict ``cond``
    (:mod:`diffjax.conditions`; None or ``{}`` = none). :meth:`fn` is the pure
    ``f(params, x, t, cond)`` that :func:`diffjax.sample` takes with ``params=`` (parameters
    traced, never constants); ``model_fn(variables)`` closes over them instead.
    """

    net: Any
    path: Path
    target: str
    preconditioning: str = "none"
    sigma_data: float = 0.5

    def __post_init__(self):
        check_preconditioning(self.preconditioning, self.target)

    def apply(self, variables, x: Array, t: Array, cond: Optional[Mapping[str, Array]] = None,
              *, train: bool = False, rngs: Optional[dict] = None) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        cond = dict(cond or {})
        kwargs = dict(train=train, rngs=rngs or {})
        if self.preconditioning == "none":
            return self.net.apply(variables, x, t, cond, **kwargs)
        alpha = broadcast_to_x(self.path.alpha(t), x)
        sigma_ve = jnp.exp(-0.5 * self.path.logsnr(t))            # sigma / alpha, [B]
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma_ve, self.sigma_data)
        x_ve = x / alpha
        f = self.net.apply(variables, broadcast_to_x(c_in, x) * x_ve, c_noise, cond, **kwargs)
        return broadcast_to_x(c_skip, x) * x_ve + broadcast_to_x(c_out, x) * f

    def fn(self, params, x: Array, t: Array, cond: Optional[Mapping[str, Array]] = None) -> Array:
        """``f(params, x, t, cond)`` in eval mode (no dropout), for ``diffjax.sample(params=...)``."""
        return self.apply({"params": params}, x, t, cond)

    def model_fn(self, variables):
        """``f(x, t, cond=None)`` closed over ``variables`` (eval mode, no dropout)."""
        return lambda x, t, cond=None: self.apply(variables, x, t, cond)
