"""The DDPM++ / ADM U-Net.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations"
(DDPM++); Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis" (ADM).

Residual blocks (GroupNorm, SiLU, 3x3 convs) receive the noise embedding either added after the
first conv (DDPM++) or as a GroupNorm scale and shift (ADM, ``scale_shift=True``); multi-head
self-attention runs at the chosen resolutions and in the middle, and cross-attention to a text
context (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models") at
its own chosen resolutions; the down path's activations are concatenated into the up path. The
last conv of every residual branch, of every attention block and of the network is
zero-initialised, so at initialisation each block is (a rescaled) identity and the network outputs
exactly 0.
"""
from __future__ import annotations

import math
from typing import Any, Sequence, Mapping

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.blocks import (AdaGroupNorm, Attention, NoiseEmbedding, PooledContext,
                                   check_embedding, check_implementation, context_for,
                                   conv_general_dilated, downsample_avg, group_norm, layer_norm,
                                   maybe_remat, sincos_2d, upsample_conv_general_dilated,
                                   upsample_nearest)

Dtype = Any

# DDPM++ divides every residual sum by sqrt(2) ("skip_rescale") so activations keep unit scale
# however many blocks are stacked.
_SKIP_SCALE = 1.0 / math.sqrt(2.0)

# Where the attention blocks learn where they are (model.position_embedding): "none" (the
# DDPM++/ADM/LDM U-Net: attention is blind to position, which only the convolutions' zero
# padding reveals) or "sincos" (the fixed 2-D sin-cos embedding of ViT/DiT added to the
# normalised input of every self- and cross-attention block).
POSITION_EMBEDDINGS = ("none", "sincos")


def level_resolutions(image_shape: Sequence[int], ch_mult: Sequence[int]) -> list[tuple[int, int]]:
    """Spatial size (H, W) of each U-Net level; raises ValueError if a level does not divide by 2.

    Level i works at ``(H / 2^i, W / 2^i)``, i = 0 .. len(ch_mult) - 1, so H and W must be
    divisible by ``2^(len(ch_mult) - 1)``: 28x28 allows 3 levels (28 → 14 → 7), not 4.
    """
    if len(image_shape) != 3:
        raise ValueError(f"UNet data_shape must be (H, W, C), got {tuple(image_shape)}")
    h, w, _ = image_shape
    sizes = [(h, w)]
    for _ in range(len(ch_mult) - 1):
        if h % 2 or w % 2:
            raise ValueError(
                f"image size {image_shape[0]}x{image_shape[1]} cannot be halved "
                f"{len(ch_mult) - 1} times (model.ch_mult={tuple(ch_mult)} has {len(ch_mult)} "
                f"levels; halving stops at {h}x{w}): H and W must be divisible by "
                f"{2 ** (len(ch_mult) - 1)}; use fewer levels in model.ch_mult")
        h, w = h // 2, w // 2
        sizes.append((h, w))
    return sizes


def check_unet(data_shape: Sequence[int], *, ch: int, ch_mult: Sequence[int],
               num_res_blocks: int, attn_resolutions: Sequence[int],
               cross_attn_resolutions: Sequence[int], num_heads: int, dropout: float,
               embedding: str, embedding_scale: float | None,
               attn_implementation: str | None, position_embedding: str = "none") -> None:
    """Raises ValueError naming the offending ``model.*`` key for any invalid U-Net setting.

    A level's resolution, as matched against ``attn_resolutions``, is its height.
    """
    if not (isinstance(ch, int) and ch >= 1):
        raise ValueError(f"model.ch={ch!r} must be a positive int")
    if not ch_mult or any(not (isinstance(m, int) and m >= 1) for m in ch_mult):
        raise ValueError(f"model.ch_mult={ch_mult!r} must be a non-empty sequence of positive ints")
    if not (isinstance(num_res_blocks, int) and num_res_blocks >= 1):
        raise ValueError(f"model.num_res_blocks={num_res_blocks!r} must be an int >= 1")
    if not (isinstance(num_heads, int) and num_heads >= 1):
        raise ValueError(f"model.num_heads={num_heads!r} must be an int >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout={dropout!r} must be in [0, 1)")
    check_embedding(embedding, embedding_scale)
    check_implementation(attn_implementation)
    if position_embedding not in POSITION_EMBEDDINGS:
        raise ValueError(f"model.position_embedding={position_embedding!r} is unknown; valid "
                         f"choices: {', '.join(POSITION_EMBEDDINGS)}")
    sizes = level_resolutions(data_shape, ch_mult)
    heights = [s[0] for s in sizes]
    for key, resolutions in (("attn_resolutions", attn_resolutions),
                             ("cross_attn_resolutions", cross_attn_resolutions)):
        for res in resolutions:
            if res not in heights:
                raise ValueError(f"model.{key} contains {res}, which is not the resolution "
                                 f"of any level; valid choices: {heights}")
    resolutions = set(attn_resolutions) | set(cross_attn_resolutions)
    attn_levels = [i for i, hgt in enumerate(heights) if hgt in resolutions]
    # The middle block always attends, at the last level.
    for i in sorted(set(attn_levels) | {len(ch_mult) - 1}):
        channels = ch * ch_mult[i]
        if channels % num_heads:
            raise ValueError(f"model.num_heads={num_heads} does not divide the {channels} channels "
                             f"of the attention at resolution {heights[i]}")
        if position_embedding == "sincos" and channels % 4:
            raise ValueError(f"model.position_embedding='sincos' needs the attention width "
                             f"divisible by 4; the attention at resolution {heights[i]} has "
                             f"{channels} channels (model.ch * model.ch_mult[{i}])")


