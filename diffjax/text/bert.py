"""A BERT encoder in Flax that reads Hugging Face ``BertModel`` weights (safetensors).

Devlin et al. 2019. Post-LayerNorm transformer: embeddings (word + position + token type) ->
LayerNorm -> ``num_layers`` x [self-attention -> add & LayerNorm -> GELU MLP -> add & LayerNorm].
Padding positions are masked out of every attention (their own outputs are computed but never
read by a real token). Used frozen, as the text encoder of text-to-image models.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face ``config.json`` that the forward pass reads."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str) -> "BertConfig":
        with open(path) as f:
            raw = json.load(f)
        if raw.get("model_type", "bert") != "bert" or raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: expected a BERT config with hidden_act 'gelu', got "
                             f"model_type={raw.get('model_type')!r}, "
                             f"hidden_act={raw.get('hidden_act')!r}")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name=name)


class _Layer(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, h: Array, bias: Array) -> Array:
        cfg = self.cfg
        heads, width = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        split = lambda a: a.reshape(*a.shape[:2], heads, width)  # noqa: E731
        q = split(nn.Dense(cfg.hidden_size, name="query")(h))
        k = split(nn.Dense(cfg.hidden_size, name="key")(h))
        v = split(nn.Dense(cfg.hidden_size, name="value")(h))
        att = jax.nn.dot_product_attention(q, k, v, bias=bias)
        att = nn.Dense(cfg.hidden_size, name="attention_out")(att.reshape(h.shape))
        h = _layer_norm(cfg, "attention_norm")(h + att)
        mlp = nn.Dense(cfg.intermediate_size, name="intermediate")(h)
        mlp = nn.Dense(cfg.hidden_size, name="output")(jax.nn.gelu(mlp, approximate=False))
        return _layer_norm(cfg, "output_norm")(h + mlp)


class BertEncoder(nn.Module):
    """``(ids [B, L] int, mask [B, L]) -> hidden states [B, L, hidden_size]`` (float32)."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, ids: Array, mask: Array) -> Array:
        cfg = self.cfg
        length = ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds the encoder's "
                             f"max_position_embeddings={cfg.max_position_embeddings}")
        h = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(ids)
             + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                        name="position_embeddings")(jnp.arange(length))[None]
             + nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                        name="token_type_embeddings")(jnp.zeros_like(ids)))
        h = _layer_norm(cfg, "embeddings_norm")(h)
        # Additive bias [B, 1, 1, L]: padded keys get -inf-like scores (finite, so an all-padded
        # row stays finite; its outputs are never read).
        bias = jnp.where(mask[:, None, None, :].astype(bool), 0.0, jnp.finfo(h.dtype).min)
        for i in range(cfg.num_hidden_layers):
            h = _Layer(cfg, name=f"layer_{i}")(h, bias.astype(h.dtype))
        return h


_LAYER_NAMES = {  # ours -> Hugging Face's, inside encoder.layer.{i}
    "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "attention_out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
    "output": "output.dense", "output_norm": "output.LayerNorm",
}


def params_from_state_dict(cfg: BertConfig, state: Mapping[str, np.ndarray],
                           prefix: str = "") -> dict[str, Any]:
    """Flax params of :class:`BertEncoder` from a Hugging Face ``BertModel`` state dict.

    Linear weights are stored ``[out, in]`` there and ``[in, out]`` here. Raises KeyError
    naming the first missing tensor and ValueError on a shape that does not fit ``cfg``.
    """

    def get(name: str) -> np.ndarray:
        key = prefix + name
        if key not in state:
            raise KeyError(f"weights file has no tensor {key!r} (is it a BERT model?)")
        return np.asarray(state[key], np.float32)

    def dense(name):
        return {"kernel": get(f"{name}.weight").T, "bias": get(f"{name}.bias")}

    def norm(name):
        return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}

    params: dict[str, Any] = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "embeddings_norm": norm("embeddings.LayerNorm"),
    }
    for i in range(cfg.num_hidden_layers):
        layer = {}
        for ours, theirs in _LAYER_NAMES.items():
            full = f"encoder.layer.{i}.{theirs}"
            layer[ours] = norm(full) if ours.endswith("norm") else dense(full)
        params[f"layer_{i}"] = layer
    expected = jax.eval_shape(BertEncoder(cfg).init, jax.random.PRNGKey(0),
                              jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32))["params"]
    for path, want in jax.tree_util.tree_flatten_with_path(expected)[0]:
        got = params
        for entry in path:
            got = got[entry.key]
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"tensor for {jax.tree_util.keystr(path)} has shape {got.shape}, "
                             f"the config needs {want.shape}")
    return params


def load(model_dir: str) -> tuple[BertConfig, dict[str, Any]]:
    """``(config, params)`` from a folder with ``config.json`` and ``model.safetensors``."""
    from safetensors.numpy import load_file

    for name in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise FileNotFoundError(f"{model_dir} has no {name}: expected a Hugging Face BERT "
                                    "folder (config.json, model.safetensors, tokenizer.json)")
    cfg = BertConfig.from_json(os.path.join(model_dir, "config.json"))
    state = load_file(os.path.join(model_dir, "model.safetensors"))
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in state else ""
    return cfg, params_from_state_dict(cfg, state, prefix)


__all__ = ["BertConfig", "BertEncoder", "load", "params_from_state_dict"]
