"""Classifier-free guidance, SDEdit starts and inpainting constraints for :func:`sample`.

Classifier-free guidance (Ho & Salimans 2022), with the convention that ``w = 1`` is the
conditional model and ``w = 0`` the unconditional one:

    out = out_u + w (out_c - out_u),   e.g.  eps = eps_u + w (eps_c - eps_u).

Every target is affine in ``(x0, eps)`` at fixed ``(x_t, t)`` with coefficients that do not
depend on the label, so mixing outputs in the model's own target space and then converting
is the same as mixing ``eps`` (or ``x0``, or scores). The conditional and unconditional
predictions come from ONE model call on the batch ``[x; x]`` with labels ``[label; null]``,
``null = num_classes`` (the label dropped in training); that call counts as one NFE.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffjax.paths import Path

Array = jax.Array


def guided_model(model_fn: Callable, label: Array, guidance_scale: float,
                 num_classes: Optional[int]) -> Callable[[Array, Array], Array]:
    """``f(x, t, label)`` with guidance as an unconditional-signature ``g(x, t)``.

    label: ``[B]`` ints. ``guidance_scale`` 1 calls the conditional model only, 0 the
    unconditional one only; anything else one batched call of size ``2B``.
    """
    if guidance_scale == 1.0:
        return lambda x, t: model_fn(x, t, {"label": label})
    null = jnp.full_like(label, num_classes)
    if guidance_scale == 0.0:
        return lambda x, t: model_fn(x, t, {"label": null})
    both_labels = jnp.concatenate([label, null])

    def fn(x, t):
        out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), {"label": both_labels})
        out_c, out_u = jnp.split(out, 2)
        return out_u + guidance_scale * (out_c - out_u)

    return fn


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
