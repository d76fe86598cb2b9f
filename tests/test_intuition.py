"""The intuition gallery in fast mode: each figure's numbers against a fact known without it.

Every figure function returns the numbers it draws; these tests check them against closed
forms, autodiff of the exact mixture's log-density, or a second call of the library, never
against numbers copied from the gallery's own output.
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import paths
from experiments.intuition import (common, fields, few_steps, forward, gallery, guidance,
                                   one_step, schedules, spectrum)

GALLERY_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "intuition")


def _ddpm_alphas_cumprod():
    """Ho et al. 2020's schedule, computed here from its definition."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))


def test_forward_alpha_bar_is_one_at_t0_and_prod_one_minus_beta_at_t1(tmp_path):
    r = forward.make(str(tmp_path), fast=True)
    assert os.path.getsize(r["png"]) > 0
    assert r["t"][0] == 0.0 and r["t"][-1] == 1.0
    for name in forward.PATHS:
        assert r[name]["alpha_bar"][0] == pytest.approx(1.0, abs=1e-12)
        assert np.isinf(r[name]["snr_db"][0]) and r[name]["snr_db"][0] > 0
    assert r["ddpm"]["alpha_bar"][-1] == pytest.approx(_ddpm_alphas_cumprod()[-1], rel=1e-9)
    # At every frame t = i/T the DDPM path sits on the discrete schedule, and the printed SNR
    # is 10 log10(alpha_bar / (1 - alpha_bar)).
    i = np.round(r["t"][1:] * 1000).astype(int)
    abar = _ddpm_alphas_cumprod()[i - 1]
    np.testing.assert_allclose(r["ddpm"]["alpha_bar"][1:], abar, rtol=1e-9)
    np.testing.assert_allclose(r["ddpm"]["snr_db"][1:], 10 * np.log10(abar / (1 - abar)),
                               rtol=1e-9)
    # Cosine schedule (Nichol & Dhariwal 2021, eq. 17) at the frames inside its range.
    t = r["vp_cosine"]["t_eval"]
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(r["vp_cosine"]["alpha_bar"], f / f[0], rtol=1e-9)


def test_schedules_match_closed_forms_and_known_time_distributions(tmp_path):
    r = schedules.make(str(tmp_path), fast=True)
    coefs = r["coefficients"]
    assert set(coefs) == set(paths.PATHS)
    for name in ("vp_linear", "ddpm", "vp_cosine"):
        np.testing.assert_allclose(coefs[name]["alpha"] ** 2 + coefs[name]["sigma"] ** 2, 1.0,
                                   atol=1e-9)
    np.testing.assert_allclose(coefs["subvp"]["sigma"], 1 - coefs["subvp"]["alpha"] ** 2, rtol=1e-9)
    np.testing.assert_allclose(coefs["rectified_flow"]["alpha"], 1 - coefs["rectified_flow"]["t"])
    for c in coefs.values():
        assert np.all(np.diff(c["logsnr"]) < 0)
    # EDM: log sigma ~ N(-1.2, 1.2^2), so lambda = -2 log sigma ~ N(2.4, 2.4^2) on any path.
    edm = r["home"]["lognormal @ edm"]
    assert edm["mean"] == pytest.approx(2.4, abs=0.2)
    assert edm["std"] == pytest.approx(2.4, abs=0.2)
    # SD3's logit-normal on rectified flow: lambda = -2 logit(t) ~ N(0, 2^2).
    rf = r["home"]["logit_normal @ rectified_flow"]
    assert rf["mean"] == pytest.approx(0.0, abs=0.15)
    assert rf["std"] == pytest.approx(2.0, abs=0.15)
    # Uniform t on vp_cosine: lambda = -2 log tan(pi/2 (t+s)/(1+s)) is near-symmetric about 0.
    assert r["home"]["uniform @ vp_cosine"]["quantiles"][1] == pytest.approx(0.0, abs=0.3)


