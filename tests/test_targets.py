"""Targets: exact round trips on every path, and the papers' closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import denoiser, paths, targets

ALL_PATHS = sorted(paths.PATHS)

# Where a coefficient vanishes at a range end, some conversions are undefined there, not
# inaccurate: with alpha = 0 an eps prediction says nothing about x0; with sigma = 0 the
# score is infinite and an x0 prediction says nothing about eps.


def _undefined(path, target, t):
    a, s = float(path.alpha(t)), float(path.sigma(t))
    if a == 0.0 and target == "eps":
        return True
    return s == 0.0 and target in ("x0", "score")


def _times(path):
    u = jax.random.uniform(jax.random.PRNGKey(3), (6,), jnp.float64)
    inner = path.t_min + (path.t_max - path.t_min) * u
    return [path.t_min, path.t_max] + [float(v) for v in inner]


def _draw(n, key=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(key))
    return (jax.random.normal(k1, (n, 3, 2), jnp.float64),
            jax.random.normal(k2, (n, 3, 2), jnp.float64))


@pytest.mark.parametrize("name", ALL_PATHS)
def test_round_trips_are_exact_on_every_path_and_target(name, x64):
    path = paths.get(name)
    x0, eps = _draw(1)
    for t_val in _times(path):
        t = jnp.array([t_val], jnp.float64)
        x_t = path.marginal(x0, eps, t)
        for target in targets.TARGETS:
            if _undefined(path, target, t_val):
                continue
            # (x0, eps) -> target -> (x0, eps)
            y = targets.from_x0_eps(target, path, x0, eps, t)
            x0_hat, eps_hat = targets.to_x0_eps(target, path, y, x_t, t)
            scale = 1.0 + float(path.sigma(t_val)) / max(float(path.alpha(t_val)), 1e-300)
            if float(path.alpha(t_val)) > 0:
                np.testing.assert_allclose(x0_hat, x0, atol=1e-10 * scale, err_msg=f"{target} t={t_val}")
            if float(path.sigma(t_val)) > 0:
                np.testing.assert_allclose(eps_hat, eps, atol=1e-10 * scale, err_msg=f"{target} t={t_val}")
            # target -> (x0, eps) -> target, for an arbitrary output (not a consistent pair)
            out = jax.random.normal(jax.random.PRNGKey(7), x_t.shape, jnp.float64)
            back = targets.from_x0_eps(target, path, *targets.to_x0_eps(target, path, out, x_t, t), t)
            np.testing.assert_allclose(back, out, rtol=1e-10, atol=1e-10, err_msg=f"{target} t={t_val}")


def test_closed_forms_of_the_targets(x64):
    x0, eps = _draw(4)
    t = jnp.array([0.1, 0.4, 0.7, 0.95])
    rf = paths.get("rectified_flow")
    np.testing.assert_allclose(targets.from_x0_eps("velocity", rf, x0, eps, t), eps - x0, rtol=1e-14)
    vp = paths.get("vp_linear")
    a, s = vp.alpha(t)[:, None, None], vp.sigma(t)[:, None, None]
    np.testing.assert_allclose(targets.from_x0_eps("v", vp, x0, eps, t), a * eps - s * x0, rtol=1e-12)
    # The score target is the score of q(x_t | x0) = N(alpha x0, sigma^2 I).
    x_t = vp.marginal(x0, eps, t)

    def log_q(x, x0_i, t_i):
        return jnp.sum(-0.5 * (x - vp.alpha(t_i) * x0_i) ** 2 / vp.sigma(t_i) ** 2)

    grad = jax.vmap(jax.grad(log_q))(x_t, x0, t)
    np.testing.assert_allclose(targets.from_x0_eps("score", vp, x0, eps, t), grad, rtol=1e-10)
    np.testing.assert_allclose(targets.from_x0_eps("score", vp, x0, eps, t), -eps / s, rtol=1e-14)


@pytest.mark.parametrize("name", ["vp_linear", "ve", "edm", "rectified_flow", "ddpm"])
def test_velocity_target_is_the_time_derivative_of_the_path(name, x64):
    path = paths.get(name)
    x0, eps = _draw(3)
    t = jnp.array([0.2, 0.5, 0.8])
    _, dxdt = jax.jvp(lambda s: path.marginal(x0, eps, s), (t,), (jnp.ones_like(t),))
    np.testing.assert_allclose(targets.from_x0_eps("velocity", path, x0, eps, t), dxdt, rtol=1e-10)


@pytest.mark.parametrize("target", targets.TARGETS)
@pytest.mark.parametrize("name", ["vp_linear", "ve", "rectified_flow"])
def test_eps_mse_factor_converts_target_errors_to_eps_errors(name, target, x64):
    path = paths.get(name)
    x0, eps = _draw(5)
    t = jnp.linspace(0.1, 0.9, 5)
    x_t = path.marginal(x0, eps, t)
    eps_hat = eps + 0.3 * jax.random.normal(jax.random.PRNGKey(9), eps.shape, jnp.float64)
    x0_hat = (x_t - path.sigma(t)[:, None, None] * eps_hat) / path.alpha(t)[:, None, None]
    err_target = jnp.sum((targets.from_x0_eps(target, path, x0_hat, eps_hat, t)
                          - targets.from_x0_eps(target, path, x0, eps, t)) ** 2, axis=(1, 2))
    err_eps = jnp.sum((eps_hat - eps) ** 2, axis=(1, 2))
    np.testing.assert_allclose(err_target, targets.eps_mse_factor(target, path, t) * err_eps, rtol=1e-10)


def test_edm_preconditioning_has_the_papers_properties(x64):
    """Karras et al. 2022, App. B.6: unit-variance network input and training target, and
    c_skip chosen to minimise c_out."""
    sd = 0.5
    sigma = jnp.geomspace(0.002, 80.0, 13)
    c_skip, c_out, c_in, c_noise = denoiser.edm_coefficients(sigma, sd)
    np.testing.assert_allclose(c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-12)
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
    np.testing.assert_allclose(target_var, 1.0, rtol=1e-12)
    # c_out^2 = (1-c)^2 sd^2 + c^2 sigma^2 is minimal at c_skip: its derivative in c vanishes.
    deriv = -2 * (1 - c_skip) * sd**2 + 2 * c_skip * sigma**2
    np.testing.assert_allclose(deriv, 0.0, atol=1e-12)
    np.testing.assert_allclose(c_noise, 0.25 * jnp.log(sigma), rtol=1e-12)


@pytest.mark.parametrize("name", ["edm", "vp_linear"])
def test_edm_denoiser_returns_x0_when_the_network_outputs_its_target(name, x64):
    """If F = (x0 - c_skip x~) / c_out, then D = x0 on any path (VP through x~ = x / alpha)."""
    path = paths.get(name)
    x0, eps = _draw(4)
    t = jnp.array([0.05, 0.3, 0.6, 0.9])
    x_t = path.marginal(x0, eps, t)
    sig = path.sigma(t) / path.alpha(t)
    c_skip, c_out, c_in, c_noise = denoiser.edm_coefficients(sig)

    class Oracle:
        def apply(self, variables, x_in, noise_cond, cond=None, train=False, rngs=None):
            np.testing.assert_allclose(noise_cond, c_noise, rtol=1e-12)
            x_ve = x_in / c_in[:, None, None]
            return (x0 - c_skip[:, None, None] * x_ve) / c_out[:, None, None]

    den = denoiser.Denoiser(Oracle(), path, "x0", preconditioning="edm")
    np.testing.assert_allclose(den.apply({}, x_t, t), x0, rtol=1e-9, atol=1e-9)


def test_unknown_target_and_bad_preconditioning_name_the_choices():
    path = paths.get("vp_linear")
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="valid targets: eps, x0, score, v, velocity"):
        targets.to_x0_eps("noise", path, x, x, jnp.ones(1))
    with pytest.raises(ValueError, match="valid choices: none, edm"):
        denoiser.Denoiser(None, path, "x0", preconditioning="karras")
    with pytest.raises(ValueError, match="target='x0'"):
        denoiser.Denoiser(None, path, "eps", preconditioning="edm")
