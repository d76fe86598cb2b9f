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


def test_likelihood_ode_solve_matches_scipy_dop853_on_the_same_equation(x64):
    """diffrax's Dopri5 + PID against an independent solver (scipy's DOP853) integrating the
    same augmented ODE (x, int div v) with the divergence from a dense Jacobian."""
    from scipy.integrate import solve_ivp
    path, model = _setup("vp_linear", "eps")
    x, t_min = _data(4, key=5), 1e-3

    @jax.jit
    def rhs(t, y):
        x_t = y[:8].reshape(4, 2)

        def v(z):
            tb = jnp.full((1,), t)
            eps = model(z[None], tb)[0]
            x0 = (z - path.sigma(t) * eps) / path.alpha(t)
            return path.d_alpha(t) * x0 + path.d_sigma(t) * eps

        div = jax.vmap(lambda z: jnp.trace(jax.jacfwd(v)(z)))(x_t)
        return jnp.concatenate([jax.vmap(v)(x_t).ravel(), div])

    y0 = np.concatenate([np.asarray(x).ravel(), np.zeros(4)])
    sol = solve_ivp(lambda t, y: np.asarray(rhs(t, jnp.asarray(y))), (t_min, path.t_max), y0,
                    method="DOP853", rtol=1e-11, atol=1e-11)
    end = sol.y[:, -1]
    want = path.prior_logp(jnp.asarray(end[:8].reshape(4, 2))) + end[8:]
    logp, _ = log_likelihood(model, path, x, target="eps", t_min=t_min, rtol=1e-9, atol=1e-9,
                             max_evals=50_000)
    np.testing.assert_allclose(logp, want, rtol=0, atol=1e-6)


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


def _bin_code_length(mixture, std, k):
    """Exact ``-log2 P(k) / D`` of 8-bit data ``k: [N, 2]`` under an isotropic mixture: the
    probability of each quantisation bin ``[k / 127.5 - 1, (k + 1) / 127.5 - 1)`` from the
    normal CDF, independent of densities, dequantisation and the ODE."""
    from jax.scipy.special import ndtr
    lo, hi = k / 127.5 - 1.0, (k + 1.0) / 127.5 - 1.0                       # [N, 2]
    mu = jnp.asarray(mixture.means)[:, None, :]                            # [K, 1, 2]
    per_dim = ndtr((hi[None] - mu) / std) - ndtr((lo[None] - mu) / std)    # [K, N, 2]
    prob = jnp.einsum("k,kn->n", jnp.asarray(mixture.weights), jnp.prod(per_dim, -1))
    return -jnp.log2(prob) / 2


def test_bits_per_dim_of_8bit_data_under_the_flow_is_the_exact_bin_code_length(x64):
    """bits/dim of the exact model bounds the true code length of the 8-bit data; with bins
    much narrower than the mixture's components the bound is tight (Jensen's gap ~ 0)."""
    path = paths.get("rectified_flow")
    std = 0.1 / 1.6
    x = jnp.clip(_data(16, key=3) / 1.6, -1, 1)
    k = jnp.round((x + 1) * 127.5).astype(jnp.uint8)
    scaled = analytic.GaussianMixture(RING.weights, RING.means / 1.6, RING.covs / 1.6**2)
    model = scaled.model_fn(path, "velocity")
    bpd = jnp.mean(jnp.stack([
        bits_per_dim(model, path, k, jax.random.PRNGKey(seed), target="velocity", t_min=0.0)[0]
        for seed in range(2)]), axis=0)
    exact = _bin_code_length(scaled, std, k.astype(jnp.float64))
    # One dequantisation draw per example: log p varies by ~0.1 nats across a bin.
    assert float(jnp.max(jnp.abs(bpd - exact))) < 0.12, bpd - exact
    assert abs(float(jnp.mean(bpd - exact))) < 0.02, float(jnp.mean(bpd - exact))
    # A wrong bin-width term (the "negative bits/dim" mistake) is off by log2(127.5) = 7.
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
