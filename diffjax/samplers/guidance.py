"""Guidance (classifier-free and autoguidance), SDEdit starts and inpainting for :func:`sample`.

Both kinds of guidance mix the denoiser of the model being sampled, ``D_main``, with a second
one, ``D_u``, in the ``(x0_hat, eps_hat)`` pair, with ``w = 1`` the main model alone and
``w = 0`` the second one alone:

    D_w = D_u + w (D_main - D_u).

* Classifier-free guidance (Ho & Salimans 2022): ``D_u`` is the same model under the null
  condition ``uncond``. Both come from ONE model call on the batch ``[x; x]`` with the
  condition pytree ``concat(cond, uncond)`` (every kind at once: label, text, control ...);
  that call counts as one NFE. Every target is affine in ``(x0, eps)`` at fixed ``(x_t, t)``
  with coefficients that do not depend on the condition, so mixing the pair is the same as
  mixing in the model's own target space (``eps = eps_u + w (eps_c - eps_u)``).
* Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of
  itself"): ``D_u`` is another model ``guide_fn`` (a smaller or less-trained one, same
  path, any target; both are converted to ``(x0_hat, eps_hat)`` before mixing) under the
  same condition. One call of each model per evaluation.

A guidance interval ``(lo, hi)`` in the path's noise level ``sigma / alpha`` (Kynkäänniemi
et al. 2024) guides only where ``lo <= sigma/alpha <= hi``; elsewhere the main model alone is
called (batch ``B``, not ``2B``; a ``lax.cond`` so the other branch costs nothing).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from diffjax import conditions
from diffjax import targets as targets_lib
from diffjax.paths import Path

Array = jax.Array
Denoise = Callable[[Array, Array], tuple[Array, Array]]   # (x [B, ...], t [B]) -> (x0, eps)


def bind(model_fn: Callable, has_params: bool, params: Any,
         cond: Optional[Mapping[str, Array]]) -> Callable[[Array, Array, Any], Array]:
    """The model as ``f(x, t, cond)``: ``model_fn(params, x, t, cond)`` with parameters, else
    the closure ``model_fn(x, t, cond)`` (``model_fn(x, t)`` when there is no condition)."""
    if has_params:
        return lambda x, t, c: model_fn(params, x, t, c)
    if cond is None:
        return lambda x, t, c: model_fn(x, t)
    return lambda x, t, c: model_fn(x, t, c)


def mix(main: tuple[Array, Array], other: tuple[Array, Array], w: float):
    """``other + w (main - other)`` for each of ``(x0_hat, eps_hat)``."""
    return tuple(o + w * (m - o) for m, o in zip(main, other))


def guided_denoiser(path: Path, target: str, model: Callable, cond, *, w: float,
                    uncond=None, guide: Optional[Callable] = None,
                    guide_target: Optional[str] = None,
                    interval: Optional[tuple[float, float]] = None) -> Denoise:
    """``(x, t [B]) -> (x0_hat, eps_hat)`` of the main model, guided as the module says.

    model, guide: ``f(x, t, cond)`` (:func:`bind`). ``uncond`` (a condition of the same keys
    as ``cond``) selects classifier-free guidance, ``guide`` autoguidance; with neither, or
    ``w = 1``, the main model alone. ``w`` is a Python number or a traced scalar; a traced
    ``w`` always mixes (the caller decides ``w = 0`` and ``w = 1`` statically), so one
    compiled sampler serves every scale.
    """
    fixed = isinstance(w, (int, float))
    def convert(tgt, out, x, t):
        return targets_lib.to_x0_eps(tgt, path, out, x, t)

    def main(x, t):
        return convert(target, model(x, t, cond), x, t)

    if (fixed and w == 1.0) or (uncond is None and guide is None):
        return main
    if guide is not None:
        def other(x, t):
            return convert(guide_target or target, guide(x, t, cond), x, t)

        def both(x, t):
            return main(x, t), other(x, t)
    else:
        def other(x, t):
            return convert(target, model(x, t, uncond), x, t)

        both_cond = conditions.concat(cond, uncond)

        def both(x, t):
            xx, tt = jnp.concatenate([x, x]), jnp.concatenate([t, t])
            x0, eps = convert(target, model(xx, tt, both_cond), xx, tt)
            (x0_c, x0_u), (eps_c, eps_u) = jnp.split(x0, 2), jnp.split(eps, 2)
            return (x0_c, eps_c), (x0_u, eps_u)

    if fixed and w == 0.0:
        guided = other
    else:
        def guided(x, t):
            return mix(*both(x, t), w)

    if interval is None:
        return guided
    lo, hi = interval

    def in_interval(x, t):
        level = jnp.exp(-0.5 * path.logsnr(t[0]))      # sigma / alpha, one time per call
        return jax.lax.cond((lo <= level) & (level <= hi), guided, main, x, t)

    return in_interval


def noised(path: Path, x0: Array, eps: Array, t: Array) -> Array:
    """``alpha(t) x0 + sigma(t) eps`` at a scalar ``t`` (the SDEdit start, Meng et al. 2022)."""
    return path.alpha(t) * x0 + path.sigma(t) * eps


def inpainting_constraint(path: Path, known: Array, mask: Array, eps: Array,
                          fresh_noise: bool) -> Callable[[Array, Array, Array], Array]:
    """``(x, t, key) -> x`` with the known region replaced by ``alpha(t) known + sigma(t) eps``.

    This puts the known pixels at the right noise level for the sample's time (Song et al.
    2021, App. I.2; Lugmayr et al. 2022 without resampling). ``mask`` is 1 where ``known``
    holds. ``fresh_noise`` draws a new ``eps`` each step (a draw from ``q(x_t | known)``);
    otherwise the same ``eps`` is used all the way (one consistent forward trajectory).
    """
    mask = jnp.broadcast_to(mask, known.shape).astype(known.dtype)

    def constrain(x, t, key):
        noise = jax.random.normal(key, x.shape, x.dtype) if fresh_noise else eps
        return mask * noised(path, known, noise, t) + (1.0 - mask) * x

    return constrain


def impose_known(x: Array, known: Array, mask: Array) -> Array:
    """The final sample: the known pixels exactly (where ``mask`` is 1)."""
    mask = jnp.broadcast_to(mask, known.shape).astype(known.dtype)
    return mask * known + (1.0 - mask) * x
