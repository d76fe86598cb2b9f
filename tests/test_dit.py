"""Tests of the DiT backbone: adaLN-Zero identity at init, the paper's parameter counts (counted
with eval_shape, nothing allocated), conditioning, null context, configs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import models
from diffjax.models.dit import DiTBlock
from diffjax.models.mmdit import MMDiTBlock

TINY = dict(size="S/2", depth=2, hidden=16, num_heads=2)


def key(seed):
    return jax.random.key(seed, impl="unsafe_rbg")


def _random_params(module, *args, seed=0, scale=0.3):
    shapes = jax.eval_shape(module.init, key(0), *args)["params"]
    rng = np.random.default_rng(seed)
    return {"params": jax.tree_util.tree_map(
        lambda s: scale * rng.standard_normal(s.shape).astype(np.float32), shapes)}


def _inputs(batch=4, shape=(8, 8, 3), seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((batch,) + shape), jnp.float32),
            jnp.linspace(0.1, 0.9, batch))


# --- adaLN-Zero ----------------------------------------------------------------------------------

def test_dit_block_is_the_identity_at_init():
    # Every gate is regressed by a zero-initialised layer, so both residual branches are 0.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 6, 16)), jnp.float32)
    c = jnp.asarray(rng.standard_normal((2, 16)), jnp.float32)
    block = DiTBlock(num_heads=2)
    np.testing.assert_array_equal(jax.jit(block.apply)(jax.jit(block.init)(key(0), x, c), x, c),
                                  x)


def test_mmdit_block_leaves_both_streams_unchanged_at_init():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 6, 16)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 3, 16)), jnp.float32)
    c = jnp.asarray(rng.standard_normal((2, 16)), jnp.float32)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    block = MMDiTBlock(num_heads=2)
    out_x, out_ctx = jax.jit(block.apply)(jax.jit(block.init)(key(0), x, ctx, c, mask),
                                          x, ctx, c, mask)
    np.testing.assert_array_equal(out_x, x)
    np.testing.assert_array_equal(out_ctx, ctx)


@pytest.mark.parametrize("arch", ["dit", "mmdit"])
def test_transformer_output_is_exactly_zero_at_init_and_has_the_input_shape(arch):
    module = (models.DiT(num_classes=3, **TINY) if arch == "dit" else
              models.MMDiT(depth=2, hidden=16, num_heads=2, num_classes=3, context_dim=5))
    x, t = _inputs()
    cond = {"label": jnp.array([0, 1, 2, 3], jnp.int32)}
    out = jax.jit(module.apply)(jax.jit(module.init)(key(0), x, t, cond), x, t, cond)
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)


def test_dit_output_depends_on_noise_level_label_and_null_label():
    module = models.DiT(num_classes=3, **TINY)
    x, _ = _inputs(batch=1)
    x = jnp.broadcast_to(x, (4,) + x.shape[1:])
    t = jnp.array([0.2, 0.8, 0.2, 0.2])
    cond = {"label": jnp.array([0, 0, 1, 3], jnp.int32)}
    out = np.asarray(jax.jit(module.apply)(_random_params(module, x, t, cond), x, t, cond))
    diff = lambda i, j: np.abs(out[i] - out[j]).max()  # noqa: E731
    assert diff(0, 1) > 1e-4 and diff(0, 2) > 1e-4 and diff(2, 3) > 1e-4


def test_dit_is_equivariant_to_batch_permutation_on_non_square_input():
    module = models.DiT(**TINY)
    x, t = _inputs(batch=3, shape=(4, 8, 2), seed=2)
    variables = _random_params(module, x, t, seed=2)
    apply = jax.jit(module.apply)
    perm = jnp.array([2, 0, 1])
    np.testing.assert_allclose(apply(variables, x[perm], t[perm]), apply(variables, x, t)[perm],
                               rtol=1e-5, atol=1e-6)


# --- the paper's table ---------------------------------------------------------------------------

# Peebles & Xie 2023, Table 1 (ImageNet 256x256: 32x32x4 SD-VAE latents, 1000 classes, learned
# sigma so 8 output channels), trainable parameters in millions. The reference implementation
# also stores its fixed sin-cos position embedding (tokens x hidden) as a frozen parameter, which
# its log counts; diffjax keeps it a constant.
PAPER_PARAMS_M = {"S/2": 33, "B/2": 130, "L/2": 458, "XL/2": 675}
# facebookresearch/DiT's training log for DiT-XL/2: "DiT Parameters: 675,129,632".
DIT_XL2_EXACT = 675_129_632


def _imagenet256_count(size, with_position_embedding=False):
    module = models.DiT(size=size, num_classes=1000, out_channels=8)
    x, t = jnp.zeros((1, 32, 32, 4)), jnp.zeros(1)
    shapes = jax.eval_shape(module.init, key(0), x, t, {"label": jnp.zeros(1, jnp.int32)})
    name, patch = size.split("/")
    position_embedding = (32 // int(patch)) ** 2 * models.DIT_SIZES[name]["hidden"]
    return models.count_params(shapes) + with_position_embedding * position_embedding


@pytest.mark.parametrize("size", list(PAPER_PARAMS_M))
def test_parameter_count_matches_the_papers_table(size):
    assert round(_imagenet256_count(size) / 1e6) == PAPER_PARAMS_M[size]


def test_dit_xl2_parameter_count_matches_the_reference_implementation_exactly():
    assert _imagenet256_count("XL/2", with_position_embedding=True) == DIT_XL2_EXACT


# --- configs -------------------------------------------------------------------------------------

def test_default_dit_config_builds_dit_s2_through_the_registry():
    cfg = models.default_dit_config()
    cfg.class_conditional = True
    module = models.from_config(cfg, data_shape=(32, 32, 4), num_classes=10)
    assert isinstance(module, models.DiT) and module.num_classes == 10
    shapes = jax.eval_shape(module.init, key(0), jnp.zeros((1, 32, 32, 4)), jnp.zeros(1))
    assert 32e6 < models.count_params(shapes) < 34e6


@pytest.mark.parametrize("overrides,shape,words", [
    (dict(size="M/2"), (8, 8, 3), ["'M/2'", "S/2", "XL/8"]),
    (dict(size="S/4"), (6, 6, 3), ["patch_size=4", "6x6"]),
    (dict(hidden=20, num_heads=3), (8, 8, 3), ["num_heads=3", "hidden=20"]),
    (dict(attn_implementation="flash"), (8, 8, 3), ["'flash'", "cudnn"]),
    (dict(), (64,), ["(H, W, C)"]),
])
def test_bad_dit_config_raises_before_building(overrides, shape, words):
    cfg = models.default_dit_config()
    cfg.update(overrides)
    with pytest.raises(ValueError) as err:
        models.validate(cfg, shape)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_mmdit_joint_attention_with_tied_streams_is_a_dit_block_on_the_joined_sequence():
    # Two streams with the same weights attending jointly compute exactly what one stream does
    # on the concatenated sequence: a second, independent reading of the joint attention.
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((2, 6, 16)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 3, 16)), jnp.float32)
    c = jnp.asarray(rng.standard_normal((2, 16)), jnp.float32)
    dit = DiTBlock(num_heads=2)
    p = _random_params(dit, jnp.concatenate([x, ctx], axis=1), c, seed=5)["params"]
    stream = {"adaln": p["adaln"], "qkv": p["attn"]["qkv"], "out": p["attn"]["out"],
              "mlp_in": p["mlp_in"], "mlp_out": p["mlp_out"]}
    tied = {f"{s}_{k}": v for s in ("image", "text") for k, v in stream.items()}
    expected = dit.apply({"params": p}, jnp.concatenate([x, ctx], axis=1), c)
    out_x, out_ctx = MMDiTBlock(num_heads=2).apply({"params": tied}, x, ctx, c,
                                                   jnp.ones((2, 3), bool))
    np.testing.assert_allclose(out_x, expected[:, :6], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_ctx, expected[:, 6:], rtol=1e-5, atol=1e-5)
