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

Discrete-time paths (a ``num_timesteps`` attribute ``T``: ``ddpm``) were trained only at
``t = i/T``; there the model must be evaluated only at those times. Three integer spacings of
the ``N`` evaluation times over ``i in [i_lo, i_hi]`` (``t_min T .. t_max T``, default 1..T),
as diffusers' ``timestep_spacing`` (Lin et al. 2024, "Common diffusion noise schedules and
sample steps are flawed", Table 2):

==============  ========================================================================
``linspace``    ``i = round(linspace(i_hi, i_lo, N))``: both ends
``leading``     ``i = i_lo + r (N - 1 - j)``, ``r = (i_hi - i_lo + 1) // N``: ends at
                ``i_lo`` but never starts at ``i_hi`` (the flaw Lin et al. point out)
``trailing``    ``i = round(i_hi - r j)``, ``r = (i_hi - i_lo + 1) / N``: starts at ``i_hi``
==============  ========================================================================

When the sampler evaluates the model at the last grid time (``denoise_to_zero``, Heun) the
``K + 1`` grid times are the ``N = K + 1`` evaluation times; otherwise (DPM-Solver++ with
its reference convention, DEIS) ``N = K`` times are spaced over ``[i_lo + 1, i_hi]`` and the
grid ends at ``i_lo``, where the model is not evaluated. The continuous grids above are
rounded to the nearest ``i/T`` on a discrete path (an error if rounding repeats a time).
"""
from __future__ import annotations

import math

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

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


def linspace(num_points: int, i_lo: int, i_hi: int) -> np.ndarray:
    return np.round(np.linspace(i_hi, i_lo, num_points)).astype(np.int64)


def leading(num_points: int, i_lo: int, i_hi: int) -> np.ndarray:
    ratio = (i_hi - i_lo + 1) // num_points
    return i_lo + ratio * np.arange(num_points - 1, -1, -1, dtype=np.int64)


def trailing(num_points: int, i_lo: int, i_hi: int) -> np.ndarray:
    ratio = (i_hi - i_lo + 1) / num_points
    return np.round(i_hi - ratio * np.arange(num_points)).astype(np.int64)


GRIDS: dict[str, Callable[..., Array]] = {
    "uniform": uniform,
    "quadratic": quadratic,
    "logsnr": logsnr,
    "karras": karras,
    "leading": leading,
    "trailing": trailing,
    "linspace": linspace,
}
#: Grids defined through log-SNR: they need it finite at both ends.
LOGSNR_GRIDS = ("logsnr", "karras")
#: Integer spacings for discrete-time paths, ``(num_points, i_lo, i_hi) -> i: [N]``.
DISCRETE_GRIDS = ("leading", "trailing", "linspace")


def training_steps(path: Path) -> Optional[int]:
    """``T`` of a discrete-time path (trained at ``t = i/T`` only), None for continuous ones."""
    return getattr(path, "num_timesteps", None)


def check_grid(name: str, rho: float) -> None:
    if name not in GRIDS:
        raise ValueError(f"Unknown grid {name!r}; valid grids: {', '.join(GRIDS)}")
    if not rho > 0:
        raise ValueError(f"grid option rho must be > 0, got {rho}")


def time_grid(name: str, path: Path, num_intervals: int, t_min: float, t_max: float,
              rho: float = 7.0, dtype=None, final_evaluated: bool = True) -> Array:
    """The grid ``ts: [num_intervals + 1]``, decreasing from ``t_max`` to ``t_min`` exactly.

    On a discrete path (:func:`training_steps`) every time is a multiple of ``1/T``; a
    discrete spacing may start below ``t_max`` (``leading``) or end above ``t_min``
    (``trailing``, when ``final_evaluated``). ``final_evaluated``: whether the sampler
    evaluates the model at the last grid time.
    """
    check_grid(name, rho)
    dtype = dtype or jnp.result_type(float)
    if num_intervals == 0:
        return jnp.asarray([t_max], dtype)
    steps = training_steps(path)
    if name in DISCRETE_GRIDS:
        return _discrete_grid(name, steps, num_intervals, t_min, t_max, final_evaluated, dtype)
    ts = GRIDS[name](path, num_intervals, t_min, t_max, rho).astype(dtype)
    # Pin the ends: inverting log-SNR in float32 is not exact, and t_max / t_min are
    # where the prior and the returned sample live.
    ts = ts.at[0].set(t_max).at[-1].set(t_min)
    if steps is None:
        return ts
    i = np.round(np.asarray(ts, np.float64) * steps)
    if not np.all(np.diff(i) < 0):
        raise ValueError(
            f"grid {name!r} with {num_intervals} intervals, rounded to the training times "
            f"t = i/{steps} of the discrete path {path.name!r}, repeats a time: use fewer "
            f"steps or a discrete spacing ({', '.join(DISCRETE_GRIDS)})")
    return jnp.asarray(i / steps, dtype)


def _discrete_grid(name: str, steps: Optional[int], num_intervals: int, t_min: float,
                   t_max: float, final_evaluated: bool, dtype) -> Array:
    if steps is None:
        raise ValueError(f"grid {name!r} is an integer timestep spacing for discrete-time paths "
                         "(ddpm); on a continuous path use one of "
                         f"{', '.join(g for g in GRIDS if g not in DISCRETE_GRIDS)}")
    i_lo, i_hi = math.ceil(t_min * steps - 1e-6), math.floor(t_max * steps + 1e-6)
    num_points = num_intervals + 1 if final_evaluated else num_intervals
    lo = i_lo if final_evaluated else i_lo + 1
    if num_points > i_hi - lo + 1:
        raise ValueError(f"grid {name!r} needs {num_points} distinct training times in "
                         f"[{lo}/{steps}, {i_hi}/{steps}]; there are {i_hi - lo + 1}: use fewer "
                         "steps")
    i = GRIDS[name](num_points, lo, i_hi)
    if not final_evaluated:
        i = np.append(i, i_lo)
    return jnp.asarray(i / steps, dtype)
