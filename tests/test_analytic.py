"""The exact mixture: densities normalise, score is the gradient, denoiser is Tweedie's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffjax import analytic, paths, targets


def _random_mixture(dim=2, k=3, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, dim, dim))
    covs = a @ np.swapaxes(a, 1, 2) * 0.2 + 0.05 * np.eye(dim)
    return analytic.GaussianMixture(rng.uniform(0.5, 1.5, k), rng.normal(size=(k, dim)), covs,
                                    labels=np.arange(k) % 2)


@pytest.mark.parametrize("name,t", [("vp_linear", 0.0), ("vp_linear", 0.05), ("vp_linear", 0.4),
                                    ("ve", 0.3), ("rectified_flow", 0.6), ("edm", 0.2)])
def test_log_p_t_integrates_to_one_on_a_grid(name, t, x64):
    mix, path = _random_mixture(), paths.get(name)
    std = float(jnp.sqrt(path.alpha(t) ** 2 * 6 + path.sigma(t) ** 2))
    g = jnp.linspace(-8 * std, 8 * std, 601)
    xx, yy = jnp.meshgrid(g, g)
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
    logp = mix.log_prob_t(path, pts, jnp.full(pts.shape[:1], t))
    assert float(jnp.sum(jnp.exp(logp)) * (g[1] - g[0]) ** 2) == pytest.approx(1.0, abs=1e-6)


def test_log_prob_matches_scipy_mixture_density(x64):
    mix = _random_mixture(dim=3, k=4, seed=1)
    x = np.random.default_rng(2).normal(size=(5, 3))
    want = np.log(sum(w * stats.multivariate_normal(m, c).pdf(x)
                      for w, m, c in zip(mix.weights, mix.means, mix.covs)))
    np.testing.assert_allclose(mix.log_prob(jnp.asarray(x)), want, rtol=1e-10)


@pytest.mark.parametrize("name", ["vp_linear", "ve", "rectified_flow", "ddpm"])
def test_score_is_the_gradient_and_x0_hat_is_tweedie(name, x64):
    mix, path = _random_mixture(dim=3, k=4), paths.get(name)
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 3)) * 1.5
    t = jnp.linspace(0.1, 0.9, 6)
    grad = jax.vmap(jax.grad(lambda xi, ti: mix.log_prob_t(path, xi[None], ti[None])[0]))(x, t)
    np.testing.assert_allclose(mix.score(path, x, t), grad, rtol=1e-9, atol=1e-12)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    np.testing.assert_allclose(mix.x0_hat(path, x, t), (x + s**2 * grad) / a, rtol=1e-9, atol=1e-10)


def test_x0_hat_is_the_posterior_mean_by_monte_carlo(x64):
    """E[x0 | x_t] by self-normalised importance sampling over prior draws of x0."""
    mix, path = _random_mixture(dim=2, k=3), paths.get("vp_linear")
    x0s, _ = mix.sample(jax.random.PRNGKey(4), 400_000)
    t = 0.35
    a, s = float(path.alpha(t)), float(path.sigma(t))
    x = jnp.array([[0.3, -0.2]])
    logw = -0.5 * jnp.sum((x - a * x0s) ** 2, -1) / s**2
    w = jax.nn.softmax(logw)
    mc = jnp.sum(w[:, None] * x0s, 0)
    np.testing.assert_allclose(mix.x0_hat(path, x, jnp.array([t]))[0], mc, atol=0.02)


def test_exact_samples_have_the_closed_form_moments(x64):
    mix = _random_mixture(dim=3, k=4, seed=5)
    x, comp = mix.sample(jax.random.PRNGKey(0), 200_000)
    np.testing.assert_allclose(np.mean(x, 0), mix.mean(), atol=0.02)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), mix.covariance(), atol=0.03)
    freq = np.bincount(np.asarray(comp), minlength=4) / len(comp)
    np.testing.assert_allclose(freq, mix.weights, atol=0.005)
    # Conditional sampling only draws components of that label.
    _, comp1 = mix.sample(jax.random.PRNGKey(1), 1000, label=1)
    assert set(np.asarray(comp1).tolist()) <= set(np.flatnonzero(mix.labels == 1).tolist())


def test_five_parameterisations_of_the_exact_denoiser_agree(x64):
    mix = analytic.GaussianMixture.ring()
    for name in ["vp_linear", "vp_cosine", "ve", "edm", "rectified_flow", "subvp", "ddpm"]:
        path = paths.get(name)
        x = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
        t = jnp.linspace(max(path.t_min, 0.02), min(path.t_max, 0.98), 8)
        pairs = [targets.to_x0_eps(tg, path, mix.model_fn(path, tg)(x, t), x, t) for tg in targets.TARGETS]
        for x0_hat, eps_hat in pairs[1:]:
            np.testing.assert_allclose(x0_hat, pairs[0][0], rtol=1e-8, atol=1e-9, err_msg=name)
            np.testing.assert_allclose(eps_hat, pairs[0][1], rtol=1e-8, atol=1e-9, err_msg=name)


def test_conditional_model_mixes_only_the_labelled_components(x64):
    mix, path = _random_mixture(dim=2, k=4), paths.get("vp_linear")
    sub = analytic.GaussianMixture(mix.weights[mix.labels == 1], mix.means[mix.labels == 1],
                                   mix.covs[mix.labels == 1])
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 2))
    t = jnp.full((5,), 0.3)
    cond = mix.conditional_model_fn(path, "eps")
    np.testing.assert_allclose(cond(x, t, {"label": jnp.ones(5, jnp.int32)}), sub.model_fn(path, "eps")(x, t),
                               rtol=1e-10)
    null = jnp.full((5,), mix.num_classes, jnp.int32)
    np.testing.assert_allclose(cond(x, t, {"label": null}), mix.model_fn(path, "eps")(x, t), rtol=1e-10)


def test_digits_mixture_is_64_dimensional_and_labelled():
    mix = analytic.GaussianMixture.digits(components_per_class=1)
    assert mix.dim == 64 and mix.event_shape == (8, 8, 1) and mix.num_classes == 10
    assert np.all(np.linalg.eigvalsh(mix.covs) > 0)
    with jax.enable_x64(True):
        x, _ = mix.sample(jax.random.PRNGKey(0), 4)
    assert x.shape == (4, 8, 8, 1)


def test_bad_mixture_inputs_are_refused():
    with pytest.raises(ValueError, match="positive definite"):
        analytic.GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, -1.0]]])
    with pytest.raises(ValueError, match=r"means \[K, D\]"):
        analytic.GaussianMixture([1.0], [0.0, 0.0], [[1.0]])
