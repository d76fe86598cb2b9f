"""Tests of diffjax.models.blocks against independent references: attention against a NumPy
softmax attention, masking, pooling, adaptive norms, patches, position embeddings, remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from diffjax import models
from diffjax.models import blocks
from diffjax.models.unet import AttnBlock, CrossAttnBlock, ResBlock, check_unet


def key(seed):
    return jax.random.key(seed, impl="unsafe_rbg")


def _random_params(module, *args, seed=0, scale=0.3):
    """Every parameter (zero-initialised ones included) drawn at random, host-side."""
    shapes = jax.eval_shape(lambda k: module.init(k, *args), key(0))["params"]
    rng = np.random.default_rng(seed)
    return {"params": jax.tree_util.tree_map(
        lambda s: scale * rng.standard_normal(s.shape).astype(np.float32), shapes)}


def _np_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v per head in float64; a query with no valid key gets 0.

    q: [B, T, N, H], k, v: [B, S, N, H], mask: [B, S] bool.
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    out = np.zeros(q.shape)
    for b in range(q.shape[0]):
        valid = np.ones(k.shape[1], bool) if mask is None else np.asarray(mask[b])
        if not valid.any():
            continue
        for n in range(q.shape[2]):
            logits = q[b, :, n] @ k[b, valid, n].T / np.sqrt(q.shape[-1])
            w = np.exp(logits - logits.max(axis=1, keepdims=True))
            out[b, :, n] = (w / w.sum(axis=1, keepdims=True)) @ v[b, valid, n]
    return out


def _dense(x, p):
    """x [..., D] times a DenseGeneral kernel [D, *out] plus bias, in float64."""
    kernel = np.asarray(p["kernel"], np.float64)
    y = np.tensordot(np.asarray(x, np.float64), kernel, axes=1)
    return y + np.asarray(p["bias"], np.float64)


def _out_proj(heads, p):
    kernel = np.asarray(p["kernel"], np.float64)       # [N, H, D]
    return np.tensordot(heads, kernel, axes=2) + np.asarray(p["bias"], np.float64)


def test_self_attention_equals_numpy_softmax_attention():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    module = blocks.Attention(num_heads=2)
    variables = _random_params(module, x)
    p = variables["params"]
    qkv = _dense(x, p["qkv"])                            # [B, T, 3, N, H]
    expected = _out_proj(_np_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]), p["out"])
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-4, atol=1e-5)


def test_cross_attention_with_padding_mask_equals_numpy_reference():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 8)).astype(np.float32)
    context = rng.standard_normal((3, 6, 5)).astype(np.float32)
    # Row 0: all valid; row 1: padded after 2 tokens, with a hole; row 2: no valid token.
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    module = blocks.Attention(num_heads=2)
    variables = _random_params(module, x, context, mask, seed=1)
    p = variables["params"]
    q = _dense(x, p["q"])
    kv = _dense(context, p["kv"])
    expected = _out_proj(_np_attention(q, kv[:, :, 0], kv[:, :, 1], mask), p["out"])
    expected[2] = 0.0  # no keys → exactly zero, not the output projection's bias
    out = module.apply(variables, x, context, mask)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out[2], 0.0)


def test_masked_tokens_contribute_nothing_whatever_their_values():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    context = rng.standard_normal((2, 5, 6)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0]], bool)
    garbage = np.where(mask[..., None], context, 1e3 * rng.standard_normal(context.shape))
    module = blocks.Attention(num_heads=2)
    variables = _random_params(module, x, context, mask, seed=2)
    np.testing.assert_allclose(module.apply(variables, x, context, mask),
                               module.apply(variables, x, garbage.astype(np.float32), mask),
                               rtol=1e-6, atol=1e-6)
    pooled = blocks.masked_mean(jnp.asarray(garbage), jnp.asarray(mask))
    expected = [context[0, :2].mean(0), context[1, [0, 2]].mean(0)]
    np.testing.assert_allclose(pooled, np.stack(expected), rtol=1e-5, atol=1e-6)


def test_masked_mean_of_an_empty_context_is_zero():
    pooled = blocks.masked_mean(jnp.ones((2, 3, 4)), jnp.zeros((2, 3), bool))
    np.testing.assert_array_equal(pooled, 0.0)


def test_attention_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="num_heads=3"):
        jax.eval_shape(blocks.Attention(num_heads=3).init, key(0), jnp.zeros((1, 2, 8)))


def test_modulate_and_ada_group_norm_match_their_definition():
    rng = np.random.default_rng(3)
    h = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
    emb = rng.standard_normal((2, 6)).astype(np.float32)
    module = blocks.AdaGroupNorm()
    variables = _random_params(module, h, emb, seed=3)
    p = variables["params"]
    silu = emb / (1 + np.exp(-emb))
    scale, shift = np.split(silu @ p["emb"]["kernel"] + p["emb"]["bias"], 2, axis=-1)
    groups = blocks.num_groups(8)
    g = h.reshape(2, 4, 4, groups, 8 // groups)
    normed = ((g - g.mean(axis=(1, 2, 4), keepdims=True))
              / np.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + 1e-6)).reshape(h.shape)
    normed = normed * p["norm"]["scale"] + p["norm"]["bias"]
    expected = normed * (1 + scale[:, None, None]) + shift[:, None, None]
    np.testing.assert_allclose(module.apply(variables, h, emb), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 5, 3, 8), (3, 7, 12)])
def test_group_norm_matches_the_definition_and_flax_gradients(shape):
    """Per-channel-then-per-group moments give GroupNorm: a float64 NumPy closed form for the
    output ([B, H, W, C] and token-shaped [B, L, C]); Flax's own ``nn.GroupNorm`` (one
    reduction over the group) for the gradients of the input and the parameters and for a
    forward-mode derivative."""
    import flax.linen as nn

    rng = np.random.default_rng(5)
    x = (3 * rng.standard_normal(shape) + rng.standard_normal(shape[-1])).astype(np.float32)
    c = shape[-1]
    module = blocks.GroupNorm(num_groups=blocks.num_groups(c))
    variables = _random_params(module, x, seed=5)
    p = variables["params"]
    g = x.astype(np.float64).reshape(shape[:-1] + (module.num_groups, -1))
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    normed = ((g - g.mean(axes, keepdims=True)) / np.sqrt(g.var(axes, keepdims=True) + 1e-6))
    expected = normed.reshape(shape) * p["scale"] + p["bias"]
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=2e-5)
    reference = nn.GroupNorm(num_groups=module.num_groups, epsilon=1e-6)
    weights = rng.standard_normal(shape).astype(np.float32)
    loss = lambda m: lambda v, x: jnp.sum(jnp.tanh(m.apply(v, x)) * weights)  # noqa: E731
    ours = jax.grad(loss(module), argnums=(0, 1))(variables, x)
    theirs = jax.grad(loss(reference), argnums=(0, 1))(variables, x)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Forward mode too (MeanFlow's jax.jvp through the network): no custom derivative in the way.
    tangent = rng.standard_normal(shape).astype(np.float32)
    jvp = lambda m: jax.jvp(lambda x: m.apply(variables, x), (x,), (tangent,))[1]  # noqa: E731
    np.testing.assert_allclose(jvp(module), jvp(reference), rtol=1e-4, atol=1e-4)
    half = blocks.GroupNorm(num_groups=module.num_groups, dtype=jnp.bfloat16)
    out = half.apply(variables, x.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="num_groups=3 does not divide the 8 channels"):
        blocks.GroupNorm(num_groups=3).init(key(0), jnp.zeros((1, 2, 2, 8)))


def test_group_norm_two_pass_variance_holds_far_from_zero_mean():
    """``use_fast_variance=False`` (the autoencoders'): on features whose mean is a thousand
    times their spread, where ``E[x^2] - E[x]^2`` in float32 loses the variance, the output
    still matches the float64 closed form, and the gradients match Flax's two-pass module."""
    import flax.linen as nn

    rng = np.random.default_rng(6)
    shape = (2, 4, 5, 8)
    x = (1000.0 + rng.standard_normal(shape)).astype(np.float32)
    module = blocks.GroupNorm(num_groups=4, use_fast_variance=False)
    variables = _random_params(module, x, seed=6)
    p = variables["params"]
    g = x.astype(np.float64).reshape(shape[:-1] + (4, 2))
    normed = (g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(g.var((1, 2, 4), keepdims=True)
                                                              + 1e-6)
    expected = normed.reshape(shape) * p["scale"] + p["bias"]
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-3, atol=1e-3)
    reference = nn.GroupNorm(num_groups=4, epsilon=1e-6, use_fast_variance=False)
    weights = rng.standard_normal(shape).astype(np.float32)
    loss = lambda m: lambda v: jnp.sum(jnp.tanh(m.apply(v, x)) * weights)  # noqa: E731
    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss(module))(variables)),
                    jax.tree_util.tree_leaves(jax.grad(loss(reference))(variables))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_group_norm_is_ours_by_default_and_either_kind_reads_the_other_parameters():
    """``group_norm`` gives diffjax's module on every backend unless ``kind`` says; a
    checkpoint of one kind applied in the other gives the same output (one parameter tree)."""
    import flax.linen as nn

    assert isinstance(blocks.group_norm(16, jnp.float32, jnp.float32), blocks.GroupNorm)
    x = np.random.default_rng(2).standard_normal((2, 3, 3, 16)).astype(np.float32)
    ours = blocks.group_norm(16, jnp.float32, jnp.float32, kind=blocks.GroupNorm)
    flax_gn = blocks.group_norm(16, jnp.float32, jnp.float32, kind=nn.GroupNorm)
    assert isinstance(ours, blocks.GroupNorm) and ours.num_groups == flax_gn.num_groups == 4
    variables = _random_params(flax_gn, x, seed=3)
    np.testing.assert_allclose(ours.apply(variables, x), flax_gn.apply(variables, x),
                               rtol=1e-5, atol=1e-5)


