"""Building blocks shared by every backbone (U-Net, MLP, DiT, ControlNet, autoencoder):
embeddings, attention, adaptive norms, resampling, convolution with a fast kernel gradient on
CPU, and rematerialisation.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import flax.linen as nn

from diffjax.models.blocks.attention import (IMPLEMENTATIONS, Attention, PooledContext,
                                             check_implementation, context_for, context_from,
                                             masked_mean)
from diffjax.conv import conv_general_dilated, upsample_conv_general_dilated
from diffjax.models.blocks.embeddings import (DEFAULT_EMBEDDING_SCALE, EMBEDDINGS, NoiseEmbedding,
                                              check_embedding, fourier_embedding,
                                              resolve_embedding_scale, resolve_labels, sincos_1d,
                                              sincos_2d, sinusoidal_embedding)
from diffjax.models.blocks.norms import (AdaGroupNorm, AdaLNZero, GroupNorm, group_norm,
                                         layer_norm, modulate, num_groups)
from diffjax.models.blocks.resample import (check_patchable, downsample_avg, patchify, unpatchify,
                                            upsample_nearest)

M = TypeVar("M", bound=type[nn.Module])


def maybe_remat(block: M, remat: bool, static_argnums: Sequence[int] = ()) -> M:
    """``block`` rematerialised (``jax.checkpoint``: activations recomputed in the backward pass,
    trading compute for memory) when ``remat``, else unchanged.

    ``static_argnums`` index ``__call__``'s arguments counting ``self`` as 0 (Python flags such as
    ``train`` must be static).
    """
    return nn.remat(block, static_argnums=tuple(static_argnums)) if remat else block


__all__ = [
    "AdaGroupNorm", "AdaLNZero", "Attention", "DEFAULT_EMBEDDING_SCALE", "EMBEDDINGS", "GroupNorm",
    "IMPLEMENTATIONS", "NoiseEmbedding", "PooledContext", "check_embedding",
    "check_implementation", "check_patchable", "context_for", "context_from",
    "conv_general_dilated", "downsample_avg",
    "fourier_embedding", "group_norm", "layer_norm", "masked_mean", "maybe_remat", "modulate",
    "num_groups", "patchify", "resolve_embedding_scale", "resolve_labels", "sincos_1d",
    "sincos_2d", "sinusoidal_embedding", "unpatchify", "upsample_conv_general_dilated",
    "upsample_nearest",
]
