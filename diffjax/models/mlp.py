"""A residual MLP for low-dimensional (e.g. 2-D toy) data."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.blocks import NoiseEmbedding, check_embedding

Dtype = Any


def check_mlp(data_shape: tuple[int, ...], *, hidden: int, depth: int, dropout: float,
              embedding: str, embedding_scale: float | None) -> None:
    """Raises ValueError naming the offending ``model.*`` key for any invalid MLP setting."""
    if len(data_shape) != 1:
        raise ValueError(f"MLP data_shape must be (D,), got {tuple(data_shape)}")
    if not (isinstance(hidden, int) and hidden >= 1):
        raise ValueError(f"model.hidden={hidden!r} must be a positive int")
    if not (isinstance(depth, int) and depth >= 0):
        raise ValueError(f"model.depth={depth!r} must be an int >= 0")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout={dropout!r} must be in [0, 1)")
    check_embedding(embedding, embedding_scale)


class MLP(nn.Module):
    """Residual MLP: ``depth`` pre-activation blocks, each conditioned on the noise embedding.

    Call: ``apply(variables, x, noise_cond, cond=None, train=False, rngs={"dropout": key})``.

    Args of ``__call__``:
      x: [B, D].
      noise_cond: [B] float, whatever the caller feeds; multiplied by ``embedding_scale`` inside
        the embedding and nowhere else.
      cond: the condition dict (:mod:`diffjax.conditions`); this network reads ``cond["label"]``:
        [B] int in ``[0, num_classes]`` (``num_classes`` = null label), or None; None is
        required when ``num_classes == 0`` and means the null label otherwise.
      train: enables dropout.

    Returns:
      [B, out_dim or D] float32; exactly 0 at initialisation (zero-initialised last layer).

    Attributes:
      hidden: width of every hidden layer.
      depth: number of residual blocks.
      embedding, embedding_scale: as for :class:`diffjax.models.UNet` (default scale 1000 for
        sinusoidal, suited to ``noise_cond`` in [0, 1]).
      dropout: dropout rate inside each block.
      num_classes: 0 = unconditional.
      out_dim: output width; None → D.
    """
    hidden: int = 128
    depth: int = 3
    embedding: str = "sinusoidal"
    embedding_scale: float | None = None
    dropout: float = 0.0
    num_classes: int = 0
    out_dim: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, noise_cond: jnp.ndarray,
                 cond: Mapping[str, jnp.ndarray] | None = None,
                 train: bool = False) -> jnp.ndarray:
        label = (cond or {}).get("label")
        if x.ndim != 2:
            raise ValueError(f"MLP expects x of shape [B, D], got {x.shape}")
        if noise_cond.shape != x.shape[:1]:
            raise ValueError(f"noise_cond must have shape [B]={x.shape[:1]}, got "
                             f"{noise_cond.shape}")
        check_mlp(x.shape[1:], hidden=self.hidden, depth=self.depth, dropout=self.dropout,
                  embedding=self.embedding, embedding_scale=self.embedding_scale)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        temb = NoiseEmbedding(self.hidden, self.embedding, self.embedding_scale,
                              self.num_classes, name="noise_embed", **kw)(noise_cond, label)
        h = nn.Dense(self.hidden, name="dense_in", **kw)(x.astype(self.dtype))
        for i in range(self.depth):
            r = nn.Dense(self.hidden, name=f"block_{i}_dense_0", **kw)(nn.silu(h))
            r = r + nn.Dense(self.hidden, name=f"block_{i}_temb", **kw)(nn.silu(temb))
            r = nn.Dropout(self.dropout)(nn.silu(r), deterministic=not train)
            h = h + nn.Dense(self.hidden, name=f"block_{i}_dense_1", **kw)(r)
        out = nn.Dense(self.out_dim or x.shape[-1], kernel_init=nn.initializers.zeros,
                       name="dense_out", **kw)(nn.silu(h))
        return out.astype(jnp.float32)
