"""A KL-regularised convolutional autoencoder in the design of Stable Diffusion's AutoencoderKL
(Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"; the
layout of diffusers' ``AutoencoderKL``).

Encoder: ``conv_in``, one down block per entry of ``block_out_channels`` (``layers_per_block``
residual blocks, then a stride-2 convolution except after the last), a middle block (residual,
single-head self-attention, residual), GroupNorm-SiLU-``conv_out`` to ``2 * latent_channels``
(mean and log-variance), a 1x1 ``quant_conv``. Decoder: 1x1 ``post_quant_conv``, ``conv_in``,
the middle block, up blocks in reverse (``layers_per_block + 1`` residual blocks, nearest x2
upsampling and a convolution except after the last), GroupNorm-SiLU-``conv_out``. The
downsampling factor is ``f = 2 ** (len(block_out_channels) - 1)``.

Module and parameter names follow diffusers' state-dict keys (``down_blocks_0/resnets_1/conv1``
is ``down_blocks.0.resnets.1.conv1``), which is what :mod:`diffjax.autoencoder.diffusers`
relies on. Images are NHWC in [-1, 1].
"""
from __future__ import annotations

import math

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.conv import conv_general_dilated, upsample_conv_general_dilated
from diffjax.group_norm import GroupNorm

Array = jax.Array
Dtype = Any
# diffusers clamps the log-variance of its DiagonalGaussianDistribution to this range.
LOGVAR_RANGE = (-30.0, 20.0)


def _norm(groups: int, dtype: Dtype, name: str) -> GroupNorm:
    # Two-pass variance, as diffusers' (PyTorch's) GroupNorm: the SD VAE's weights expect it.
    return GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype, use_fast_variance=False,
                     name=name)


def _conv(features: int, dtype: Dtype, name: str | None, kernel: int = 3, stride: int = 1,
          padding: Any = "SAME", upsample: bool = False) -> nn.Conv:
    """A convolution; ``upsample``: of its input upsampled 2x by nearest neighbour
    (:func:`diffjax.conv.upsample_conv_general_dilated`, the same parameters)."""
    return nn.Conv(features, (kernel, kernel), (stride, stride),
                   padding=padding if kernel > 1 else "VALID", dtype=dtype, name=name,
                   conv_general_dilated=(upsample_conv_general_dilated if upsample
                                         else conv_general_dilated))


class ResnetBlock(nn.Module):
    """GN-SiLU-conv twice, plus the input (1x1 ``conv_shortcut`` when the width changes)."""
    out_channels: int
    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = _conv(self.out_channels, self.dtype, "conv1")(
            nn.silu(_norm(self.groups, self.dtype, "norm1")(x)))
        h = _conv(self.out_channels, self.dtype, "conv2")(
            nn.silu(_norm(self.groups, self.dtype, "norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, self.dtype, "conv_shortcut", kernel=1)(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, GroupNorm first, residual."""
    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hh, ww, c = x.shape
        h = _norm(self.groups, self.dtype, "group_norm")(x).reshape(b, hh * ww, c)
        q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h) for n in ("to_q", "to_k", "to_v"))
        weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(c).astype(q.dtype),
                                 axis=-1)
        out = nn.Dense(c, dtype=self.dtype, name="to_out_0")(jnp.einsum("bqk,bkc->bqc", weights, v))
        return x + out.reshape(b, hh, ww, c)