def test_spectrum_high_frequencies_drown_first_and_return_last(tmp_path):
    r = spectrum.make(str(tmp_path), fast=True)
    fwd, rev = r["forward"], r["reverse"]
    low, high = 1, len(spectrum.BAND_NAMES) - 1
    below = fwd["snr_db"] < 0.0
    assert below[high].any() and below[low].any()
    assert np.argmax(below[high]) < np.argmax(below[low])
    assert fwd["drown_t"][high] < fwd["drown_t"][low]
    # Signal and white noise are independent: the measured band power of x_t is
    # alpha^2 P_b + sigma^2 (unit noise power per orthonormal DFT coefficient).
    want = fwd["alpha"][None] ** 2 * fwd["data_power"][:, None] + fwd["sigma"][None] ** 2
    np.testing.assert_allclose(fwd["xt_power"][1:], want[1:], rtol=0.2)
    # The reverse: coarse structure of x0_hat settles at larger t than fine detail.
    assert rev["settle_t"][low] > rev["settle_t"][high]


def test_one_step_walkthrough_equals_diffjax_sample_single_step(tmp_path):
    r = one_step.make(str(tmp_path), fast=True, verbose=False)
    h, i = r["hand"], one_step.STEP
    betas, abar = np.linspace(1e-4, 0.02, 1000), _ddpm_alphas_cumprod()
    assert h["c2"] == pytest.approx(betas[i - 1] / np.sqrt(1 - abar[i - 1]), rel=1e-12)
    assert h["sigma_i"] ** 2 == pytest.approx(
        (1 - abar[i - 2]) / (1 - abar[i - 1]) * betas[i - 1], rel=1e-12)
    # The library's own single ancestral step, called here, from the same key and x0.
    mix = common.small_digits_mixture()
    with jax.enable_x64(True):
        path = paths.get("ddpm")
        x = diffjax.sample(mix.model_fn(path, "eps"), path, (1, 4, 4, 1),
                           jax.random.PRNGKey(r["key_seed"]), target="eps", sampler="ddpm",
                           num_steps=1, t_max=i / 1000, t_min=(i - 1) / 1000,
                           x_init=jnp.asarray(h["x0"][None]), denoise_to_zero=False)
    np.testing.assert_allclose(h["ddpm"], np.asarray(x)[0], atol=1e-10)
    for sampler in ("ddim", "euler"):
        np.testing.assert_allclose(h[sampler], r["library"][sampler], atol=1e-10)
    # DDIM is Euler's method on the rectified-flow path (same log-SNRs, rescaled).
    np.testing.assert_allclose(r["library"]["ddim"], r["library"]["ddim_as_flow_euler"],
                               atol=1e-10)
    # The move is small: one step of 1000 removes well under a tenth of the noise scale.
    assert np.abs(h["removed"]).max() < 0.1 * np.abs(h["eps_hat"]).max()


def _exact_grad(mix, path, x, t, label=None, weight_cond=1.0):
    """grad_x of (1 - w) log p_t(x) + w log p_t(x | label) by autodiff of the log-density."""
    def log_q(xi):
        xb, tb = xi[None], jnp.full((1,), t, xi.dtype)
        if label is None:
            return mix.log_prob_t(path, xb, tb)[0]
        lb = jnp.full((1,), label, jnp.int32)
        return ((1 - weight_cond) * mix.log_prob_t(path, xb, tb)[0]
                + weight_cond * mix.log_prob_t(path, xb, tb, lb)[0])
    return np.asarray(jax.jit(jax.vmap(jax.grad(log_q)))(jnp.asarray(x)))


def test_fields_eps_score_and_velocity_are_one_field(tmp_path):
    r = fields.make(str(tmp_path), fast=True)
    path, pts = paths.get(r["path"]), r["points"]
    from diffjax import analytic
    mix = analytic.GaussianMixture.ring()
    with jax.enable_x64(True):
        for t, f in r["fields"].items():
            score = _exact_grad(mix, path, pts, t)
            np.testing.assert_allclose(f["score"], score, rtol=1e-6, atol=1e-8)
            t64 = jnp.asarray(t, jnp.float64)
            np.testing.assert_allclose(f["eps"], -float(path.sigma(t64)) * score, rtol=1e-6,
                                       atol=1e-8)
            # Song et al. 2021, eq. 13: dx/dt = f x - g^2/2 score.
            want = float(path.drift_coef(t64)) * pts - 0.5 * float(path.diffusion_sq(t64)) * score
            np.testing.assert_allclose(f["velocity"], want, rtol=1e-6, atol=1e-8)
    ode = r["trajectories"]["probability-flow ODE (heun)"]
    assert ode["mode_distance"] < 2 * 0.1 * np.sqrt(2)


