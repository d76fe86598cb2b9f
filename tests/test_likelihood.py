"""Likelihoods against the exact mixture density, and bits/dim against its definition."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import analytic, paths
from diffjax.likelihood import (bits_per_dim, bits_per_dim_from_logp, dequantize,
                                log_likelihood)

RING = analytic.GaussianMixture.ring()


@functools.lru_cache(maxsize=None)
def _setup(path_name, target):
    path = paths.get(path_name)
    return path, RING.model_fn(path, target)


def _data(n=48, key=0):
    return RING.sample(jax.random.PRNGKey(key), n)[0]


@pytest.mark.parametrize("path_name,target,t_min", [
    ("rectified_flow", "velocity", 0.0),  # exact ends: t = 0 is data, t = 1 is N(0, I)
    ("vp_linear", "eps", 1e-5),           # score-SDE's likelihood setting
])
def test_exact_divergence_matches_the_mixture_log_density(path_name, target, t_min, x64):
    path, model = _setup(path_name, target)
    x = _data()
    logp, info = log_likelihood(model, path, x, target=target, t_min=t_min)
    per_dim = jnp.abs(logp - RING.log_prob(x)) / RING.dim
    assert float(jnp.max(per_dim)) < 0.01, per_dim
    assert int(info.nfe) > 7


def test_hutchinson_is_unbiased_within_its_standard_error(x64):
    path, model = _setup("rectified_flow", "velocity")
    x = _data()
    logp, info = log_likelihood(model, path, x, jax.random.PRNGKey(1), target="velocity",
                                t_min=0.0, divergence="hutchinson", num_probes=4,
                                probe="rademacher")
    err = logp - RING.log_prob(x)
    # The batch mean of the error against its own standard error (probes are independent).
    z = float(jnp.mean(err) / jnp.sqrt(jnp.sum(info.stderr**2)) * x.shape[0])
    assert abs(z) < 3.0, z
    # The estimator is noisy (it is not the exact log-density in disguise) ...
    assert float(jnp.mean(info.stderr)) > 0.05
    # ... and its reported error is the real one: mean squared error ~ mean variance.
    ratio = float(jnp.mean(err**2) / jnp.mean(info.stderr**2))
    assert 0.3 < ratio < 3.0, ratio


def test_bits_per_dim_is_the_dequantised_density_plus_the_bin_width_term(x64):
    """Independent of the ODE: a uniform model over 256 bins scores exactly 8 bits."""
    width = 1.0 / 127.5  # bin width in [-1, 1] units
    uniform_logp = -2 * math.log(256 * width) * jnp.ones(3)  # density 1/(256 w) per dim, D = 2
    np.testing.assert_allclose(bits_per_dim_from_logp(uniform_logp, 2), 8.0, rtol=1e-12)

    k = jnp.array([[0, 255], [127, 128], [3, 250]], jnp.uint8)
    y = dequantize(k, jax.random.PRNGKey(0))
    assert bool(jnp.all((y >= k / 127.5 - 1) & (y < (k.astype(float) + 1) / 127.5 - 1)))


def test_bits_per_dim_of_8bit_data_under_the_flow_matches_the_exact_density(x64):
    path, model = _setup("rectified_flow", "velocity")
    # 8-bit "images" of two pixels: ring samples scaled into [-1, 1] and quantised.
    x = jnp.clip(_data(16, key=3) / 1.6, -1, 1)
    k = jnp.round((x + 1) * 127.5).astype(jnp.uint8)
    scaled = analytic.GaussianMixture(RING.weights, RING.means / 1.6, RING.covs / 1.6**2)
    model = scaled.model_fn(path, "velocity")
    key = jax.random.PRNGKey(2)
    bpd, _ = bits_per_dim(model, path, k, key, target="velocity", t_min=0.0)
    # The definition, written out: y = (k + u) / 127.5 - 1 with the documented key use.
    u = jax.random.uniform(jax.random.split(key)[0], k.shape, jnp.float64)
    y = (k + u) / 127.5 - 1.0
    want = (-scaled.log_prob(y) / 2 + math.log(127.5)) / math.log(2.0)
    np.testing.assert_allclose(bpd, want, atol=0.02)
    assert bool(jnp.all(bpd > 0))


@pytest.mark.parametrize("kwargs,match", [
    (dict(divergence="trace"), "Unknown divergence 'trace'; valid choices: exact, hutchinson"),
    (dict(divergence="hutchinson", probe="sphere"), "Unknown probe 'sphere'"),
    (dict(divergence="hutchinson", num_probes=0), "num_probes must be an int >= 1"),
    (dict(target="x0", t_min=0.0), "sigma\\(t_min\\) = 0"),
])
def test_wrong_arguments_raise(kwargs, match):
    path, _ = _setup("rectified_flow", "velocity")
    args = dict(target="velocity") | kwargs
    with pytest.raises(ValueError, match=match):
        log_likelihood(lambda x, t: 1 / 0, path, jnp.zeros((2, 2)), jax.random.PRNGKey(0),
                       **args)


def test_running_out_of_max_evals_raises_instead_of_returning_nan(x64):
    path, model = _setup("rectified_flow", "velocity")
    with pytest.raises(ValueError, match=r"max_evals=13 model evaluations .* rtol=1e-09"):
        log_likelihood(model, path, _data(4), target="velocity", t_min=0.0, rtol=1e-9,
                       atol=1e-9, max_evals=13)
