"""Time grids ``t_max = t_0 > t_1 > ... > t_K = t_min`` for the fixed-step samplers.

Every grid is a function ``(path, num_intervals, t_min, t_max, rho) -> ts: [K + 1]``; the
registry :data:`GRIDS` names them. Grids are defined on the path's own time ``t`` or, through
:meth:`Path.t_from_logsnr`, on its log-SNR ``lambda(t)`` -- so one name means the same noise
levels on every path with the same ``lambda`` range.

==============  ===========================================================  ===================
name            spacing                                                      source
==============  ===========================================================  ===================
``uniform``     uniform in ``t``                                             Ho et al. 2020
``quadratic``   ``t = t_min + (t_max - t_min) u^2``, ``u`` uniform           Song et al. 2021
                (dense near data)                                            (DDIM, "quad")
``logsnr``      uniform in ``lambda``                                        Lu et al. 2022
``karras``      uniform in ``s^(1/rho)``, ``s = sigma/alpha = exp(-lambda/2)``  Karras et al. 2022
                (the VE-equivalent noise level), ``rho = 7`` by default      (EDM, eq. 5)
==============  ===========================================================  ===================

``logsnr`` and ``karras`` need a finite log-SNR at both ends (``alpha(t_max) > 0`` and
``sigma(t_min) > 0``); :func:`check_grid` says so before any compute.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.paths import Path

Array = jax.Array


def uniform(path: Path, num_intervals: int, t_min: float, t_max: float, rho: float) -> Array:
    return jnp.linspace(t_max, t_min, num_intervals + 1)


def quadratic(path: Path, num_intervals: int, t_min: float, t_max: float, rho: float) -> Array:
    u = jnp.linspace(1.0, 0.0, num_intervals + 1)
    return t_min + (t_max - t_min) * u**2


def logsnr(path: Path, num_intervals: int, t_min: float, t_max: float, rho: float) -> Array:
    lam = jnp.linspace(path.logsnr(jnp.asarray(t_max)), path.logsnr(jnp.asarray(t_min)),
                       num_intervals + 1)
    return path.t_from_logsnr(lam)


def karras(path: Path, num_intervals: int, t_min: float, t_max: float, rho: float) -> Array:
    root_max = jnp.exp(-0.5 * path.logsnr(jnp.asarray(t_max)) / rho)
    root_min = jnp.exp(-0.5 * path.logsnr(jnp.asarray(t_min)) / rho)
    s = jnp.linspace(root_max, root_min, num_intervals + 1) ** rho
    return path.t_from_logsnr(-2.0 * jnp.log(s))


GRIDS: dict[str, Callable[..., Array]] = {
    "uniform": uniform,
    "quadratic": quadratic,
    "logsnr": logsnr,
    "karras": karras,
}
#: Grids defined through log-SNR: they need it finite at both ends.
LOGSNR_GRIDS = ("logsnr", "karras")


def check_grid(name: str, rho: float) -> None:
    if name not in GRIDS:
        raise ValueError(f"Unknown grid {name!r}; valid grids: {', '.join(GRIDS)}")
    if not rho > 0:
        raise ValueError(f"grid option rho must be > 0, got {rho}")


def time_grid(name: str, path: Path, num_intervals: int, t_min: float, t_max: float,
              rho: float = 7.0, dtype=None) -> Array:
    """The grid ``ts: [num_intervals + 1]``, decreasing from ``t_max`` to ``t_min`` exactly."""
    check_grid(name, rho)
    dtype = dtype or jnp.result_type(float)
    if num_intervals == 0:
        return jnp.asarray([t_max], dtype)
    ts = GRIDS[name](path, num_intervals, t_min, t_max, rho).astype(dtype)
    # Pin the ends: inverting log-SNR in float32 is not exact, and t_max / t_min are
    # where the prior and the returned sample live.
    return ts.at[0].set(t_max).at[-1].set(t_min)
