"""diffjax.conv.upsample_conv_general_dilated (nearest 2x upsampling and a 3x3 convolution,
computed at the low resolution) against lax's convolution of the explicitly upsampled input:
values, both gradients, forward mode; and the networks that use it (a U-Net with either kind
of upsampling layer, the autoencoder's decoder) against the same networks with lax's
convolution of the upsampled map swapped in: the same parameters, the same outputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from diffjax import conv, models
from diffjax.autoencoder import model as ae_model
from diffjax.models import unet as unet_model
from diffjax.models.blocks import upsample_nearest

NHWC = ("NHWC", "HWIO", "NHWC")


def _reference(lhs, rhs, window_strides, padding, **kwargs):
    """What the function claims to equal: lax on the upsampled input."""
    return lax.conv_general_dilated(upsample_nearest(lhs), rhs, window_strides, padding,
                                    **kwargs)


def _close(a, b, rtol=2e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("kernel_gradient", conv.KERNEL_GRADIENTS)
@pytest.mark.parametrize("xs,o", [((3, 5, 4, 3), 2), ((2, 1, 3, 4), 5), ((1, 4, 4, 1), 1)])
def test_equals_lax_on_the_upsampled_input(xs, o, kernel_gradient):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, xs[-1], o)), jnp.float32)
    ours = lambda x, k: conv.upsample_conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "SAME", dimension_numbers=NHWC)
    ref = lambda x, k: _reference(x, k, (1, 1), "SAME", dimension_numbers=NHWC)  # noqa: E731
    y = ref(x, k)
    assert y.shape == (xs[0], 2 * xs[1], 2 * xs[2], o)
    ct = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    tx, tk = (jnp.asarray(rng.standard_normal(a.shape), jnp.float32) for a in (x, k))
    with conv.kernel_gradient(kernel_gradient):
        got_y = jax.jit(ours)(x, k)
        got_vjp = jax.jit(lambda x, k, ct: jax.vjp(ours, x, k)[1](ct))(x, k, ct)
        got_jvp = jax.jvp(ours, (x, k), (tx, tk))[1]
    _close(got_y, y)
    for g, w in zip(got_vjp, jax.vjp(ref, x, k)[1](ct)):
        _close(g, w)
    _close(got_jvp, jax.jvp(ref, (x, k), (tx, tk))[1])


@pytest.mark.parametrize("change", [dict(padding="VALID"), dict(window_strides=(2, 2)),
                                    dict(rhs=(1, 1, 3, 2)), dict(feature_group_count=3)])
def test_refuses_what_it_does_not_compute(change):
    args = dict(lhs=jnp.zeros((1, 4, 4, 3)), rhs=(3, 3, 3, 2), window_strides=(1, 1),
                padding="SAME", dimension_numbers=NHWC)
    args.update(change)
    args["rhs"] = jnp.zeros(args["rhs"])
    if "feature_group_count" in change:
        args["rhs"] = jnp.zeros((3, 3, 1, 3))
    with pytest.raises(ValueError, match="only a 3x3 'SAME' stride-1"):
        conv.upsample_conv_general_dilated(**args)


def _unet(resblock_updown):
    return models.UNet(ch=4, ch_mult=(1, 2, 1), num_res_blocks=1, attn_resolutions=(),
                       num_heads=1, dropout=0.0, resblock_updown=resblock_updown)


def _decoder():
    return ae_model.Decoder(block_out_channels=(4, 8), layers_per_block=1, out_channels=3,
                            groups=2, mid_attention=False)


NETS = {  # name -> (module, module whose `upsample_conv_general_dilated` it calls, inputs)
    "unet": (_unet(False), unet_model, ((2, 8, 8, 3), (2,))),
    "unet_resblock_updown": (_unet(True), unet_model, ((2, 8, 8, 3), (2,))),
    "autoencoder_decoder": (_decoder(), ae_model, ((2, 3, 5, 4),)),
}


@pytest.mark.parametrize("name", list(NETS))
def test_networks_equal_their_lax_version_with_the_same_parameters(name, monkeypatch):
    module, home, shapes = NETS[name]
    rng = np.random.default_rng(1)
    inputs = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
    params = module.init(jax.random.key(0), *inputs)
    params = jax.tree_util.tree_map(  # zero-initialised layers would hide a wrong path
        lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)

    def outputs(p):  # a new function, so a new trace, for each side
        def both(p):
            return module.apply(p, *inputs), jax.grad(
                lambda p: jnp.sum(jnp.sin(module.apply(p, *inputs))))(p)
        return jax.jit(both)(p)

    got_y, got_g = outputs(params)
    calls = []

    def reference(lhs, rhs, *args, **kwargs):
        calls.append(lhs.shape)
        return _reference(lhs, rhs, *args, **kwargs)

    monkeypatch.setattr(home, "upsample_conv_general_dilated", reference)
    ref_params = module.init(jax.random.key(0), *inputs)
    assert (jax.tree_util.tree_structure(ref_params)
            == jax.tree_util.tree_structure(params))  # the same names and shapes
    calls.clear()
    want_y, want_g = outputs(params)
    assert calls  # the network does upsample through it, traced anew
    _close(got_y, want_y, rtol=1e-5)
    for g, w in zip(jax.tree_util.tree_leaves(got_g), jax.tree_util.tree_leaves(want_g)):
        _close(g, w, rtol=1e-4)
