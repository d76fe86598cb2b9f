"""diffjax.winograd's F(4, 3) convolution against a float64 direct sum, and where
diffjax.conv uses it: inside sampling programs by default, never with ``"lax"``, everywhere
with ``"winograd"``; its derivatives are lax's convolution's; the samplers' compiled program
is keyed by the choice."""
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import diffjax
from diffjax import conv, paths, winograd

NHWC = ("NHWC", "HWIO", "NHWC")


def _direct(x, k):
    """3x3 'SAME' cross-correlation in float64 numpy: sum over taps of shifted inputs."""
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    b, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, k.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += xp[:, i:i + h, j:j + w] @ k[i, j]
    return out


def _data(xs, o, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, xs[-1], o)) / np.sqrt(9 * xs[-1]), jnp.float32)
    return x, k


def _ours(x, k):
    return conv.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC)


def _lax(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC)


def _kernels(jaxpr):
    """The kernel shapes of every convolution in a jaxpr, nested calls included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            yield tuple(eqn.invars[1].aval.shape)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _kernels(sub)


def _uses_winograd(fn, *args) -> bool:
    """Whether tracing ``fn`` computes a 3x3 convolution as six 1x3 ones (Winograd's form)."""
    # A new function each time: JAX caches traces by function, and the choice is read when
    # tracing.
    kernels = list(_kernels(jax.make_jaxpr(lambda *a: fn(*a))(*args).jaxpr))
    return sum(k[:2] == (1, 3) for k in kernels) == 6 and not any(k[:2] == (3, 3)
                                                                   for k in kernels)


@pytest.mark.parametrize("xs,o", [((2, 4, 5, 3), 4), ((1, 8, 8, 6), 2), ((3, 16, 12, 4), 5),
                                  ((2, 12, 1, 2), 3)])
def test_equals_the_direct_sum(xs, o):
    x, k = _data(xs, o)
    want = _direct(x, k)
    got = np.asarray(jax.jit(winograd.conv3x3)(x, k), np.float64)
    scale = np.abs(want).max()
    # Winograd's rounding is a few times the direct convolution's (module docstring).
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(_lax(x, k), np.float64), want, rtol=0,
                               atol=1e-5 * scale)


def test_refuses_what_it_cannot_compute():
    x, k = _data((1, 6, 6, 2), 2)
    with pytest.raises(ValueError, match=r"multiple of 4.*got x \(1, 6, 6, 2\)"):
        winograd.conv3x3(x, k)
    with pytest.raises(ValueError, match=r"kernel \(1, 3, 2, 2\)"):
        winograd.conv3x3(jnp.zeros((1, 8, 8, 2)), jnp.zeros((1, 3, 2, 2)))


def test_where_it_is_used():
    x, k = _data((2, 8, 8, 3), 4)
    assert not _uses_winograd(_ours, x, k)                 # "auto" outside a sampler
    np.testing.assert_array_equal(jax.jit(lambda x, k: _ours(x, k))(x, k), _lax(x, k))
    with conv.sampling():
        assert _uses_winograd(_ours, x, k)
        with conv.forward("lax"):
            assert not _uses_winograd(_ours, x, k)
        odd = _data((2, 6, 8, 3), 4)[0]                    # height not a multiple of 4
        assert not _uses_winograd(_ours, odd, k)
        assert not _uses_winograd(                          # not 'SAME'
            lambda x, k: conv.conv_general_dilated(x, k, (1, 1), "VALID",
                                                   dimension_numbers=NHWC), x, k)
    with conv.forward("winograd"):
        assert _uses_winograd(_ours, x, k)
        want = _direct(x, k)
        np.testing.assert_allclose(jax.jit(lambda x, k: _ours(x, k))(x, k), want, rtol=0,
                                   atol=1e-5 * np.abs(want).max())


def test_the_choice_comes_from_the_context_then_the_environment(monkeypatch):
    monkeypatch.delenv(conv.FORWARD_ENV, raising=False)
    assert conv.current_forward() == "auto"
    monkeypatch.setenv(conv.FORWARD_ENV, "lax")
    assert conv.current_forward() == "lax"
    with conv.forward("winograd"):
        assert conv.current_forward() == "winograd"
    monkeypatch.setenv(conv.FORWARD_ENV, "fast")
    with pytest.raises(ValueError, match=r"DIFFJAX_CONV_FORWARD='fast'.*'auto', 'lax', "
                                         r"'winograd'"):
        conv.current_forward()
    with pytest.raises(ValueError, match=r"'fast' is unknown"):
        with conv.forward("fast"):
            pass


@pytest.mark.parametrize("kernel_gradient", conv.KERNEL_GRADIENTS)
def test_derivatives_are_lax_convolutions(kernel_gradient):
    x, k = _data((2, 8, 4, 3), 5, seed=1)
    rng = np.random.default_rng(2)
    ct = jnp.asarray(rng.standard_normal((2, 8, 4, 5)), jnp.float32)
    dx, dk = (jnp.asarray(rng.standard_normal(a.shape), jnp.float32) for a in (x, k))
    ours = lambda x, k: _ours(x, k)  # noqa: E731  (traced anew: the choice is read then)
    with conv.forward("winograd"), conv.kernel_gradient(kernel_gradient):
        assert _uses_winograd(ours, x, k)
        got_vjp = jax.jit(lambda x, k, ct: jax.vjp(ours, x, k)[1](ct))(x, k, ct)
        got_y, got_jvp = jax.jit(lambda *a: jax.jvp(ours, a[:2], a[2:]))(x, k, dx, dk)
    want_vjp = jax.vjp(_lax, x, k)[1](ct)
    want_y, want_jvp = jax.jvp(_lax, (x, k), (dx, dk))
    for got, want in [*zip(got_vjp, want_vjp), (got_jvp, want_jvp), (got_y, want_y)]:
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_samplers_compile_with_it_and_are_keyed_by_the_choice(monkeypatch):
    """The sampling program computes the network's convolutions by Winograd unless told
    otherwise, and a change of the choice compiles it anew (not a stale program)."""
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda x, k: calls.append(1) or real(x, k))
    rng = np.random.default_rng(3)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 2, 2)) / 6, jnp.float32)

    def model(x, t):  # an eps-model with one 3x3 convolution
        return jnp.tanh(_ours(x, kernel)) * t[:, None, None, None]

    path = paths.get("vp_cosine")
    run = lambda: diffjax.sample(model, path, (2, 8, 8, 2), jax.random.key(0),  # noqa: E731
                                 target="eps", sampler="ddim", num_steps=3)
    with conv.forward("lax"):
        by_lax = run()
    assert not calls
    by_winograd = run()  # the same arguments: only the choice differs
    assert calls
    np.testing.assert_allclose(by_winograd, by_lax, rtol=0,
                               atol=1e-5 * np.abs(np.asarray(by_lax)).max())