def test_guidance_scale_one_is_conditional_zero_unconditional(tmp_path):
    r = guidance.make(str(tmp_path), fast=True)
    mix, path = guidance.arcs_mixture(), paths.get(r["path"])
    pts, t, c, g = r["points"], r["t"], r["label"], r["fields"]["guided"]
    with jax.enable_x64(True):
        sigma = float(path.sigma(jnp.asarray(t, jnp.float64)))
        eps_u = -sigma * _exact_grad(mix, path, pts, t)
        eps_c = -sigma * _exact_grad(mix, path, pts, t, label=c)
        eps_3 = -sigma * _exact_grad(mix, path, pts, t, label=c, weight_cond=3.0)
    np.testing.assert_allclose(g[1.0], eps_c, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g[0.0], eps_u, rtol=1e-6, atol=1e-8)
    # At w = 3 the guided field is the score of p_t(x) p_t(c | x)^3.
    np.testing.assert_allclose(g[3.0], eps_3, rtol=1e-6, atol=1e-8)
    div = [r["diversity"][w] for w in guidance.SCALES]
    assert all(a > b for a, b in zip(div, div[1:]))


def test_few_steps_ode_solvers_converge_and_ddpm_needs_many_steps(tmp_path):
    r = few_steps.make(str(tmp_path), fast=True)
    runs = r["runs"]
    # Higher order wins at equal NFE; more steps shrink the error.
    assert runs[("dpm_solver++", 10)]["ode_error"] < runs[("ddim", 10)]["ode_error"]
    assert runs[("dpm_solver++", 20)]["ode_error"] < runs[("dpm_solver++", 10)]["ode_error"]
    # Every component of the ring is N(mu_k, 0.1^2 I): exact RMS distance to the mode 0.1 sqrt 2.
    assert r["reference"]["spread"] == pytest.approx(0.1 * np.sqrt(2), rel=0.05)
    assert runs[("ddpm", 1000)]["spread"] == pytest.approx(0.1 * np.sqrt(2), rel=0.1)


@pytest.mark.parametrize("std", [0.1, 0.03])
def test_mode_spread_of_exact_ring_draws_is_std_sqrt2(std):
    """Draws from 8 N(mu_k, std^2 I) on the circle of radius sqrt 2, made here with numpy:
    |x - mu_k|^2 / std^2 is chi^2 with 2 degrees of freedom, so the RMS distance to the mode
    is std sqrt 2 (the nearest mean is the own one: the means are >= 10 std apart)."""
    rng = np.random.default_rng(0)
    n = 20_000
    angles = 2 * np.pi * rng.integers(0, 8, n) / 8
    means = np.sqrt(2.0) * np.stack([np.cos(angles), np.sin(angles)], -1)
    x = means + std * rng.standard_normal((n, 2))
    ring = diffjax.analytic.GaussianMixture.ring()
    # The mean of chi^2_2 / 2 over n draws has relative standard error 1 / sqrt(n).
    assert few_steps.mode_spread(ring, x) == pytest.approx(std * np.sqrt(2), rel=3 / np.sqrt(n))
    assert few_steps.mode_spread(ring, means) == 0.0


def test_cli_only_writes_the_named_figure(tmp_path, capsys):
    gallery.main([f"--out={tmp_path}", "--only=forward", "--fast"])
    assert sorted(os.listdir(tmp_path)) == ["forward.png"]
    with pytest.raises(SystemExit):
        gallery.main([f"--out={tmp_path}", "--only=nonsense"])


def test_committed_figures_are_small_and_all_shown_in_the_readme():
    with open(os.path.join(GALLERY_DIR, "README.md")) as f:
        readme = f.read()
    for name in gallery.FIGURES:
        png = os.path.join(GALLERY_DIR, "figures", f"{name}.png")
        assert os.path.exists(png), png
        assert os.path.getsize(png) <= 150_000, (png, os.path.getsize(png))
        assert re.search(rf"\(figures/{name}\.png\)", readme), name
