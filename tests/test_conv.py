"""diffjax.conv's matmul kernel gradient against lax's own convolution and autodiff: outputs,
input and kernel gradients, forward mode (MeanFlow's jvp), second order, a U-Net block's
gradient; and how the kernel gradient is chosen."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from diffjax import conv
from diffjax.models.unet import ResBlock

NHWC = ("NHWC", "HWIO", "NHWC")


def _pair(strides, padding):
    """The module's convolution and lax's, as functions of (x, kernel)."""
    ours = lambda x, k: conv.conv_general_dilated(x, k, strides, padding,  # noqa: E731
                                                  dimension_numbers=NHWC)
    ref = lambda x, k: lax.conv_general_dilated(x, k, strides, padding,  # noqa: E731
                                                dimension_numbers=NHWC)
    return ours, ref


def _close(a, b, rtol=2e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(np.abs(b).max(), 1e-30))


CASES = [  # (x shape, kernel shape, strides, padding)
    ((5, 9, 7, 3), (3, 3, 3, 4), (1, 1), "SAME"),
    ((3, 8, 8, 6), (1, 1, 6, 2), (1, 1), "SAME"),
    ((4, 7, 6, 2), (3, 3, 2, 3), (1, 1), "VALID"),
    ((2, 6, 6, 4), (3, 3, 4, 4), (1, 1), ((2, 0), (0, 1))),
    ((3, 6, 5, 2), (2, 4, 2, 3), (1, 1), "SAME"),           # even, non-square kernel
    ((4, 8, 8, 3), (3, 3, 3, 4), (2, 2), "SAME"),           # stride 2: lax's path
]


@pytest.mark.parametrize("xs,ks,strides,padding", CASES)
def test_matches_lax_values_and_gradients(xs, ks, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
    k = jnp.asarray(rng.standard_normal(ks), jnp.float32)
    ours, ref = _pair(strides, padding)
    y = ref(x, k)
    ct = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    with conv.kernel_gradient("matmul"):  # every stride-1 kernel by matmuls (traced here)
        np.testing.assert_array_equal(ours(x, k), y)  # the forward pass is lax's own
        got = jax.jit(lambda x, k, ct: jax.vjp(ours, x, k)[1](ct))(x, k, ct)
    want = jax.vjp(ref, x, k)[1](ct)
    for g, w in zip(got, want):
        _close(g, w)


def test_the_choice_of_kernel_gradient_comes_from_the_context_then_the_environment(
        monkeypatch):
    x = jnp.ones((2, 5, 5, 3))
    ours, ref = _pair((1, 1), "SAME")

    def convolutions(f, size=3):
        """Convolutions in the jaxpr of the kernel gradient (the forward one included)."""
        k = jnp.ones((size, size, 3, 2))
        return str(jax.make_jaxpr(jax.grad(lambda k: f(x, k).sum()))(k)).count(
            "conv_general_dilated[")

    # lax: the output, then the kernel gradient's; with the matmuls, the output alone.
    monkeypatch.delenv(conv.ENV, raising=False)
    assert convolutions(ref) == convolutions(ours) == 2  # lax's by default
    with conv.kernel_gradient("matmul"):
        assert convolutions(ours) == convolutions(ours, 1) == 1
        with conv.kernel_gradient("lax"):
            assert convolutions(ours) == 2
        assert convolutions(ours) == 1  # restored
    monkeypatch.setenv(conv.ENV, "matmul")
    assert convolutions(ours) == 1
    with conv.kernel_gradient("lax"):  # the context wins
        assert convolutions(ours) == 2
    monkeypatch.setenv(conv.ENV, "fast")
    with pytest.raises(ValueError, match=r"DIFFJAX_CONV_KERNEL_GRADIENT='fast'.*'lax', 'matmul'"):
        convolutions(ours)
    with pytest.raises(ValueError, match=r"mode='fast'.*'lax', 'matmul'"):
        with conv.kernel_gradient("fast"):
            pass


def test_forward_mode_and_second_order_match_lax():
    """MeanFlow differentiates the network forwards (jax.jvp) and then backwards through it."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 6, 6, 2)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 2, 3)), jnp.float32)
    tx = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    tk = jnp.asarray(rng.standard_normal(k.shape), jnp.float32)
    results = []
    for f, mode in zip(_pair((1, 1), "SAME"), ("matmul", "lax")):
        with conv.kernel_gradient(mode):
            net = lambda x, k: jnp.tanh(f(x, k))  # noqa: E731
            jvp_x = jax.jvp(lambda x: net(x, k), (x,), (tx,))[1]
            jvp_both = jax.jvp(net, (x, k), (tx, tk))[1]
            # d/dk of a loss on the input-jvp: reverse mode through forward mode.
            mixed = jax.grad(
                lambda k: jnp.sum(jax.jvp(lambda x: net(x, k), (x,), (tx,))[1] ** 2))(k)
            hess = jax.hessian(lambda k: jnp.sum(net(x[:1, :, :, :1], k)))(k[:, :, :1, :1])
        results.append((jvp_x, jvp_both, mixed, hess))
    for got, want in zip(*results):
        _close(got, want, rtol=5e-5)


def test_unet_block_gradient_matches_lax():
    """A U-Net residual block (two 3x3 convolutions, a 1x1 skip, GroupNorm, time embedding)
    differentiates through flax's Conv the same with the module as with lax."""
    block = ResBlock(6, dropout=0.0, scale_shift=True)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
    temb = jnp.asarray(rng.standard_normal((2, 5)), jnp.float32)
    params = block.init(jax.random.key(0), x, temb, False)
    params = jax.tree_util.tree_map(
        lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    loss = lambda p: jnp.sum(jnp.sin(block.apply(p, x, temb, False)))  # noqa: E731
    with conv.kernel_gradient("lax"):
        want = jax.grad(loss)(params)
    flat_want = jax.tree_util.tree_leaves(want)
    with conv.kernel_gradient("matmul"):
        got = jax.grad(loss)(params)
    assert "skip" in got["params"] and "Conv_0" in got["params"]
    flat_got = jax.tree_util.tree_leaves(got)
    assert len(flat_got) == len(flat_want)
    for g, w in zip(flat_got, flat_want):
        _close(g, w, rtol=1e-4)