def _conv(features: int, module: nn.Module, kernel: int = 3, stride: int = 1,
          zero: bool = False, name: str | None = None, upsample: bool = False) -> nn.Conv:
    """A "SAME" convolution; ``upsample``: of its input upsampled 2x by nearest neighbour,
    on CPU computed without the upsampled map (:func:`diffjax.conv.upsample_conv_general_dilated`:
    the same parameters, about 16/36 of the multiply-adds)."""
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                   kernel_init=nn.initializers.zeros if zero else nn.initializers.lecun_normal(),
                   dtype=module.dtype, param_dtype=module.param_dtype, name=name,
                   conv_general_dilated=(upsample_conv_general_dilated if upsample
                                         else conv_general_dilated))


def with_positions(h: jnp.ndarray, position_embedding: str) -> jnp.ndarray:
    """``h`` [B, H, W, C] plus the fixed 2-D sin-cos embedding of its grid when asked."""
    if position_embedding == "none":
        return h
    _, hgt, wid, c = h.shape
    return h + jnp.asarray(sincos_2d(hgt, wid, c), h.dtype).reshape(hgt, wid, c)


class ResBlock(nn.Module):
    """Residual block; ``resample`` = "down" / "up" makes it the BigGAN-style resampling block.

    x: [B, H, W, C_in], temb: [B, E] → [B, H', W', out_ch].
    """
    out_ch: int
    dropout: float
    scale_shift: bool
    resample: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, temb: jnp.ndarray, train: bool) -> jnp.ndarray:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(group_norm(x.shape[-1], **kw)(x))
        if self.resample == "down":
            h, x = downsample_avg(h), downsample_avg(x)
        elif self.resample == "up":  # h is upsampled by its convolution
            x = upsample_nearest(x)
        h = _conv(self.out_ch, self, upsample=self.resample == "up")(h)
        if self.scale_shift:
            h = AdaGroupNorm(**kw, name="ada_norm")(h, temb)
        else:
            emb = nn.Dense(self.out_ch, **kw, name="emb")(nn.silu(temb))[:, None, None, :]
            h = group_norm(self.out_ch, **kw)(h + emb)
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=not train)
        h = _conv(self.out_ch, self, zero=True)(h)
        if x.shape[-1] != self.out_ch:
            x = _conv(self.out_ch, self, kernel=1, name="skip")(x)
        return (x + h) * _SKIP_SCALE


class AttnBlock(nn.Module):
    """Self-attention over all H*W positions: x: [B, H, W, C] → [B, H, W, C]."""
    num_heads: int
    implementation: str | None = None
    position_embedding: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, hgt, wid, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = with_positions(group_norm(c, **kw)(x), self.position_embedding)
        out = Attention(self.num_heads, implementation=self.implementation, name="attn",
                        **kw)(h.reshape(b, hgt * wid, c))
        return (x + out.reshape(x.shape)) * _SKIP_SCALE


