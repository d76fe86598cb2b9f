"""Regression targets and the one place where a model output becomes ``(x0_hat, eps_hat)``.

At fixed ``(x_t, t)`` every target is linear in ``(x0, eps)``; with
``x_t = alpha x0 + sigma eps`` each is an invertible 2x2 linear system:

============  =====================================================  =====================
target        definition                                             source
============  =====================================================  =====================
``eps``       ``eps``                                                Ho et al. 2020
``x0``        ``x0``                                                 (denoiser, EDM's D)
``score``     ``grad log p_t(x_t | x0) = -eps / sigma``              Song et al. 2021
``v``         ``(alpha eps - sigma x0) / sqrt(alpha^2 + sigma^2)``   Salimans & Ho 2022
``velocity``  ``dx_t/dt = alpha' x0 + sigma' eps``                   Lipman et al. 2022
============  =====================================================  =====================

``v`` on non-VP paths: we use Salimans & Ho's ``v`` of the rescaled variable
``x_t / sqrt(alpha^2 + sigma^2)``, which lies on a VP path with angle
``phi = atan(sigma/alpha)``; on VP paths this is exactly ``alpha eps - sigma x0``, and on
every path it is a unit-variance target for unit-variance data.

:func:`eps_mse_factor` gives, per target, the factor ``c(t)`` with
``|out_hat - out|^2 = c(t) |eps_hat - eps|^2`` at fixed ``x_t``: that is what lets any loss
weighting be chosen independently of the output parameterisation (Kingma & Gao 2023).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.paths import Path, broadcast_to_x

Array = jax.Array

TARGETS = ("eps", "x0", "score", "v", "velocity")


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    return target


def _coefs(path: Path, t: Array, x: Array):
    a = broadcast_to_x(path.alpha(t), x)
    s = broadcast_to_x(path.sigma(t), x)
    return a, s


def from_x0_eps(target: str, path: Path, x0: Array, eps: Array, t: Array) -> Array:
    """The training target (or the prediction implied by ``(x0_hat, eps_hat)``).

    Args:
      x0, eps: ``[B, ...]``; t: ``[B]``.
    """
    check_target(target)
    a, s = _coefs(path, t, x0)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "score":
        return -eps / s
    if target == "v":
        r = jnp.sqrt(a * a + s * s)
        return (a * eps - s * x0) / r
    da = broadcast_to_x(path.d_alpha(t), x0)
    ds = broadcast_to_x(path.d_sigma(t), x0)
    return da * x0 + ds * eps


def to_x0_eps(target: str, path: Path, output: Array, x_t: Array, t: Array) -> tuple[Array, Array]:
    """Converts a model output in ``target`` space at ``(x_t, t)`` to ``(x0_hat, eps_hat)``.

    Each branch solves the 2x2 system in the form that is best conditioned for it:
    ``eps`` needs ``alpha > 0`` and ``x0``/``score`` need ``sigma > 0``; ``v`` and
    ``velocity`` are well defined on the whole path (their determinants,
    ``alpha^2 + sigma^2`` and ``alpha sigma' - sigma alpha' = -alpha sigma lambda'/2``, stay
    positive), which is why flow models can be integrated to ``t = 1`` and ``t = 0``.
    """
    check_target(target)
    a, s = _coefs(path, t, x_t)
    if target == "eps":
        eps = output
        return (x_t - s * eps) / a, eps
    if target == "x0":
        x0 = output
        return x0, (x_t - a * x0) / s
    if target == "score":
        eps = -s * output
        return (x_t + s * s * output) / a, eps
    if target == "v":
        r = jnp.sqrt(a * a + s * s)
        a_n, s_n, x_n = a / r, s / r, x_t / r
        return a_n * x_n - s_n * output, s_n * x_n + a_n * output
    da = broadcast_to_x(path.d_alpha(t), x_t)
    ds = broadcast_to_x(path.d_sigma(t), x_t)
    det = a * ds - s * da
    return (ds * x_t - s * output) / det, (a * output - da * x_t) / det


def convert(output: Array, x_t: Array, t: Array, path: Path, source: str, target: str) -> Array:
    """Re-expresses a model output given in ``source`` space in ``target`` space."""
    check_target(target)
    if source == target:
        check_target(source)
        return output
    x0, eps = to_x0_eps(source, path, output, x_t, t)
    return from_x0_eps(target, path, x0, eps, t)


def eps_mse_factor(target: str, path: Path, t: Array) -> Array:
    """``c(t)`` with ``|out_hat - out|^2 = c(t) |eps_hat - eps|^2`` at fixed ``(x_t, t)``; ``[B]``.

    eps: 1; x0: sigma^2/alpha^2; score: 1/sigma^2; v: (alpha^2 + sigma^2)/alpha^2;
    velocity: (sigma' - alpha' sigma/alpha)^2.
    """
    check_target(target)
    a, s = path.alpha(t), path.sigma(t)
    if target == "eps":
        return jnp.ones_like(a)
    if target == "x0":
        return (s / a) ** 2
    if target == "score":
        return 1.0 / s**2
    if target == "v":
        return 1.0 + (s / a) ** 2
    return (path.d_sigma(t) - path.d_alpha(t) * s / a) ** 2
