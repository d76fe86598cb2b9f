"""DiT: the diffusion transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers").

The image (pixels or latents) is cut into p x p patches, each a token; a fixed 2-D sin-cos
position embedding marks where it came from; ``depth`` transformer blocks are conditioned on
``c = embed(noise level) + embed(label) [+ pooled text]`` through adaLN-Zero (LayerNorm whose
shift/scale, and a gate on each residual branch, are regressed from c by a zero-initialised layer);
a final adaLN layer maps every token back to its patch. Every block is the identity and the output
is exactly 0 at initialisation. With ``cross_attn``, each block also attends to the text tokens
``cond["context"]`` (as PixArt-alpha does), and the pooled text is added to c.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.blocks import (AdaLNZero, Attention, NoiseEmbedding, PooledContext,
                                   check_embedding, check_implementation, check_patchable,
                                   context_for, layer_norm, maybe_remat, modulate, patchify,
                                   sincos_2d, unpatchify)

Dtype = Any

# The paper's Table 1: (depth, hidden width, heads) per model size; each comes with patch 2, 4, 8.
DIT_SIZES: dict[str, dict[str, int]] = {
    "S": dict(depth=12, hidden=384, num_heads=6),
    "B": dict(depth=12, hidden=768, num_heads=12),
    "L": dict(depth=24, hidden=1024, num_heads=16),
    "XL": dict(depth=28, hidden=1152, num_heads=16),
}
PATCH_SIZES = (2, 4, 8)
SIZES = tuple(f"{name}/{p}" for name in DIT_SIZES for p in PATCH_SIZES)

# DiT embeds the noise level with 256 sinusoidal features before its two-layer MLP.
_FREQUENCY_DIM = 256
_xavier = nn.initializers.xavier_uniform()


def dit_dims(size: str, depth: int | None = None, hidden: int | None = None,
             num_heads: int | None = None, patch_size: int | None = None) -> dict[str, int]:
    """``depth, hidden, num_heads, patch_size`` of model ``size`` ("S/2" .. "XL/8"); any given
    (not None) value overrides the table (e.g. for a tiny test model)."""
    if size not in SIZES:
        raise ValueError(f"model.size={size!r} is unknown; valid choices: {', '.join(SIZES)}")
    name, p = size.split("/")
    dims = dict(DIT_SIZES[name], patch_size=int(p))
    given = dict(depth=depth, hidden=hidden, num_heads=num_heads, patch_size=patch_size)
    dims.update({k: v for k, v in given.items() if v is not None})
    return dims


def check_dit(data_shape: Sequence[int], *, size: str, depth: int | None, hidden: int | None,
              num_heads: int | None, patch_size: int | None, mlp_ratio: float, embedding: str,
              embedding_scale: float | None, attn_implementation: str | None) -> None:
    """Raises ValueError naming the offending ``model.*`` key for any invalid DiT setting."""
    dims = dit_dims(size, depth, hidden, num_heads, patch_size)
    for key in ("depth", "hidden", "num_heads", "patch_size"):
        if not (isinstance(dims[key], int) and dims[key] >= 1):
            raise ValueError(f"model.{key}={dims[key]!r} must be a positive int")
    if dims["hidden"] % dims["num_heads"]:
        raise ValueError(f"model.num_heads={dims['num_heads']} does not divide "
                         f"model.hidden={dims['hidden']}")
    if dims["hidden"] % 4:
        raise ValueError(f"model.hidden={dims['hidden']} must be divisible by 4 (2-D position "
                         f"embedding)")
    if not mlp_ratio > 0:
        raise ValueError(f"model.mlp_ratio={mlp_ratio!r} must be > 0")
    check_embedding(embedding, embedding_scale)
    check_implementation(attn_implementation)
    check_patchable(tuple(data_shape), dims["patch_size"])


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: x: [B, N, D], c: [B, D] (+ context [B, L, E], mask) → x."""
    num_heads: int
    mlp_ratio: float = 4.0
    implementation: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array, context: jax.Array | None = None,
                 mask: jax.Array | None = None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = x.shape[-1]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = AdaLNZero(
            d, 6, name="adaln", **kw)(c)
        h = modulate(layer_norm(**kw)(x), shift_msa, scale_msa)
        h = Attention(self.num_heads, zero_out=False, implementation=self.implementation,
                      kernel_init=_xavier, name="attn", **kw)(h)
        x = x + gate_msa[:, None] * h
        if context is not None:
            h = layer_norm(affine=True, **kw)(x)
            x = x + Attention(self.num_heads, implementation=self.implementation,
                              kernel_init=_xavier, name="cross_attn", **kw)(h, context, mask)
        h = modulate(layer_norm(**kw)(x), shift_mlp, scale_mlp)
        h = nn.Dense(int(d * self.mlp_ratio), kernel_init=_xavier, name="mlp_in", **kw)(h)
        h = nn.Dense(d, kernel_init=_xavier, name="mlp_out", **kw)(nn.gelu(h, approximate=True))
        return x + gate_mlp[:, None] * h


