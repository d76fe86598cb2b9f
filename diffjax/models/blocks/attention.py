"""Multi-head attention (Vaswani et al. 2017), self and cross, and the text context it reads.

Attention goes through ``jax.nn.dot_product_attention``: on GPU, ``implementation="cudnn"`` selects
the fused flash-attention kernel (bfloat16/float16 inputs); ``"xla"`` is the XLA reference.
``"blocked"`` (:func:`blocked_attention`) computes the same softmax attention a few examples at a
time in a head-major layout and recomputes it in the backward pass: XLA's CPU backend runs it ~10x
faster than the reference, whose [B, heads, T, S] logits and their gradient (hundreds of MB for
a 16x16 map at batch 32) are written and re-read from memory, and laid out for small batched
matmuls it runs slowly. The default ``None`` is ``"blocked"`` on CPU and lets JAX choose elsewhere.
Logits and softmax are float32 in every case.

The null context, by construction: a masked-out key contributes nothing, and a query whose keys
are ALL masked out receives exactly zero (where a softmax would average the masked keys
uniformly). A residual ``x + attention(x, context)`` is then exactly ``x`` for an all-masked
context, the same as a network called without any context. Classifier-free guidance uses
``diffjax.conditions.Nulls.context`` (the empty prompt's encoding) as its null; an encoder whose
empty prompt is stored with an all-zero mask makes that null the unconditional network exactly.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]

IMPLEMENTATIONS = (None, "xla", "cudnn", "blocked")

# Logits of one block of examples of blocked_attention: small enough to stay in cache.
_BLOCK_BYTES = 2**23


def check_implementation(implementation: str | None) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"model.attn_implementation={implementation!r} is unknown; valid "
                         f"choices: {', '.join(map(repr, IMPLEMENTATIONS))}")


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax attention in head-major layout: q [B, N, T, H], k/v [B, N, S, H], mask
    [B, 1, 1, S] bool or None → [B, N, T, H]. jax.nn.dot_product_attention's XLA arithmetic
    (float32 logits scaled after the product, masked keys at a large negative logit), in an
    order XLA:CPU runs faster (``experiments/benchmarks/attention_cpu.py``; the same function,
    float32 rounding differs):

    - Keys and values enter the products transposed, ``[H, S]``, behind an optimisation
      barrier (XLA would otherwise fold the transposes back into the products). Then every
      product of the backward pass that sums over the T queries, ``dk = ds^T q`` and
      ``dv = p^T do``, comes out as ``[H, S]`` with the ``[T, S]`` operand on the right,
      where XLA's kernel reads it in order; folded, it read it across and ran ~3x slower.
    - With fewer head dimensions than keys (``H < S``) the softmax's normalisation is applied
      to the output, ``o = (exp(s - max) @ v) / sum``, as flash attention defers it (Dao
      2023): one division per output instead of one per logit.

    For the bench U-Net's 16 heads of width 8 over 256 keys the two made the layer's forward
    and backward 2.25x faster on a 2-core CPU and its forward ~1.3x (README, "Attention on
    CPU")."""
    k_t, v_t = jax.lax.optimization_barrier((jnp.swapaxes(k, -1, -2), jnp.swapaxes(v, -1, -2)))
    logits = jnp.einsum("bnth,bnhs->bnts", q, k_t, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(q.shape[-1] ** -0.5)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.float32(-0.7 * jnp.finfo(jnp.float32).max))
    if q.shape[-1] >= k.shape[-2]:
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("bnts,bnhs->bnth", probs, v_t)
    # The max only keeps exp in range: the softmax does not depend on it (zero gradient).
    unnormalised = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
    out = jnp.einsum("bnts,bnhs->bnth", unnormalised.astype(v.dtype), v_t,
                     preferred_element_type=jnp.float32)
    return (out / unnormalised.sum(-1, keepdims=True)).astype(v.dtype)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      mask: jax.Array | None = None) -> jax.Array:
    """Exact multi-head attention, a block of examples at a time: q [B, T, N, H],
    k/v [B, S, N, H], mask [B, 1, 1, S] bool or None → [B, T, N, H].

    Each block's logits (at most ~8 MB) are computed, used and dropped, and recomputed in the
    backward pass (``jax.checkpoint``), so no [B, N, T, S] array is ever stored.
    """
    b, t, n, _ = q.shape
    per_example = n * t * k.shape[1] * 4
    size = max([c for c in range(1, b + 1) if b % c == 0 and c * per_example <= _BLOCK_BYTES]
               or [1])
    heads_major = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
    blocks = lambda a: a.reshape((b // size, size) + a.shape[1:])  # noqa: E731
    operands = tuple(blocks(heads_major(a)) for a in (q, k, v))
    if mask is not None:
        operands += (blocks(jnp.broadcast_to(mask, (b, 1, 1, k.shape[1]))),)

    @jax.checkpoint
    def block(ops):
        q, k, v, *mask = ops
        return _attend(q, k, v, mask[0] if mask else None)

    out = jax.lax.map(block, operands)
    return heads_major(out.reshape((b,) + out.shape[2:]))


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                          implementation: str | None) -> jax.Array:
    """``jax.nn.dot_product_attention`` or :func:`blocked_attention` (see the module docstring);
    q [B, T, N, H], k/v [B, S, N, H], mask broadcastable to [B, 1, 1, S] → [B, T, N, H]."""
    if implementation == "blocked" or (implementation is None and jax.default_backend() == "cpu"):
        return blocked_attention(q, k, v, mask)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def context_from(cond: Mapping[str, jax.Array] | None,
                 batch: int) -> tuple[jax.Array | None, jax.Array | None]:
    """``(context [B, L, D], mask [B, L] bool)`` from the condition dict, or ``(None, None)``.

    A missing ``context_mask`` means every token is valid.
    """
    cond = cond or {}
    context = cond.get("context")
    if context is None:
        if "context_mask" in cond:
            raise ValueError("cond['context_mask'] was given without cond['context']")
        return None, None
    if context.ndim != 3 or context.shape[0] != batch:
        raise ValueError(f"cond['context'] must have shape [B={batch}, L, D], got {context.shape}")
    mask = cond.get("context_mask")
    if mask is None:
        return context, jnp.ones(context.shape[:2], bool)
    if mask.shape != context.shape[:2]:
        raise ValueError(f"cond['context_mask'] must have shape [B, L]={context.shape[:2]}, got "
                         f"{mask.shape}")
    return context, mask.astype(bool)


def context_for(cond: Mapping[str, jax.Array] | None, batch: int, *, enabled_by: str,
                enabled: bool, initializing: bool, context_dim: int | None,
                dtype: Dtype) -> tuple[jax.Array | None, jax.Array | None]:
    """The context a network's cross-attention layers read, or ``(None, None)`` to skip them.

    ``enabled`` says whether the network has cross-attention (the config key ``enabled_by``
    turns it on). At initialisation without a context, a one-token, fully masked context of width
    ``context_dim`` creates the parameters; by construction it is the same as no context.
    """
    context, mask = context_from(cond, batch)
    if context is not None and not enabled:
        raise ValueError(f"cond['context'] was given but the model has no cross-attention; "
                         f"set {enabled_by}")
    if context is None and enabled and initializing:
        if context_dim is None:
            raise ValueError(f"initialising a model with {enabled_by} needs cond['context'] or "
                             f"model.context_dim")
        context = jnp.zeros((batch, 1, context_dim), dtype)
        mask = jnp.zeros((batch, 1), bool)
    return context, mask


def masked_mean(context: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of the valid tokens: [B, L, D], [B, L] bool → [B, D] float32 (0 if none is valid)."""
    weights = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(context.astype(jnp.float32) * weights, axis=1)
    return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class PooledContext(nn.Module):
    """The masked mean of the context projected to ``features`` (no bias: no context → 0).

    Added to the time embedding (as SDXL/Imagen add a pooled text embedding), so the global
    content of the prompt reaches every block, not only the cross-attention layers.
    context: [B, L, D], mask: [B, L] bool → [B, features].
    """
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, context: jax.Array, mask: jax.Array) -> jax.Array:
        pooled = masked_mean(context, mask).astype(self.dtype)
        return nn.Dense(self.features, use_bias=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="proj")(pooled)


class Attention(nn.Module):
    """Multi-head attention of queries ``x`` over ``x`` itself or over ``context``.

    Self-attention uses one fused q/k/v projection; cross-attention projects q from ``x`` and
    k/v from ``context``. The output projection is zero-initialised when ``zero_out`` (a residual
    block is then the identity at initialisation).

    Args of ``__call__``:
      x: [B, T, D_x] queries.
      context: [B, S, D_c] keys/values, or None for self-attention.
      mask: [B, S] bool, True for a valid key (needs ``context``); None = all valid.

    Returns:
      [B, T, out_features or D_x]; rows of an example with no valid key are exactly 0.
    """
    num_heads: int
    out_features: int | None = None
    zero_out: bool = True
    implementation: str | None = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None,
                 mask: jax.Array | None = None) -> jax.Array:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} does not divide the attention width "
                             f"{width}")
        head_dim = width // self.num_heads
        dense = lambda shape, name: nn.DenseGeneral(  # noqa: E731
            shape, kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype,
            name=name)
        if context is None:
            if mask is not None:
                raise ValueError("a key mask needs a context (cross-attention)")
            qkv = dense((3, self.num_heads, head_dim), "qkv")(x)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q = dense((self.num_heads, head_dim), "q")(x)
            kv = dense((2, self.num_heads, head_dim), "kv")(context.astype(self.dtype))
            k, v = kv[:, :, 0], kv[:, :, 1]
        has_key = None
        if mask is not None:
            has_key = jnp.any(mask, axis=-1)                                     # [B]
            # An example without keys attends to all of them (finite, any kernel) and is then
            # zeroed: a fully masked softmax row is NaN in some fused kernels.
            mask = (mask | ~has_key[:, None])[:, None, None, :]                  # [B, 1, 1, S]
        out = dot_product_attention(q, k, v, mask, self.implementation)
        out = nn.DenseGeneral(self.out_features or width, axis=(-2, -1),
                              kernel_init=nn.initializers.zeros if self.zero_out
                              else self.kernel_init,
                              dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
        if has_key is not None:
            out = out * has_key[:, None, None].astype(out.dtype)
        return out

