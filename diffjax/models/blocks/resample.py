"""Changing the resolution: 2x down/up sampling of feature maps, and image <-> patch tokens."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def downsample_avg(x: jax.Array) -> jax.Array:
    """2x2 average pooling: [B, H, W, C] → [B, H/2, W/2, C]."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def upsample_nearest(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling: [B, H, W, C] → [B, 2H, 2W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def check_patchable(image_shape: tuple[int, ...], patch_size: int) -> None:
    """Raises ValueError unless H and W of (H, W, C) are multiples of ``patch_size``."""
    if len(image_shape) != 3:
        raise ValueError(f"data_shape must be (H, W, C), got {tuple(image_shape)}")
    h, w, _ = image_shape
    if patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(f"model.patch_size={patch_size} must divide the image size {h}x{w}")


def patchify(x: jax.Array, p: int) -> jax.Array:
    """Non-overlapping p x p patches as tokens, row-major: [B, H, W, C] → [B, (H/p)(W/p), p*p*C].

    Each token is its patch flattened in (row, column, channel) order.
    """
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: jax.Array, p: int, grid: tuple[int, int]) -> jax.Array:
    """Inverse of :func:`patchify`: [B, gh*gw, p*p*C] with grid (gh, gw) → [B, gh*p, gw*p, C]."""
    b, n, d = tokens.shape
    gh, gw = grid
    c = d // (p * p)
    x = tokens.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, c)
