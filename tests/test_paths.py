"""Paths against the papers' closed forms and against autodiff / quadrature."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from diffjax import paths
from diffjax.paths import vp

ALL = sorted(paths.PATHS)


def _interior_t(path, n=9):
    return jnp.linspace(path.t_min, path.t_max, n + 2)[1:-1]


@pytest.mark.parametrize("name", ALL)
def test_derivatives_match_autodiff(name, x64):
    p = paths.get(name)
    t = _interior_t(p)
    d_alpha = jax.vmap(jax.grad(lambda s: p.alpha(s)))(t)
    d_sigma = jax.vmap(jax.grad(lambda s: p.sigma(s)))(t)
    np.testing.assert_allclose(p.d_alpha(t), d_alpha, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.d_sigma(t), d_sigma, rtol=1e-10, atol=1e-12)
    d_logsnr = jax.vmap(jax.grad(lambda s: p.logsnr(s)))(t)
    np.testing.assert_allclose(p.d_logsnr(t), d_logsnr, rtol=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_logsnr_is_decreasing_and_inverted_exactly(name, x64):
    p = paths.get(name)
    t = jnp.linspace(p.t_min, p.t_max, 101)
    t = t[1:-1] if name == "rectified_flow" else t  # lambda is infinite at t = 0 and 1
    lam = p.logsnr(t)
    assert bool(jnp.all(jnp.diff(lam) < 0))
    np.testing.assert_allclose(lam, 2 * jnp.log(p.alpha(t) / p.sigma(t)), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(p.t_from_logsnr(lam), t, atol=1e-10)


@pytest.mark.parametrize("name", ALL)
def test_forward_sde_reproduces_the_marginal_moments(name, x64):
    """Mean ODE dm/dt = f m gives alpha; variance ODE dv/dt = 2 f v + g^2 gives sigma^2."""
    p = paths.get(name)
    t = _interior_t(p)
    np.testing.assert_allclose(p.d_alpha(t), p.drift_coef(t) * p.alpha(t), rtol=1e-10, atol=1e-12)
    dvar = 2 * p.sigma(t) * p.d_sigma(t)
    np.testing.assert_allclose(dvar, 2 * p.drift_coef(t) * p.sigma(t) ** 2 + p.diffusion(t) ** 2,
                               rtol=1e-9, atol=1e-12)
    x = jnp.ones((t.shape[0], 3))
    drift, g = p.sde(x, t)
    np.testing.assert_allclose(drift, p.drift_coef(t)[:, None] * x)
    np.testing.assert_allclose(g, p.diffusion(t))


def test_vp_linear_is_the_integrated_beta_schedule(x64):
    """Song et al. 2021: alpha(t) = exp(-1/2 int_0^t beta), g^2 = beta, VP: alpha^2 + sigma^2 = 1."""
    p = paths.get("vp_linear", beta_min=0.1, beta_max=20.0)
    for t in [0.01, 0.3, 0.77, 1.0]:
        integral, _ = integrate.quad(lambda s: 0.1 + s * (20.0 - 0.1), 0.0, t)
        assert float(p.alpha(t)) == pytest.approx(math.exp(-0.5 * integral), rel=1e-12)
        assert float(p.diffusion_sq(t)) == pytest.approx(0.1 + t * 19.9, rel=1e-12)
        assert float(p.alpha(t) ** 2 + p.sigma(t) ** 2) == pytest.approx(1.0, abs=1e-14)


def test_subvp_sigma_and_diffusion_follow_the_paper(x64):
    """Song et al. 2021 eq. (29)/(30): sigma = 1 - e^{-int beta}, g^2 = beta (1 - e^{-2 int beta})."""
    p, vp = paths.get("subvp"), paths.get("vp_linear")
    t = jnp.linspace(0.05, 1.0, 7)
    int_beta = -2.0 * jnp.log(vp.alpha(t))
    np.testing.assert_allclose(p.alpha(t), vp.alpha(t), rtol=1e-14)
    np.testing.assert_allclose(p.sigma(t), 1 - jnp.exp(-int_beta), rtol=1e-12)
    np.testing.assert_allclose(p.diffusion_sq(t), vp.beta(t) * (1 - jnp.exp(-2 * int_beta)), rtol=1e-12)


def test_ddpm_alpha_bar_is_the_cumulative_product_of_betas(x64):
    p = paths.get("ddpm")
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1.0 - betas)
    i = np.array([1, 2, 10, 500, 999, 1000])
    np.testing.assert_allclose(p.alpha(jnp.asarray(i / 1000.0)) ** 2, alpha_bar[i - 1], rtol=1e-12)
    np.testing.assert_allclose(p.alphas_cumprod, alpha_bar, rtol=1e-12)
    assert p.t_min == pytest.approx(1e-3) and float(p.alpha(0.0)) == 1.0


def test_ddpm_interpolates_log_alpha_like_numpy_without_a_loop_per_lookup(x64):
    """Between grid points ``log alpha`` is numpy's linear interpolation (and constant beyond
    the ends), and a lookup inside a sampler's scan adds no nested ``while`` loop (a bisection
    there breaks XLA:GPU's compile, openxla/xla#49299)."""
    p = paths.get("ddpm")
    t = np.random.default_rng(0).uniform(-0.2, 1.2, 500)
    grid_t = np.arange(1001) / 1000
    betas = np.linspace(1e-4, 0.02, 1000)
    grid_log_alpha = 0.5 * np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])
    np.testing.assert_allclose(p.log_alpha(jnp.asarray(t)), np.interp(t, grid_t, grid_log_alpha),
                               rtol=1e-12, atol=1e-15)
    logsnr = np.linspace(-15.0, 15.0, 301)
    log_alpha = 0.5 * -np.logaddexp(0.0, -logsnr)
    np.testing.assert_allclose(p.t_from_logsnr(jnp.asarray(logsnr)),
                               np.interp(log_alpha, grid_log_alpha[::-1], grid_t[::-1]), atol=1e-12)
    # On the grid exactly the grid's values; the uniform grid's direct bracket is numpy's
    # searchsorted, at and one float either side of every grid point, in both precisions
    # (x * T rounds past a grid point there)
    np.testing.assert_array_equal(p.log_alpha(jnp.asarray(grid_t)), grid_log_alpha)
    for dtype in (np.float32, np.float64):
        xp = grid_t.astype(dtype)
        x = np.concatenate([xp, np.nextafter(xp, -1), np.nextafter(xp, 2), t.astype(dtype)])
        np.testing.assert_array_equal(vp._bracket(jnp.asarray(x), jnp.asarray(xp), uniform=True),
                                      np.clip(np.searchsorted(xp, x, side="right"), 1, 1000))

    def loop(ts):
        return jax.lax.scan(lambda c, s: (c + p.alpha(s) + p.t_from_logsnr(s), None), 0.0, ts)[0]

    assert jax.jit(loop).lower(jnp.linspace(1.0, 0.001, 10)).as_text().count("while") == 1


