"""A word-level text encoder learned from scratch with the diffusion model (GLIDE, Nichol et
al. 2022, trains its text transformer jointly; this is the small version of that idea).

:class:`WordVocab` is built from the training captions: lower-cased words, ``<pad>`` = 0 and
``<eos>`` = 1 reserved. A prompt with a word outside the vocabulary is refused (ValueError
naming the word and the vocabulary size), never mapped to an unknown token: the model has
never seen it, and silently dropping it would sample a different prompt. The empty prompt is
``[<eos>]``: the null text of classifier-free guidance.
:class:`TextTransformer` is a pre-LayerNorm transformer over those ids whose token states feed
cross-attention; it is part of the denoiser's parameters and trained with it.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PAD, EOS = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (punctuation dropped)."""
    return _WORD.findall(text.lower())


class WordVocab:
    """Word <-> id map built from captions, deterministic (sorted words)."""

    def __init__(self, vocabulary: Sequence[str], max_length: int = 16):
        self.words = ["<pad>", "<eos>", *vocabulary]
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary words must be unique")
        self.max_length = max_length

    @classmethod
    def from_captions(cls, captions: Iterable[str], max_length: int = 16) -> "WordVocab":
        return cls(sorted({w for c in captions for w in words(c)}), max_length)

    def __len__(self) -> int:
        return len(self.words)

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [B, max_length] int32, mask [B, max_length] int32)``; each prompt ends in
        ``<eos>``."""
        ids = np.zeros((len(prompts), self.max_length), np.int32)
        for i, prompt in enumerate(prompts):
            toks = words(prompt)
            unknown = [w for w in toks if w not in self.index]
            if unknown:
                raise ValueError(f"prompt {prompt!r}: word {unknown[0]!r} is not in the learned "
                                 f"encoder's vocabulary ({len(self)} words, built from the "
                                 "training captions); use words from the captions or the "
                                 "'minilm' encoder")
            if len(toks) + 1 > self.max_length:
                raise ValueError(f"prompt {prompt!r} has {len(toks)} words; the learned encoder "
                                 f"takes at most {self.max_length - 1}")
            row = [self.index[w] for w in toks] + [EOS]
            ids[i, :len(row)] = row
        return ids, (ids != PAD).astype(np.int32)


class TextTransformer(nn.Module):
    """``(ids [B, L], mask [B, L]) -> token states [B, L, width]`` (padded rows zeroed)."""

    vocab_size: int
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    max_length: int = 16

    @nn.compact
    def __call__(self, ids: Array, mask: Array) -> Array:
        if ids.shape[1] > self.max_length:
            raise ValueError(f"text length {ids.shape[1]} exceeds max_length={self.max_length}")
        h = nn.Embed(self.vocab_size, self.width, name="token_embed")(ids)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_length, self.width))
        h = h + pos[None, :ids.shape[1]]
        bias = jnp.where(mask[:, None, None, :].astype(bool), 0.0, jnp.finfo(h.dtype).min)
        heads, hw = self.num_heads, self.width // self.num_heads
        for i in range(self.depth):
            y = nn.LayerNorm(name=f"block_{i}_norm_0")(h)
            qkv = nn.Dense(3 * self.width, name=f"block_{i}_qkv")(y)
            q, k, v = (a.reshape(*a.shape[:2], heads, hw) for a in jnp.split(qkv, 3, axis=-1))
            att = jax.nn.dot_product_attention(q, k, v, bias=bias).reshape(h.shape)
            h = h + nn.Dense(self.width, name=f"block_{i}_proj")(att)
            y = nn.LayerNorm(name=f"block_{i}_norm_1")(h)
            y = nn.Dense(4 * self.width, name=f"block_{i}_mlp_0")(y)
            h = h + nn.Dense(self.width, name=f"block_{i}_mlp_1")(jax.nn.gelu(y))
        h = nn.LayerNorm(name="final_norm")(h)
        return h * mask[..., None].astype(h.dtype)


__all__ = ["EOS", "PAD", "TextTransformer", "WordVocab", "words"]