def test_ada_ln_zero_regresses_exactly_zero_at_init():
    c = jnp.asarray(np.random.default_rng(4).standard_normal((3, 5)), jnp.float32)
    module = blocks.AdaLNZero(features=4, chunks=3)
    out = module.apply(module.init(key(0), c), c)
    assert len(out) == 3 and all(o.shape == (3, 4) for o in out)
    for o in out:
        np.testing.assert_array_equal(o, 0.0)


# --- patches and positions -----------------------------------------------------------------------

def test_patchify_tokens_are_the_patches_in_row_major_order_and_unpatchify_inverts():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 8, 3)).astype(np.float32)
    p = 2
    tokens = np.asarray(blocks.patchify(jnp.asarray(x), p))
    assert tokens.shape == (2, 3 * 4, p * p * 3)
    for i in range(3):
        for j in range(4):
            np.testing.assert_array_equal(tokens[:, i * 4 + j],
                                          x[:, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(2, -1))
    np.testing.assert_array_equal(blocks.unpatchify(jnp.asarray(tokens), p, (3, 4)), x)


def test_shifting_the_image_by_a_patch_shifts_the_tokens_by_one_cell():
    x = np.random.default_rng(6).standard_normal((1, 8, 8, 2)).astype(np.float32)
    p = 2
    tokens = np.asarray(blocks.patchify(jnp.asarray(x), p)).reshape(1, 4, 4, -1)
    shifted = blocks.patchify(jnp.asarray(np.roll(x, p, axis=2)), p)
    shifted = np.asarray(shifted).reshape(1, 4, 4, -1)
    np.testing.assert_array_equal(shifted, np.roll(tokens, 1, axis=2))


def test_position_embedding_similarity_depends_only_on_the_offset():
    # For sin-cos features, <pe(a), pe(b)> = sum_k cos(f_k (a - b)) per axis: a function of the
    # offset alone, which is what lets attention read relative positions.
    dim, grid = 16, 5
    pe = blocks.sincos_2d(grid, grid, dim).reshape(grid, grid, dim)
    freqs = 10_000.0 ** (-np.arange(dim // 4) / (dim // 4))
    for di, dj in [(0, 1), (1, 0), (2, 3), (1, -2)]:
        expected = np.cos(freqs * di).sum() + np.cos(freqs * dj).sum()
        for i in range(max(0, -di), min(grid, grid - di)):
            for j in range(max(0, -dj), min(grid, grid - dj)):
                np.testing.assert_allclose(pe[i, j] @ pe[i + di, j + dj], expected, rtol=1e-5,
                                           atol=1e-5)
    # Half the channels see only the row, half only the column.
    np.testing.assert_array_equal(pe[2, 0, :dim // 2], pe[2, 4, :dim // 2])
    np.testing.assert_array_equal(pe[0, 3, dim // 2:], pe[4, 3, dim // 2:])


@pytest.mark.parametrize("block", ["self", "cross"])
def test_unet_attention_sees_positions_only_with_a_position_embedding(block):
    # Attention without positions is permutation-equivariant: transposing the image transposes
    # the output, and a constant image gives the same output everywhere, exactly. With the
    # sin-cos embedding (same parameters) both must fail: the block now knows where it is.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
    context = rng.standard_normal((2, 3, 6)).astype(np.float32)
    mask = np.array([[True, True, False], [True, True, True]])
    make = {"self": lambda pe: (AttnBlock(num_heads=2, position_embedding=pe), ()),
            "cross": lambda pe: (CrossAttnBlock(num_heads=2, position_embedding=pe),
                                 (context, mask))}[block]
    module, extra = make("none")
    variables = _random_params(module, x, *extra)
    transpose = lambda a: np.swapaxes(np.asarray(a), 1, 2)  # noqa: E731
    out = module.apply(variables, x, *extra)
    np.testing.assert_allclose(module.apply(variables, transpose(x), *extra), transpose(out),
                               rtol=1e-5, atol=1e-5)
    flat = np.broadcast_to(x[:, :1, :1], x.shape)
    out_flat = np.asarray(module.apply(variables, flat, *extra))
    np.testing.assert_allclose(out_flat, np.broadcast_to(out_flat[:, :1, :1], x.shape),
                               rtol=1e-5, atol=1e-5)
    with_pe, _ = make("sincos")
    out_pe = np.asarray(with_pe.apply(variables, x, *extra))
    assert np.abs(np.asarray(with_pe.apply(variables, transpose(x), *extra))
                  - transpose(out_pe)).max() > 1e-2
    out_pe_flat = np.asarray(with_pe.apply(variables, flat, *extra))
    assert np.abs(out_pe_flat - out_pe_flat[:, :1, :1]).max() > 1e-2


def test_unet_position_embedding_is_checked():
    kw = dict(ch=6, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
              cross_attn_resolutions=(), num_heads=1, dropout=0.0, embedding="sinusoidal",
              embedding_scale=None, attn_implementation=None)
    with pytest.raises(ValueError, match=r"model.position_embedding='rope'.*none, sincos"):
        check_unet((8, 8, 3), **kw, position_embedding="rope")
    with pytest.raises(ValueError, match=r"divisible by 4.*6 channels"):
        check_unet((8, 8, 3), **kw, position_embedding="sincos")
    check_unet((8, 8, 3), **{**kw, "ch": 8}, position_embedding="sincos")


# --- remat ---------------------------------------------------------------------------------------

def _loss_and_grad(module, *args):
    def loss(params):
        return jnp.mean(module.apply({"params": params}, *args, rngs={"dropout": key(1)}) ** 2)
    return jax.value_and_grad(loss)


@pytest.mark.parametrize("arch", ["unet_block", "dit"])
def test_remat_changes_memory_not_numbers(arch):
    rng = np.random.default_rng(7)
    if arch == "dit":  # the whole network: its blocks are rematerialised
        kwargs = dict(size="S/2", depth=1, hidden=8, num_heads=2)
        plain, remat = models.get("dit", **kwargs), models.get("dit", remat=True, **kwargs)
        args = (jnp.asarray(rng.standard_normal((2, 4, 4, 1)), jnp.float32), jnp.array([.3, .8]))
    else:  # a U-Net residual block with dropout on: its static `train` flag and its rng
        plain = ResBlock(8, dropout=0.5, scale_shift=True)
        remat = blocks.maybe_remat(ResBlock, True, static_argnums=(3,))(8, 0.5, True)
        args = (jnp.asarray(rng.standard_normal((2, 4, 4, 4)), jnp.float32),
                jnp.asarray(rng.standard_normal((2, 6)), jnp.float32), True)
    params = _random_params(plain, *args, seed=7, scale=0.2)["params"]
    jaxpr = str(jax.make_jaxpr(_loss_and_grad(remat, *args))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    loss_p, grad_p = jax.jit(_loss_and_grad(plain, *args))(params)
    loss_r, grad_r = jax.jit(_loss_and_grad(remat, *args))(params)
    np.testing.assert_allclose(loss_r, loss_p, rtol=1e-6)
    for (path, gp), gr in zip(flatten_dict(grad_p).items(), flatten_dict(grad_r).values()):
        np.testing.assert_allclose(gr, gp, rtol=1e-5, atol=1e-7, err_msg=str(path))


def test_unet_remat_option_rematerialises_its_blocks():
    module = models.UNet(ch=4, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), remat=True)
    x, t = jnp.zeros((1, 4, 4, 1)), jnp.zeros(1)
    variables = jax.eval_shape(module.init, key(0), x, t)
    jaxpr = str(jax.make_jaxpr(lambda v: module.apply(v, x, t, train=True,
                                                      rngs={"dropout": key(1)}))(variables))
    assert jaxpr.count("checkpoint") + jaxpr.count("remat") >= 3  # mid: 2 blocks + attention
