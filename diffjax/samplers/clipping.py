"""x0 clipping and dynamic thresholding of the denoiser, options of every sampler.

Applied in the one place where the model output becomes ``(x0_hat, eps_hat)`` (the sampler's
``denoise``), so every sampler, the final ``denoise_to_zero`` step included, sees the
constrained pair; ``eps_hat`` is recomputed from the constrained ``x0_hat`` so that the pair
stays consistent with ``x_t = alpha x0_hat + sigma eps_hat``:

* static clipping (Ho et al. 2020, ``clip_denoised``): ``x0_hat <- clip(x0_hat, -c, c)`` with
  ``clip_x0 = c`` (1 for data in [-1, 1]);
* dynamic thresholding (Saharia et al. 2022, "Imagen", Sec. 2.3): per example, ``s`` is the
  ``p``-quantile of ``|x0_hat|`` (``dynamic_threshold = p``), floored at ``c`` (``clip_x0``,
  default 1); then ``x0_hat <- clip(x0_hat, -s, s) c / s``. With ``c = 1`` this is Imagen's
  rule; where ``s = c`` it is static clipping.

Where ``sigma = 0`` (``t = 0`` on rectified flow) ``x_t`` *is* the data and ``eps_hat`` has no
meaning in the pair; it is then left as the model gave it.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from diffjax.paths import Path, broadcast_to_x

Array = jax.Array


class Clip(NamedTuple):
    """Static description of the constraint (part of the jitted sampler's cache key)."""

    bound: float                      # c
    percentile: Optional[float]       # p of dynamic thresholding, None for static clipping


def from_options(clip_x0: Optional[float], dynamic_threshold: Optional[float]) -> Optional[Clip]:
    """Checks the two sampler options and returns the constraint, or None when both are off."""
    if clip_x0 is not None and not (isinstance(clip_x0, (int, float))
                                    and not isinstance(clip_x0, bool)
                                    and math.isfinite(clip_x0) and clip_x0 > 0):
        raise ValueError(f"option clip_x0 must be a finite number > 0 (the data bound, e.g. 1.0 "
                         f"for pixels in [-1, 1]) or None, got {clip_x0!r}")
    if dynamic_threshold is not None and not (
            isinstance(dynamic_threshold, (int, float)) and not isinstance(dynamic_threshold, bool)
            and 0 < dynamic_threshold <= 1):
        raise ValueError("option dynamic_threshold must be a percentile p in (0, 1] (Imagen uses "
                         f"0.995) or None, got {dynamic_threshold!r}")
    if clip_x0 is None and dynamic_threshold is None:
        return None
    return Clip(float(1.0 if clip_x0 is None else clip_x0),
                None if dynamic_threshold is None else float(dynamic_threshold))


def constrain_x0(clip: Clip, x0: Array) -> Array:
    """The constrained ``x0_hat: [B, ...]``."""
    c = jnp.asarray(clip.bound, x0.dtype)
    if clip.percentile is None:
        return jnp.clip(x0, -c, c)
    flat = jnp.abs(jnp.reshape(x0, (x0.shape[0], -1)))
    s = jnp.maximum(jnp.quantile(flat, clip.percentile, axis=-1), c)
    s = broadcast_to_x(s, x0)
    return jnp.clip(x0, -s, s) * (c / s)


def apply(clip: Optional[Clip], path: Path, x0: Array, eps: Array, x_t: Array,
          t: Array) -> tuple[Array, Array]:
    """``(x0_hat, eps_hat)`` after the constraint, ``eps_hat = (x_t - alpha x0_hat) / sigma``.

    x0, eps, x_t: ``[B, ...]``; t: ``[B]``.
    """
    if clip is None:
        return x0, eps
    x0 = constrain_x0(clip, x0)
    alpha = broadcast_to_x(path.alpha(t), x_t)
    sigma = broadcast_to_x(path.sigma(t), x_t)
    safe = jnp.where(sigma > 0, sigma, 1.0)
    return x0, jnp.where(sigma > 0, (x_t - alpha * x0) / safe, eps)
