"""What a network is conditioned on, embedded: noise level, class label, pooled text, positions.

Every network receives the noise level as a float array ``noise_cond: [B]`` whose meaning and range
belong to the caller (``t`` in [0, 1], EDM's ``c_noise = log(sigma) / 4``, ...). The networks never
rescale it by a hidden constant; the only rescaling is the explicit ``embedding_scale`` field, by
which the embedding's input is multiplied.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Dtype = Any

# Inputs in [0, 1] times 1000 cover the same range as DDPM's integer step index, so the sinusoidal
# frequencies (periods 2*pi .. 2*pi*10^4) resolve both coarse and fine changes of t.
# Random Fourier features use N(0, 16^2) frequencies as NCSN++ does for log(sigma).
DEFAULT_EMBEDDING_SCALE = {"sinusoidal": 1000.0, "fourier": 16.0}


def check_embedding(embedding: str, embedding_scale: float | None) -> None:
    """Raises ValueError for an unknown embedding name or a non-positive scale."""
    if embedding not in EMBEDDINGS:
        raise ValueError(
            f"model.embedding={embedding!r} is unknown; valid choices: {', '.join(EMBEDDINGS)}")
    if embedding_scale is not None and not embedding_scale > 0:
        raise ValueError(f"model.embedding_scale={embedding_scale!r} must be > 0 (or None for "
                         f"the default of the embedding, {DEFAULT_EMBEDDING_SCALE})")


def resolve_embedding_scale(embedding: str, embedding_scale: float | None) -> float:
    """The scale actually used: the given one, or the embedding's default when None."""
    check_embedding(embedding, embedding_scale)
    if embedding_scale is None:
        return DEFAULT_EMBEDDING_SCALE[embedding]
    return float(embedding_scale)


