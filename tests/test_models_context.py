"""Cross-attention conditioning on cond["context"] (Rombach et al. 2022) in the U-Net and DiT.

The null context, by construction: masked-out tokens contribute nothing, and a context whose
tokens are all masked out leaves every layer's output bit-identical to a call without any context
(the whole compiled network to float rounding: XLA compiles the two programs differently).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import models
from diffjax.models.blocks import PooledContext, context_from
from diffjax.models.dit import DiTBlock
from diffjax.models.unet import CrossAttnBlock as UNetCrossAttn

L, D = 5, 6


def key(seed):
    return jax.random.key(seed, impl="unsafe_rbg")


def _random_params(module, *args, seed=0, scale=0.3):
    shapes = jax.eval_shape(module.init, key(0), *args)["params"]
    rng = np.random.default_rng(seed)
    return {"params": jax.tree_util.tree_map(
        lambda s: scale * rng.standard_normal(s.shape).astype(np.float32), shapes)}


class Case:
    """A tiny cross-attention network at random parameters and a batch of 3 with a context."""

    def __init__(self, module):
        rng = np.random.default_rng(0)
        self.module = module
        self.x = jnp.asarray(rng.standard_normal((3, 8, 8, 2)), jnp.float32)
        self.t = jnp.array([0.2, 0.5, 0.7])
        self.context = rng.standard_normal((3, L, D)).astype(np.float32)
        # Row 0: 3 valid tokens then padding; row 1: all valid; row 2: none valid.
        self.mask = np.array([[1, 1, 1, 0, 0], [1] * L, [0] * L], bool)
        self.variables = _random_params(module, self.x, self.t, self.cond(), seed=1)
        self.apply = jax.jit(module.apply)

    def cond(self, context=None, mask=None):
        return {"context": jnp.asarray(self.context if context is None else context),
                "context_mask": jnp.asarray(self.mask if mask is None else mask)}

    def __call__(self, cond):
        return np.asarray(self.apply(self.variables, self.x, self.t, cond))


@pytest.fixture(scope="module", params=["unet", "dit", "mmdit"])
def case(request):
    if request.param == "unet":
        module = models.UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                             cross_attn_resolutions=(8,), num_heads=2, dropout=0.0)
    elif request.param == "dit":
        module = models.DiT(size="S/2", depth=2, hidden=16, num_heads=2, cross_attn=True)
    else:  # joint attention: text tokens are keys of the image and the image of the text
        module = models.MMDiT(depth=2, hidden=16, num_heads=2)
    return Case(module)


def test_all_masked_context_gives_the_output_without_context(case):
    # Layer by layer the two are bit-identical (next test); two differently compiled programs
    # may still round differently, hence float tolerance for the whole network.
    # (In float64 the two agree to the last bit; float32 rounding is relative to the outputs.)
    no_context = case(None)
    atol = 1e-5 * np.abs(no_context).max()
    all_masked = case(case.cond(mask=np.zeros((3, L), bool)))
    np.testing.assert_allclose(all_masked, no_context, rtol=1e-5, atol=atol)
    # Row 2 of the ordinary batch has no valid token: it, too, is the unconditional output.
    np.testing.assert_allclose(case(case.cond())[2], no_context[2], rtol=1e-5, atol=atol)


@pytest.mark.parametrize("block", [
    UNetCrossAttn(num_heads=2),
    DiTBlock(num_heads=2),
])
def test_cross_attention_layers_leave_their_input_bit_identical_for_an_all_masked_context(block):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 8) if isinstance(block, UNetCrossAttn)
                                        else (2, 16, 8)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((2, L, D)), jnp.float32)
    none = jnp.zeros((2, L), bool)
    if isinstance(block, UNetCrossAttn):
        args, plain = (x, context, none), x
    else:
        c = jnp.asarray(rng.standard_normal((2, 8)), jnp.float32)
        args = (x, c, context, none)
    variables = _random_params(block, *args, seed=3)
    if isinstance(block, DiTBlock):
        plain = block.apply(variables, x, c)
    np.testing.assert_array_equal(block.apply(variables, *args), plain)
    pooled = PooledContext(4).apply({"params": {"proj": {"kernel": jnp.ones((D, 4))}}},
                                    context, none)
    np.testing.assert_array_equal(pooled, 0.0)


def test_masked_tokens_contribute_nothing_and_valid_tokens_do(case):
    rng = np.random.default_rng(2)
    garbage = np.where(case.mask[..., None], case.context,
                       100 * rng.standard_normal(case.context.shape)).astype(np.float32)
    out = case(case.cond())
    np.testing.assert_allclose(case(case.cond(context=garbage)), out, rtol=1e-5, atol=1e-6)
    # Dropping the padded tokens altogether changes nothing either.
    short = case(case.cond(context=case.context[:, :3], mask=case.mask[:, :3]))
    np.testing.assert_allclose(short[0], out[0], rtol=1e-5, atol=1e-6)  # row 0: 3 valid tokens
    unconditional = case(None)
    for row in (0, 1):
        assert np.abs(out[row] - unconditional[row]).max() > 1e-3, "the context is ignored"
    other = case(case.cond(context=np.roll(case.context, 1, axis=0), mask=np.ones((3, L), bool)))
    assert np.abs(other[1] - out[1]).max() > 1e-3, "different prompts give the same output"


def test_a_missing_context_mask_means_every_token_is_valid():
    context = jnp.ones((2, L, D))
    _, mask = context_from({"context": context}, 2)
    np.testing.assert_array_equal(mask, np.ones((2, L), bool))


def test_unet_cross_attention_block_is_the_identity_at_init_with_a_context():
    # Its output projection starts at zero, so a new cross-attention layer changes nothing.
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((2, L, D)), jnp.float32)
    mask = jnp.ones((2, L), bool)
    block = UNetCrossAttn(num_heads=2)
    np.testing.assert_array_equal(block.apply(block.init(key(0), x, context, mask), x, context,
                                              mask), x)


def test_init_without_context_uses_context_dim_and_makes_the_same_parameters():
    module = models.UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                         cross_attn_resolutions=(8,), context_dim=D)
    x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros(1)
    shapes = lambda *args: jax.tree_util.tree_map(  # noqa: E731
        lambda s: s.shape, jax.eval_shape(module.init, key(0), x, t, *args))
    assert shapes() == shapes({"context": jnp.zeros((1, L, D))})
    with pytest.raises(ValueError, match="context_dim"):
        jax.eval_shape(module.clone(context_dim=None).init, key(0), x, t)


@pytest.mark.parametrize("arch,kwargs,key_name", [
    ("unet", dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=()),
     "cross_attn_resolutions"),
    ("dit", dict(size="S/2", depth=1, hidden=16, num_heads=2), "cross_attn"),
])
def test_context_given_to_a_model_without_cross_attention_is_refused(arch, kwargs, key_name):
    module = models.get(arch, **kwargs)
    x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros(1)
    with pytest.raises(ValueError, match=f"model.{key_name}"):
        jax.eval_shape(module.init, key(0), x, t, {"context": jnp.zeros((1, L, D))})


def test_bad_context_shapes_are_named():
    module = models.UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                         cross_attn_resolutions=(8,))
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros(2)
    with pytest.raises(ValueError, match=r"cond\['context'\].*\[B=2, L, D\]"):
        jax.eval_shape(module.init, key(0), x, t, {"context": jnp.zeros((2, D))})
    with pytest.raises(ValueError, match=r"cond\['context_mask'\]"):
        jax.eval_shape(module.init, key(0), x, t, {"context": jnp.zeros((2, L, D)),
                                                   "context_mask": jnp.ones((2, L + 1))})


def test_cross_attn_resolutions_are_checked_in_the_config():
    cfg = models.default_unet_config()
    cfg.cross_attn_resolutions = (16,)
    with pytest.raises(ValueError, match=r"model.cross_attn_resolutions contains 16.*\[8, 4\]"):
        models.validate(cfg, (8, 8, 1))