def test_cosine_schedule_matches_improved_ddpm(x64):
    p = paths.get("vp_cosine")
    s = 0.008
    f = lambda t: np.cos((t + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.linspace(0.001, 0.999, 11)
    np.testing.assert_allclose(p.alpha(jnp.asarray(t)) ** 2, f(t) / f(0), rtol=1e-10)
    assert p.t_max < 1.0 and float(p.alpha(p.t_max)) > 0  # alpha(1) = 0 is excluded


def test_ve_edm_and_flow_coefficients(x64):
    ve = paths.get("ve", sigma_min=0.01, sigma_max=50.0)
    np.testing.assert_allclose(ve.sigma(jnp.array([0.0, 0.5, 1.0])), [0.01, math.sqrt(0.01 * 50), 50.0],
                               rtol=1e-12)
    edm = paths.get("edm")
    # A uniform t grid on the edm path is Karras et al.'s rho = 7 grid (their eq. 5).
    n = 18
    i = np.arange(n)
    karras = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(edm.sigma(jnp.asarray(1 - i / (n - 1))), karras, rtol=1e-12)
    rf = paths.get("rectified_flow")
    t = jnp.linspace(0, 1, 5)
    np.testing.assert_allclose(rf.alpha(t), 1 - t)
    np.testing.assert_allclose(rf.sigma(t), t)


@pytest.mark.parametrize("name", ALL)
def test_prior_log_density_is_the_gaussian_at_t_max(name, x64):
    p = paths.get(name)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 2)) * 2.0
    std = float(jnp.sqrt(p.alpha(p.t_max) ** 2 + p.sigma(p.t_max) ** 2))
    want = stats.norm.logpdf(np.asarray(x), scale=std).reshape(4, -1).sum(-1)
    np.testing.assert_allclose(p.prior_logp(x), want, rtol=1e-10)
    draws = p.prior_sample(jax.random.PRNGKey(1), (20000,), jnp.float64)
    assert float(jnp.std(draws)) == pytest.approx(std, rel=0.03)


def test_unknown_path_or_option_names_the_choices():
    with pytest.raises(ValueError, match="valid paths: .*rectified_flow.*vp_linear"):
        paths.get("vp_linaer")
    with pytest.raises(ValueError, match="beta_max"):
        paths.get("vp_linear", beta_maxx=3.0)
