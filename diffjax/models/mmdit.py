"""MMDiT: Stable Diffusion 3's two-stream transformer (Esser et al. 2024, "Scaling Rectified Flow
Transformers for High-Resolution Image Synthesis").

Image patches and text tokens keep separate weights (their own adaLN-Zero modulation, q/k/v and
output projections, MLPs) but meet in ONE attention over the concatenation of both sequences, so
text reads the image and the image reads the text in every block. The conditioning vector c is
the noise-level embedding plus the pooled text (plus a label, if any). Model size follows the
paper: depth d, width 64 d, d heads.

The null context: text tokens masked out are never attended to; with every token masked the image
stream attends only to itself, which is exactly the computation of a call without context.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.blocks import (AdaLNZero, NoiseEmbedding, PooledContext, check_embedding,
                                   check_implementation, check_patchable, context_for,
                                   layer_norm, maybe_remat, modulate, patchify, sincos_2d,
                                   unpatchify)

Dtype = Any
_xavier = nn.initializers.xavier_uniform()


def mmdit_dims(depth: int, hidden: int | None, num_heads: int | None) -> tuple[int, int]:
    """``(hidden, num_heads)``: 64 * depth and depth unless given."""
    return hidden or 64 * depth, num_heads or depth


def check_mmdit(data_shape: Sequence[int], *, depth: int, hidden: int | None,
                num_heads: int | None, patch_size: int, mlp_ratio: float, embedding: str,
                embedding_scale: float | None, attn_implementation: str | None) -> None:
    """Raises ValueError naming the offending ``model.*`` key for any invalid MMDiT setting."""
    if not (isinstance(depth, int) and depth >= 1):
        raise ValueError(f"model.depth={depth!r} must be a positive int")
    width, heads = mmdit_dims(depth, hidden, num_heads)
    if width % heads or width % 4:
        raise ValueError(f"model.hidden={width} must be divisible by model.num_heads={heads} "
                         f"and by 4")
    if not mlp_ratio > 0:
        raise ValueError(f"model.mlp_ratio={mlp_ratio!r} must be > 0")
    check_embedding(embedding, embedding_scale)
    check_implementation(attn_implementation)
    check_patchable(tuple(data_shape), patch_size)


class MMDiTBlock(nn.Module):
    """Joint-attention block over image tokens x: [B, N, D] and text tokens ctx: [B, L, D] (or
    None), conditioned on c: [B, D]; mask: [B, L] bool marks valid text tokens. → (x, ctx)."""
    num_heads: int
    mlp_ratio: float = 4.0
    implementation: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: jax.Array | None, c: jax.Array,
                 mask: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = x.shape[-1]
        streams = {"image": x} if ctx is None else {"image": x, "text": ctx}
        mods, qkv = {}, {}
        for name, s in streams.items():
            mods[name] = AdaLNZero(d, 6, name=f"{name}_adaln", **kw)(c)
            h = modulate(layer_norm(**kw)(s), mods[name][0], mods[name][1])
            qkv[name] = nn.DenseGeneral((3, self.num_heads, d // self.num_heads),
                                        kernel_init=_xavier, name=f"{name}_qkv", **kw)(h)
        joint = jnp.concatenate(list(qkv.values()), axis=1)           # [B, N + L, 3, heads, hd]
        keys = None
        if ctx is not None:
            keys = jnp.concatenate([jnp.ones(x.shape[:2], bool), mask], axis=1)[:, None, None]
        out = jax.nn.dot_product_attention(joint[:, :, 0], joint[:, :, 1], joint[:, :, 2],
                                           mask=keys, implementation=self.implementation)
        outs = dict(zip(streams, jnp.split(out, [x.shape[1]], axis=1)))
        for name, s in streams.items():
            _, _, gate_a, shift_m, scale_m, gate_m = mods[name]
            h = nn.DenseGeneral(d, axis=(-2, -1), kernel_init=_xavier, name=f"{name}_out",
                                **kw)(outs[name])
            s = s + gate_a[:, None] * h
            h = modulate(layer_norm(**kw)(s), shift_m, scale_m)
            h = nn.Dense(int(d * self.mlp_ratio), kernel_init=_xavier, name=f"{name}_mlp_in",
                         **kw)(h)
            h = nn.Dense(d, kernel_init=_xavier, name=f"{name}_mlp_out",
                         **kw)(nn.gelu(h, approximate=True))
            streams[name] = s + gate_m[:, None] * h
        return streams["image"], streams.get("text")


class MMDiT(nn.Module):
    """SD3's multimodal diffusion transformer on [B, H, W, C] images or latents.

    Call: ``apply(variables, x, noise_cond, cond=None, train=False)`` (no dropout).

    Args of ``__call__``:
      x: [B, H, W, C]; H and W multiples of ``patch_size``.
      noise_cond: [B] float, multiplied by ``embedding_scale`` inside the embedding only.
      cond: ``context`` [B, L, D_c] + ``context_mask`` [B, L] (text tokens; absent = an image-only
        transformer, the same as an all-masked context), ``label`` [B] if ``num_classes``.

    Returns:
      [B, H, W, out_channels or C] float32.

    Attributes:
      depth: number of joint blocks d; ``hidden`` (None → 64 d) and ``num_heads`` (None → d).
      patch_size, mlp_ratio: as in DiT.
      context_dim: width D_c of the context, needed only to initialise without one.
      embedding, embedding_scale, remat, attn_implementation, num_classes, out_channels: as DiT.
    """
    depth: int = 12
    hidden: int | None = None
    num_heads: int | None = None
    patch_size: int = 2
    mlp_ratio: float = 4.0
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
                 cond: Mapping[str, jax.Array] | None = None, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"MMDiT expects x of shape [B, H, W, C], got {x.shape}")
        if noise_cond.shape != x.shape[:1]:
            raise ValueError(f"noise_cond must have shape [B]={x.shape[:1]}, got "
                             f"{noise_cond.shape}")
        check_mmdit(x.shape[1:], depth=self.depth, hidden=self.hidden, num_heads=self.num_heads,
                    patch_size=self.patch_size, mlp_ratio=self.mlp_ratio,
                    embedding=self.embedding, embedding_scale=self.embedding_scale,
                    attn_implementation=self.attn_implementation)
        d, heads = mmdit_dims(self.depth, self.hidden, self.num_heads)
        p = self.patch_size
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        context, mask = context_for(cond, x.shape[0], enabled_by="model.arch='mmdit'",
                                    enabled=True, initializing=self.is_initializing(),
                                    context_dim=self.context_dim, dtype=self.dtype)

        c = NoiseEmbedding(d, self.embedding, self.embedding_scale, self.num_classes,
                           base_dim=256, name="noise_embed",
                           **kw)(noise_cond, (cond or {}).get("label"))
        ctx = None
        if context is not None:
            c = c + PooledContext(d, name="pooled_context", **kw)(context, mask)
            ctx = nn.Dense(d, kernel_init=_xavier, name="context_embed",
                           **kw)(context.astype(self.dtype))

        grid = (x.shape[1] // p, x.shape[2] // p)
        tokens = nn.Dense(d, kernel_init=_xavier, name="patch_embed",
                          **kw)(patchify(x.astype(self.dtype), p))
        tokens = tokens + sincos_2d(*grid, d).astype(self.dtype)
        block_cls = maybe_remat(MMDiTBlock, self.remat)
        for i in range(self.depth):
            tokens, ctx = block_cls(heads, self.mlp_ratio, self.attn_implementation,
                                    name=f"block_{i}", **kw)(tokens, ctx, c, mask)

        shift, scale = AdaLNZero(d, 2, name="final_adaln", **kw)(c)
        tokens = modulate(layer_norm(**kw)(tokens), shift, scale)
        out_ch = self.out_channels or x.shape[-1]
        tokens = nn.Dense(p * p * out_ch, kernel_init=nn.initializers.zeros, name="final",
                          **kw)(tokens)
        return unpatchify(tokens, p, grid).astype(jnp.float32)
