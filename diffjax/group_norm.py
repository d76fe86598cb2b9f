"""GroupNorm (Wu & He 2018) written for XLA: channel moments first, the group step as matmuls.

Its own module (like :mod:`diffjax.conv`) so that the U-Nets (through
:mod:`diffjax.models.blocks`, which re-exports it) and the autoencoders use one GroupNorm
without importing each other.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class GroupNorm(nn.Module):
    """GroupNorm (Wu & He 2018) over channels-last ``x: [B, ..., C]`` as Flax's ``nn.GroupNorm``
    computes it (float32 statistics, variance ``E[x^2] - E[x]^2``, or ``E[(x - E[x])^2]`` with
    ``use_fast_variance=False``; the same ``scale``/``bias`` parameters), written so that XLA
    runs it as a few passes over ``x``.

    Each channel's sums of ``x`` and ``x^2`` over the spatial axes first (column reductions with
    the channels contiguous, where Flax reduces ``[B, H, W, G, C/G]`` over three non-adjacent
    axes); then the maps between channels and groups as matmuls with a one-hot ``[G, C]``
    matrix (``scale`` folded in), and the output as one affine map per example and channel,
    ``y = x * a[b, c] + d[b, c]``. The matmuls are what matter on CPUs: written as reshapes and
    broadcasts (Flax's form, and this class's until 2026-12-01), XLA:CPU fuses the
    ``[B, G] -> [B, C]`` step into every element of the big loops (index arithmetic and a
    ``rsqrt`` per element), and GroupNorm+SiLU forward and backward took 1.9-2.5x PyTorch's
    time; XLA does not fuse a dot into those loops, so each reads a ``[B, C]`` table, and it
    takes 1.2-1.3x PyTorch's (2-core CPU, batch 32). Plain JAX, no custom derivative (a
    hand-written ``custom_vjp`` backward was not faster than autodiff's of this form), so
    ``jax.jvp`` through it works (MeanFlow, likelihoods).
    experiments/benchmarks/group_norm.py measures it against Flax's (and PyTorch's) per layer
    and in whole training steps.
    """
    num_groups: int
    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    # False: the variance as the mean of (x - mean)^2, a second pass over x (Flax's option of
    # the same name; the autoencoders use it, as diffusers' and PyTorch's GroupNorm do).
    use_fast_variance: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, g = x.shape[-1], self.num_groups
        if c % g:
            raise ValueError(f"GroupNorm: num_groups={g} does not divide the {c} channels")
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        spatial = tuple(range(1, x.ndim - 1))
        count = math.prod(x.shape[1:-1]) * (c // g)    # elements of one group of one example
        # One-hot [G, C]; HIGHEST: TPUs and TF32 GPUs must not round the statistics.
        onehot = jnp.repeat(jnp.eye(g, dtype=jnp.float32), c // g, axis=1)
        dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
        xf = x.astype(jnp.float32)
        expand = lambda v: v.reshape(v.shape[:1] + (1,) * len(spatial) + v.shape[1:])  # noqa: E731
        mean = dot(jnp.sum(xf, spatial), onehot.T) / count              # [B, G]
        if self.use_fast_variance:
            var = dot(jnp.sum(jnp.square(xf), spatial), onehot.T) / count - jnp.square(mean)
        else:
            centred = xf - expand(dot(mean, onehot))
            var = dot(jnp.sum(jnp.square(centred), spatial), onehot.T) / count
        inv = jax.lax.rsqrt(jnp.maximum(var, 0.0) + self.epsilon)
        scaled = onehot * scale.astype(jnp.float32)                      # [G, C]
        a = dot(inv, scaled)                                             # [B, C]
        d = bias.astype(jnp.float32) - dot(mean * inv, scaled)
        return (xf * expand(a) + expand(d)).astype(self.dtype or x.dtype)