class DiT(nn.Module):
    """Diffusion transformer on [B, H, W, C] images or latents.

    Call: ``apply(variables, x, noise_cond, cond=None, train=False)``; ``train`` changes nothing
    (DiT has no dropout) and is there for the common call.

    Args of ``__call__``:
      x: [B, H, W, C]; H and W multiples of the patch size.
      noise_cond: [B] float, multiplied by ``embedding_scale`` inside the embedding only.
      cond: the condition dict or None. ``label`` [B] int in ``[0, num_classes]`` (null =
        ``num_classes``); ``context`` [B, L, D] + ``context_mask`` [B, L] with ``cross_attn``
        (an all-masked context is exactly the same as none).

    Returns:
      [B, H, W, out_channels or C] float32.

    Attributes:
      size: a row of the paper's table with its patch size, "S/2" .. "XL/8" (:data:`SIZES`).
      depth, hidden, num_heads, patch_size: None → the value of ``size``; set to override it.
      mlp_ratio: width of each block's MLP relative to ``hidden``.
      cross_attn: attend to ``cond["context"]`` in every block; ``context_dim`` (its width D) is
        needed only to initialise without a context.
      embedding, embedding_scale: the noise-level embedding (see :class:`NoiseEmbedding`).
      remat: recompute each block's activations in the backward pass (saves memory).
      attn_implementation: None (``"blocked"`` on CPU, JAX's choice elsewhere), "xla",
        "cudnn" (the fused GPU kernel) or "blocked" (:mod:`diffjax.models.blocks.attention`).
      num_classes: 0 = no label; else labels in [0, num_classes], ``num_classes`` the null.
      out_channels: None → C (the paper's 2C "learned sigma" output is ``out_channels=2C``).
    """
    size: str = "S/2"
    depth: int | None = None
    hidden: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    mlp_ratio: float = 4.0
    cross_attn: bool = False
    context_dim: int | None = None
    embedding: str = "sinusoidal"
    embedding_scale: float | None = None
    remat: bool = False
    attn_implementation: str | None = None
    num_classes: int = 0
    out_channels: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, noise_cond: jax.Array,
                 cond: Mapping[str, jax.Array] | None = None, train: bool = False,
                 block_residuals: Sequence[jax.Array] | None = None,
                 encoder_blocks: int | None = None):
        """``block_residuals``: a ControlNet's residuals added to the tokens after the first
        ``len(block_residuals)`` blocks; ``encoder_blocks = N``: return the tokens after
        each of the first N blocks (a list) instead of the image (a ControlNet's copy)."""
        if x.ndim != 4:
            raise ValueError(f"DiT expects x of shape [B, H, W, C], got {x.shape}")
        if noise_cond.shape != x.shape[:1]:
            raise ValueError(f"noise_cond must have shape [B]={x.shape[:1]}, got "
                             f"{noise_cond.shape}")
        check_dit(x.shape[1:], size=self.size, depth=self.depth, hidden=self.hidden,
                  num_heads=self.num_heads, patch_size=self.patch_size, mlp_ratio=self.mlp_ratio,
                  embedding=self.embedding, embedding_scale=self.embedding_scale,
                  attn_implementation=self.attn_implementation)
        dims = dit_dims(self.size, self.depth, self.hidden, self.num_heads, self.patch_size)
        d, p = dims["hidden"], dims["patch_size"]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        context, mask = context_for(cond, x.shape[0], enabled_by="model.cross_attn",
                                    enabled=self.cross_attn, initializing=self.is_initializing(),
                                    context_dim=self.context_dim, dtype=self.dtype)

        c = NoiseEmbedding(d, self.embedding, self.embedding_scale, self.num_classes,
                           base_dim=_FREQUENCY_DIM, name="noise_embed",
                           **kw)(noise_cond, (cond or {}).get("label"))
        if context is not None:
            c = c + PooledContext(d, name="pooled_context", **kw)(context, mask)

        grid = (x.shape[1] // p, x.shape[2] // p)
        tokens = nn.Dense(d, kernel_init=_xavier, name="patch_embed",
                          **kw)(patchify(x.astype(self.dtype), p))
        tokens = tokens + sincos_2d(*grid, d).astype(self.dtype)
        block_cls = maybe_remat(DiTBlock, self.remat)
        residuals, features = list(block_residuals or []), []
        for i in range(encoder_blocks or dims["depth"]):
            tokens = block_cls(dims["num_heads"], self.mlp_ratio, self.attn_implementation,
                               name=f"block_{i}", **kw)(tokens, c, context, mask)
            if i < len(residuals):
                tokens = tokens + residuals[i].astype(tokens.dtype)
            features.append(tokens)
        if encoder_blocks:
            return features

        shift, scale = AdaLNZero(d, 2, name="final_adaln", **kw)(c)
        tokens = modulate(layer_norm(**kw)(tokens), shift, scale)
        out_ch = self.out_channels or x.shape[-1]
        tokens = nn.Dense(p * p * out_ch, kernel_init=nn.initializers.zeros, name="final",
                          **kw)(tokens)
        return unpatchify(tokens, p, grid).astype(jnp.float32)