class MidBlock(nn.Module):
    channels: int
    groups: int
    attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_0")(x)
        if self.attention:
            x = AttnBlock(self.groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after padding one row/column at the bottom/right (as SD)."""
    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(self.channels, self.dtype, "conv", stride=2, padding="VALID")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution (as one function: on CPU without the
    upsampled map, :func:`diffjax.conv.upsample_conv_general_dilated`)."""
    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _conv(self.channels, self.dtype, "conv", upsample=True)(x)


class Stage(nn.Module):
    """``num_resnets`` residual blocks of width ``channels``, then ``resample`` (or none)."""
    channels: int
    num_resnets: int
    groups: int
    resample: str | None = None  # "down" | "up" | None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.num_resnets):
            x = ResnetBlock(self.channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
        if self.resample == "down":
            x = Downsample(self.channels, self.dtype, name="downsamplers_0")(x)
        elif self.resample == "up":
            x = Upsample(self.channels, self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    block_out_channels: Sequence[int]
    layers_per_block: int
    latent_channels: int
    groups: int
    mid_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        chs = tuple(self.block_out_channels)
        x = _conv(chs[0], self.dtype, "conv_in")(x)
        for i, ch in enumerate(chs):
            x = Stage(ch, self.layers_per_block, self.groups,
                      "down" if i < len(chs) - 1 else None, self.dtype, name=f"down_blocks_{i}")(x)
        x = MidBlock(chs[-1], self.groups, self.mid_attention, self.dtype, name="mid_block")(x)
        x = nn.silu(_norm(self.groups, self.dtype, "conv_norm_out")(x))
        return _conv(2 * self.latent_channels, self.dtype, "conv_out")(x)


class Decoder(nn.Module):
    block_out_channels: Sequence[int]
    layers_per_block: int
    out_channels: int
    groups: int
    mid_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: Array, return_features: bool = False):
        chs = tuple(reversed(tuple(self.block_out_channels)))
        x = _conv(chs[0], self.dtype, "conv_in")(z)
        x = MidBlock(chs[0], self.groups, self.mid_attention, self.dtype, name="mid_block")(x)
        for i, ch in enumerate(chs):
            x = Stage(ch, self.layers_per_block + 1, self.groups,
                      "up" if i < len(chs) - 1 else None, self.dtype, name=f"up_blocks_{i}")(x)
        h = nn.silu(_norm(self.groups, self.dtype, "conv_norm_out")(x))
        out = _conv(self.out_channels, self.dtype, "conv_out")(h)
        return (out, h) if return_features else out


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) in the layout of LDM's first-stage discriminator
    (taming-transformers' NLayerDiscriminator): 4x4 convolutions, ``layers`` of them with
    stride 2 and widths ``channels * min(2^n, 8)``, one with stride 1, then a 4x4 convolution
    to one logit per patch; LeakyReLU 0.2. GroupNorm stands in for BatchNorm, which would
    need state outside the parameters. ``x: [B, H, W, C] -> logits [B, h, w, 1]``."""
    channels: int = 64
    layers: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        def conv(features, stride, name, bias=True):
            return nn.Conv(features, (4, 4), (stride, stride), padding=((1, 1), (1, 1)),
                           use_bias=bias, dtype=self.dtype, name=name)

        def norm(features, name):
            return nn.GroupNorm(num_groups=math.gcd(features, 32), dtype=self.dtype, name=name)

        h = nn.leaky_relu(conv(self.channels, 2, "conv_0")(x), 0.2)
        for n in range(1, self.layers + 1):
            width = self.channels * min(2 ** n, 8)
            stride = 2 if n < self.layers else 1
            h = conv(width, stride, f"conv_{n}", bias=False)(h)
            h = nn.leaky_relu(norm(width, f"norm_{n}")(h), 0.2)
        return conv(1, 1, "conv_out")(h).astype(jnp.float32)


class AutoencoderKL(nn.Module):
    """The autoencoder: ``encode(x) -> (mean, logvar)``, ``decode(z) -> x``.

    ``x: [B, H, W, image_channels]`` in [-1, 1]; ``mean, logvar, z: [B, H/f, W/f,
    latent_channels]`` with ``f = 2 ** (len(block_out_channels) - 1)``. ``__call__(x, ...)``
    reconstructs from the posterior mean (it takes the networks' ``(x, noise_cond, cond)``
    call so the trainer can initialise it like any network; ``noise_cond``/``cond`` are
    ignored). ``num_classes`` is unused (every network of the registry receives it).
    """
    block_out_channels: Sequence[int] = (64, 128, 128)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    image_channels: int = 3
    # A PatchGAN for the adversarial loss (autoencoder.disc_weight); 0 = none. Its
    # parameters sit under "discriminator", beside the autoencoder's.
    disc_channels: int = 0
    disc_layers: int = 3
    num_classes: int = 0
    dtype: Dtype = jnp.float32

    def setup(self):
        self.encoder = Encoder(self.block_out_channels, self.layers_per_block,
                               self.latent_channels, self.norm_num_groups, self.mid_attention,
                               self.dtype)
        self.decoder = Decoder(self.block_out_channels, self.layers_per_block,
                               self.image_channels, self.norm_num_groups, self.mid_attention,
                               self.dtype)
        if self.use_quant_conv:
            self.quant_conv = _conv(2 * self.latent_channels, self.dtype, None, kernel=1)
        if self.use_post_quant_conv:
            self.post_quant_conv = _conv(self.latent_channels, self.dtype, None, kernel=1)
        if self.disc_channels:
            self.discriminator = PatchDiscriminator(self.disc_channels, self.disc_layers,
                                                    self.dtype)

    def encode(self, x: Array) -> tuple[Array, Array]:
        h = self.encoder(x)
        if self.use_quant_conv:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: Array) -> Array:
        return self.decode_with_features(z)[0]

    def decode_with_features(self, z: Array) -> tuple[Array, Array]:
        """``(x, h)``: the image and the features ``conv_out`` maps to it (the last layer,
        whose gradients weigh the adversarial loss)."""
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z)
        x, h = self.decoder(z, return_features=True)
        return x.astype(jnp.float32), h

    def discriminate(self, x: Array) -> Array:
        """The PatchGAN's logits of images ``x`` (``disc_channels > 0``)."""
        return self.discriminator(x)

    def __call__(self, x: Array, noise_cond: Any = None, cond: Any = None,
                 train: bool = False) -> Array:
        del noise_cond, cond, train
        x = self.decode(self.encode(x)[0])
        if self.disc_channels:  # initialises the discriminator's parameters too
            x = x + 0.0 * jnp.mean(self.discriminate(x))
        return x


def factor(block_out_channels: Sequence[int]) -> int:
    """The downsampling factor ``f`` of an autoencoder with these blocks."""
    return 2 ** (len(tuple(block_out_channels)) - 1)


def check_autoencoder(data_shape: Sequence[int], *, block_out_channels: Sequence[int],
                      layers_per_block: int, latent_channels: int, norm_num_groups: int,
                      image_channels: int, disc_channels: int = 0, disc_layers: int = 3) -> None:
    """Raises ValueError naming the offending ``model.*`` key."""
    for key, value, low in (("disc_channels", disc_channels, 0), ("disc_layers", disc_layers, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"model.{key}={value!r} must be an int >= {low}")
    chs = tuple(block_out_channels)
    if not chs or any(not isinstance(c, int) or c < 1 for c in chs):
        raise ValueError(f"model.block_out_channels={chs!r} must be a non-empty tuple of "
                         "positive ints (one per resolution)")
    for key, value in (("layers_per_block", layers_per_block),
                       ("latent_channels", latent_channels),
                       ("norm_num_groups", norm_num_groups)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{key}={value!r} must be a positive int")
    bad = [c for c in chs if c % norm_num_groups]
    if bad:
        raise ValueError(f"model.norm_num_groups={norm_num_groups} must divide every entry of "
                         f"model.block_out_channels={chs} (not {bad[0]})")
    if len(data_shape) != 3:
        raise ValueError(f"model.arch='autoencoder' needs images (H, W, C), not data of shape "
                         f"{tuple(data_shape)}")
    h, w, c = data_shape
    if c != image_channels:
        raise ValueError(f"model.image_channels={image_channels} but the data has {c} "
                         f"channels; set model.image_channels={c}")
    patches = min(h, w) // 2 ** disc_layers - 2  # the PatchGAN's output side
    if disc_channels and patches < 1:
        deepest = max(1, (min(h, w) // 3).bit_length() - 1)
        raise ValueError(f"model.disc_layers={disc_layers} halves {h}x{w} images to nothing; "
                         f"use model.disc_layers <= {deepest} here")
    f = factor(chs)
    if h % f or w % f:
        raise ValueError(f"model.block_out_channels={chs} downsamples by f={f}, which does not "
                         f"divide the data's {h}x{w} images; use fewer blocks")