class CrossAttnBlock(nn.Module):
    """Cross-attention of the H*W positions to the context tokens (Rombach et al. 2022).

    x: [B, H, W, C], context: [B, L, D], mask: [B, L] bool → [B, H, W, C]. Plain residual (no
    rescaling), so an example with no valid token leaves x exactly unchanged.
    """
    num_heads: int
    implementation: str | None = None
    position_embedding: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        b, hgt, wid, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = with_positions(layer_norm(affine=True, **kw)(x), self.position_embedding)
        out = Attention(self.num_heads, implementation=self.implementation, name="attn",
                        **kw)(h.reshape(b, hgt * wid, c), context, mask)
        return x + out.reshape(x.shape)


class UNet(nn.Module):
    """DDPM++ / ADM U-Net, optionally with cross-attention to a text context (LDM).

    Call: ``apply(variables, x, noise_cond, cond=None, train=False, rngs={"dropout": key})``.

    Args of ``__call__``:
      x: [B, H, W, C]; H and W divisible by ``2^(len(ch_mult) - 1)``.
      noise_cond: [B] float, whatever the caller feeds (t, c_noise, ...); multiplied by
        ``embedding_scale`` inside the embedding and nowhere else.
      cond: the condition dict (:mod:`diffjax.conditions`), or None. Read keys:
        ``label`` [B] int in ``[0, num_classes]`` (``num_classes`` = null label; None is
        required when ``num_classes == 0`` and means the null label otherwise);
        ``context`` [B, L, D] float and ``context_mask`` [B, L] (True/1 = a valid token;
        absent = all valid), only with ``cross_attn_resolutions``. Without ``context`` the
        cross-attention layers and the pooled embedding are skipped; a context whose tokens are
        all masked out gives exactly the same output (see :mod:`diffjax.models.blocks.attention`).
      train: enables dropout (then needs ``rngs={"dropout": key}``).
      skip_residuals: a ControlNet's residuals (Zhang et al. 2023), added to the down path's
        activations (one per skip, then one for the middle's output) before the up path.
      encoder_only: return the down path's activations and the middle's output (a list, the
        shapes ``skip_residuals`` takes) without building the up path.

    Returns:
      [B, H, W, out_channels or C] float32 (the list above with ``encoder_only``).

    Attributes:
      ch: base channel count; level i has ``ch * ch_mult[i]`` channels.
      ch_mult: channel multiplier per level; one level per entry, halving the resolution between.
      num_res_blocks: residual blocks per level on the down path (the up path has one more).
      attn_resolutions: level heights (e.g. (16,)) where self-attention follows each residual
        block (the middle always has one).
      cross_attn_resolutions: level heights where cross-attention to ``cond["context"]`` follows
        each residual block; non-empty also puts one in the middle and adds the pooled context
        to the time embedding. Empty = no text conditioning.
      context_dim: width D of the context, needed only to initialise a cross-attention model
        without a context in ``cond`` (None: init must be given one).
      dropout: dropout rate inside residual blocks.
      num_heads: attention heads.
      embedding: "sinusoidal" or "fourier" noise embedding.
      embedding_scale: multiplier of ``noise_cond``; None → 1000 (sinusoidal, for inputs in
        [0, 1], like DDPM's step index) or 16 (fourier).
      resblock_updown: resample with residual blocks (BigGAN/ADM) instead of a strided conv /
        nearest-neighbour upsampling followed by a conv.
      scale_shift: ADM's adaptive GroupNorm instead of adding the embedding.
      remat: recompute each block's activations in the backward pass (saves memory).
      position_embedding: "none" or "sincos": the fixed 2-D sin-cos embedding of each level's
        grid added to the (normalised) input of its self- and cross-attention blocks, so they
        can tell where a position is, not only what is there (see ``POSITION_EMBEDDINGS``).
      attn_implementation: None (``"blocked"`` on CPU, JAX's choice elsewhere), "xla",
        "cudnn" (the fused GPU kernel) or "blocked" (:mod:`diffjax.models.blocks.attention`).
      num_classes: number of classes; 0 = unconditional.
      out_channels: output channels; None → same as the input.
      dtype: compute dtype (e.g. bfloat16 on GPU/TPU); params stay ``param_dtype``.
    """
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    cross_attn_resolutions: Sequence[int] = ()
    context_dim: int | None = None
    dropout: float = 0.1
    num_heads: int = 1
    embedding: str = "sinusoidal"
    embedding_scale: float | None = None
    resblock_updown: bool = False
    scale_shift: bool = False
    remat: bool = False
    position_embedding: str = "none"
    attn_implementation: str | None = None
    num_classes: int = 0
    out_channels: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, noise_cond: jnp.ndarray,
                 cond: Mapping[str, jnp.ndarray] | None = None,
                 train: bool = False, skip_residuals: Sequence[jnp.ndarray] | None = None,
                 encoder_only: bool = False):
        if x.ndim != 4:
            raise ValueError(f"UNet expects x of shape [B, H, W, C], got {x.shape}")
        if noise_cond.shape != x.shape[:1]:
            raise ValueError(f"noise_cond must have shape [B]={x.shape[:1]}, got "
                             f"{noise_cond.shape}")
        check_unet(x.shape[1:], ch=self.ch, ch_mult=self.ch_mult,
                   num_res_blocks=self.num_res_blocks, attn_resolutions=self.attn_resolutions,
                   cross_attn_resolutions=self.cross_attn_resolutions, num_heads=self.num_heads,
                   dropout=self.dropout, embedding=self.embedding,
                   embedding_scale=self.embedding_scale,
                   attn_implementation=self.attn_implementation,
                   position_embedding=self.position_embedding)
        context, mask = context_for(
            cond, x.shape[0], enabled_by="model.cross_attn_resolutions",
            enabled=bool(self.cross_attn_resolutions), initializing=self.is_initializing(),
            context_dim=self.context_dim, dtype=self.dtype)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        res_cls = maybe_remat(ResBlock, self.remat, static_argnums=(3,))
        attn_cls = maybe_remat(AttnBlock, self.remat)
        xattn_cls = maybe_remat(CrossAttnBlock, self.remat)
        block = lambda c, name, resample=None: res_cls(  # noqa: E731
            c, self.dropout, self.scale_shift, resample, name=name, **kw)

        def attend(h, where, index=""):
            """Self- and cross-attention wherever this resolution asks for them (always in the
            middle); modules named ``{where}_attn{index}``, ``{where}_xattn{index}``."""
            mid = where == "mid"
            if h.shape[1] in self.attn_resolutions or mid:
                h = attn_cls(self.num_heads, self.attn_implementation, self.position_embedding,
                             name=f"{where}_attn{index}", **kw)(h)
            if context is not None and (h.shape[1] in self.cross_attn_resolutions or mid):
                h = xattn_cls(self.num_heads, self.attn_implementation, self.position_embedding,
                              name=f"{where}_xattn{index}", **kw)(h, context, mask)
            return h

        last = len(self.ch_mult) - 1
        temb = NoiseEmbedding(4 * self.ch, self.embedding, self.embedding_scale,
                              self.num_classes, name="noise_embed",
                              **kw)(noise_cond, (cond or {}).get("label"))
        if context is not None:
            temb = temb + PooledContext(4 * self.ch, name="pooled_context", **kw)(context, mask)
        h = _conv(self.ch, self, name="conv_in")(x.astype(self.dtype))
        skips = [h]
        for i, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = block(self.ch * mult, f"down_{i}_block_{j}")(h, temb, train)
                h = attend(h, f"down_{i}", f"_{j}")
                skips.append(h)
            if i != last:
                if self.resblock_updown:
                    h = block(h.shape[-1], f"down_{i}_resample", "down")(h, temb, train)
                else:
                    h = _conv(h.shape[-1], self, stride=2, name=f"down_{i}_resample")(h)
                skips.append(h)

        h = block(h.shape[-1], "mid_block_0")(h, temb, train)
        h = attend(h, "mid")
        h = block(h.shape[-1], "mid_block_1")(h, temb, train)
        if encoder_only:  # a ControlNet's trainable copy (diffjax.controlnet): skips + middle
            return skips + [h]
        if skip_residuals is not None:  # a ControlNet's residuals, one per skip + the middle
            *extra, h_extra = skip_residuals
            skips = [s + r.astype(s.dtype) for s, r in zip(skips, extra, strict=True)]
            h = h + h_extra.astype(h.dtype)

        for i, mult in reversed(list(enumerate(self.ch_mult))):
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = block(self.ch * mult, f"up_{i}_block_{j}")(h, temb, train)
                h = attend(h, f"up_{i}", f"_{j}")
            if i != 0:
                if self.resblock_updown:
                    h = block(h.shape[-1], f"up_{i}_resample", "up")(h, temb, train)
                else:
                    h = _conv(h.shape[-1], self, name=f"up_{i}_resample", upsample=True)(h)

        h = nn.silu(group_norm(h.shape[-1], self.dtype, self.param_dtype, name="norm_out")(h))
        out = _conv(self.out_channels or x.shape[-1], self, zero=True, name="conv_out")(h)
        return out.astype(jnp.float32)
