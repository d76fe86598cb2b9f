"""The ControlNet network around U-Net and DiT bases, without training.

Ground truth: the base network itself. With the encoder copy initialised from the base and the
zero layers at 0 the ControlNet must return the base's output bit for bit (whatever the
control); at ``control_scale = 0`` it must do so for any ControlNet parameters (the
uncontrolled floor of the metrics is the base).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import models
from diffjax.controlnet import network

BASES = {
    "unet": dict(arch="unet", ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                 dropout=0.0),
    "dit": dict(arch="dit", size="S/2", depth=2, hidden=16, num_heads=2, patch_size=2),
}


def _perturbed(params, seed, scale=0.3):
    """``params`` plus Gaussian noise of standard deviation ``scale`` (drawn on the host)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda p: p + (scale * rng.standard_normal(p.shape)).astype(p.dtype), params)


@pytest.fixture(scope="module", params=sorted(BASES))
def nets(request):
    base = models.from_config(BASES[request.param], data_shape=(8, 8, 1), num_classes=0)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
    t = jnp.array([0.2, 0.5, 0.9])
    # A "trained" base: every parameter (zero-initialised ones included) drawn at random, in
    # the shapes of the base's init (compiling the base's init would cost more than the
    # tests; the ControlNet's own init below is what they check).
    shapes = jax.eval_shape(base.init, jax.random.PRNGKey(1), x, t)["params"]
    base_params = _perturbed(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                                    shapes), 2)
    cn = network.wrap(base, 1)
    own = jax.jit(cn.init)(jax.random.PRNGKey(3), x, t)["params"]
    control = jnp.where(jax.random.bernoulli(jax.random.PRNGKey(4), 0.3, (3, 8, 8, 1)), 1., -1.)
    return base, base_params, cn, own, x, t, control


def test_the_initialised_controlnet_is_its_base_bit_for_bit(nets):
    base, base_params, cn, own, x, t, control = nets
    assert network.BASE not in own
    own = network.initial_params(own, base_params)
    expected = jax.jit(base.apply)({"params": base_params}, x, t)
    got = jax.jit(cn.apply)({"params": network.with_base(own, base_params)}, x, t,
                            {"control": control})
    assert float(jnp.abs(expected).max()) > 0
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_at_control_scale_zero_any_controlnet_is_its_base(nets):
    base, base_params, cn, own, x, t, control = nets
    trained = _perturbed(own, 5)
    params = {"params": network.with_base(trained, base_params)}
    expected = np.asarray(jax.jit(base.apply)({"params": base_params}, x, t))
    moved = np.asarray(jax.jit(cn.apply)(params, x, t, {"control": control}))
    assert np.abs(moved - expected).max() > 1e-3  # trained zero layers do change the output
    off = jax.jit(cn.with_scale(0.0).apply)(params, x, t, {"control": control})
    np.testing.assert_array_equal(np.asarray(off), expected)


def test_a_base_without_a_controlnet_hook_is_refused():
    mlp = models.from_config(dict(arch="mlp"), data_shape=(2,), num_classes=0)
    with pytest.raises(ValueError, match="needs a U-Net or DiT base"):
        network.wrap(mlp, 1)