def sinusoidal_embedding(noise_cond: jnp.ndarray, dim: int, scale: float = 1.0,
                         max_period: float = 10_000.0) -> jnp.ndarray:
    """Transformer/DDPM sinusoidal embedding (Vaswani et al. 2017; Ho et al. 2020).

    Args:
      noise_cond: [B] float, any range.
      dim: embedding width (even).
      scale: the input is multiplied by it before the sinusoids.
      max_period: longest period, in units of ``scale * noise_cond``.

    Returns:
      [B, dim] float32: ``[sin(scale * x * f_k), cos(scale * x * f_k)]`` with
      ``f_k = max_period^(-k / (dim/2 - 1))``, k = 0 .. dim/2 - 1.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"sinusoidal embedding dim={dim} must be even and >= 4")
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / (half - 1)).astype(np.float32)
    # Always float32: with scale ~1000 the arguments exceed bf16's integer precision.
    args = (scale * noise_cond.astype(jnp.float32))[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def fourier_embedding(noise_cond: jnp.ndarray, dim: int, scale: float = 16.0,
                      seed: int = 0) -> jnp.ndarray:
    """Random Fourier features, fixed frequencies (Tancik et al. 2020; NCSN++, Song et al. 2021).

    The frequencies ``W ~ N(0, 1)`` are drawn from a fixed numpy seed, so they are a compile-time
    constant: not trainable, not stored in the variables, identical across runs and devices.
    Multiplying the input by ``scale`` is the same as drawing ``W ~ N(0, scale^2)``.

    Args:
      noise_cond: [B] float, any range.
      dim: embedding width (even).
      scale: frequency standard deviation.
      seed: seed of the fixed frequencies.

    Returns:
      [B, dim] float32: ``[sin(2 pi W scale x), cos(2 pi W scale x)]``.
    """
    if dim % 2:
        raise ValueError(f"fourier embedding dim={dim} must be even")
    w = np.random.default_rng(seed).standard_normal(dim // 2).astype(np.float32)
    args = 2 * np.pi * (scale * noise_cond.astype(jnp.float32))[:, None] * w[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


EMBEDDINGS: dict[str, Callable[..., jnp.ndarray]] = {
    "sinusoidal": sinusoidal_embedding,
    "fourier": fourier_embedding,
}


class NoiseEmbedding(nn.Module):
    """Noise-level embedding followed by a two-layer SiLU MLP, plus an optional label embedding.

    Labels follow the classifier-free guidance convention (Ho & Salimans 2022): ints in
    ``[0, num_classes]``, where ``num_classes`` itself is a learned null label ("no class").
    Replacing labels by the null label during training is the trainer's job, not the model's.

    Attributes:
      features: output width.
      embedding: ``"sinusoidal"`` or ``"fourier"``.
      embedding_scale: multiplier of ``noise_cond`` before the embedding; None → the embedding's
        default (1000 for sinusoidal, suited to ``noise_cond`` in [0, 1]; 16 for fourier).
      num_classes: 0 for an unconditional model.
      base_dim: width of the raw sinusoidal/Fourier features; None → ``features // 4`` (at
        least 16), which for a U-Net is DDPM's choice of ``ch`` features projected to ``4 ch``.
    """
    features: int
    embedding: str = "sinusoidal"
    embedding_scale: float | None = None
    num_classes: int = 0
    base_dim: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, noise_cond: jnp.ndarray, label: jnp.ndarray | None) -> jnp.ndarray:
        """noise_cond: [B] float; label: [B] int or None → [B, features] in ``dtype``."""
        scale = resolve_embedding_scale(self.embedding, self.embedding_scale)
        base_dim = self.base_dim or max(16, 2 * (self.features // 8))
        if noise_cond.ndim != 1:
            raise ValueError(f"noise_cond must have shape [B], got {noise_cond.shape}")
        emb = EMBEDDINGS[self.embedding](noise_cond, base_dim, scale=scale)
        dense = lambda name: nn.Dense(self.features, dtype=self.dtype,  # noqa: E731
                                      param_dtype=self.param_dtype, name=name)
        emb = dense("dense_0")(emb)
        emb = dense("dense_1")(nn.silu(emb))
        labels = resolve_labels(label, self.num_classes, noise_cond.shape[0])
        if labels is not None:
            emb = emb + nn.Embed(self.num_classes + 1, self.features, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name="label_embed")(labels)
        return emb


def resolve_labels(label: jnp.ndarray | None, num_classes: int,
                   batch: int) -> jnp.ndarray | None:
    """Checks the label against ``num_classes``; None on a conditional model → null labels.

    Returns None for an unconditional model, else [B] int32. Values outside ``[0, num_classes]``
    cannot be checked under jit; keep them in range.
    """
    if num_classes == 0:
        if label is not None:
            raise ValueError("label was given but the model is unconditional (num_classes=0)")
        return None
    if label is None:
        return jnp.full((batch,), num_classes, jnp.int32)
    if label.shape != (batch,):
        raise ValueError(f"label must have shape [B]=({batch},), got {label.shape}")
    return label.astype(jnp.int32)


def sincos_1d(positions: np.ndarray, dim: int, max_period: float = 10_000.0) -> np.ndarray:
    """``[sin(p f_k), cos(p f_k)]``, ``f_k = max_period^(-k / (dim/2))``: [N] → [N, dim]."""
    if dim % 2:
        raise ValueError(f"position embedding dim={dim} must be even")
    freqs = max_period ** (-np.arange(dim // 2, dtype=np.float64) / (dim // 2))
    args = np.asarray(positions, np.float64)[:, None] * freqs[None, :]
    return np.concatenate([np.sin(args), np.cos(args)], axis=-1)


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
    """Fixed 2-D position embedding of a token grid (ViT/MAE; DiT's choice), row-major order.

    The token at grid cell (i, j) gets ``[sincos_1d(i, dim/2), sincos_1d(j, dim/2)]``: half the
    channels encode the row, half the column, so the embedding follows the spatial layout.

    Returns:
      [grid_h * grid_w, dim] float32, a numpy constant (not a parameter).
    """
    if dim % 4:
        raise ValueError(f"2-D position embedding dim={dim} must be divisible by 4")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    emb = np.concatenate([sincos_1d(rows.ravel(), dim // 2), sincos_1d(cols.ravel(), dim // 2)],
                         axis=-1)
    return emb.astype(np.float32)
