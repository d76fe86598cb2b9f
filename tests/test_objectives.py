"""The one objective: weightings independent of the output, the exact denoiser minimises it,
time sampling draws what it says, and the ELBO weighting is invariant to the schedule."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import analytic, conditions, objectives, paths, targets

MIX = analytic.GaussianMixture.ring()


def _exact(path, target):
    f = MIX.model_fn(path, target)
    return lambda x, t, label: f(x, t)


@functools.lru_cache(maxsize=None)
def _data(n, seed=0):
    with jax.enable_x64(True):
        return MIX.sample(jax.random.PRNGKey(seed), n)[0]


@pytest.mark.parametrize("weighting", ["eps", "elbo", "min_snr", "edm"])
@pytest.mark.parametrize("name", ["vp_linear", "rectified_flow", "edm"])
def test_eps_scale_weightings_give_one_loss_whatever_the_target(name, weighting, x64):
    """Same draws, same exact denoiser given as any of the five targets: the same loss."""
    path = paths.get(name)
    x0 = _data(512)
    losses = []
    for target in targets.TARGETS:
        obj = objectives.Objective(path, target, weighting=weighting, t_min=0.01, t_max=0.99)
        losses.append(float(obj(_exact(path, target), x0, jax.random.PRNGKey(1))[0]))
    np.testing.assert_allclose(losses, losses[0], rtol=1e-9)


@pytest.mark.parametrize("weighting", objectives.WEIGHTINGS)
@pytest.mark.parametrize("target", targets.TARGETS)
def test_exact_denoiser_is_the_minimiser_under_every_weighting(target, weighting, x64):
    """L(f + d h) is a quadratic in d; the exact f is its minimiser, so the fitted optimum
    d* = -E[w h (f - y)] / E[w h^2] is zero up to Monte Carlo error, and L(f + d h) > L(f)."""
    path = paths.get("vp_linear")
    obj = objectives.Objective(path, target, weighting=weighting, t_min=0.05, t_max=0.95)
    f = _exact(path, target)
    x0 = _data(20000, seed=2)
    t, eps, _ = obj.draw(jax.random.PRNGKey(3), x0)
    x_t = path.marginal(x0, eps, t)
    y = targets.from_x0_eps(target, path, x0, eps, t)
    h = jnp.tanh(x_t[:, ::-1]) * targets.eps_mse_factor(target, path, t)[:, None] ** 0.5
    w = obj.loss_weight(t)[:, None]
    resid = f(x_t, t, None) - y
    num, den = w * h * resid, w * h * h
    d_star = -jnp.mean(num) / jnp.mean(den)
    se = jnp.std(jnp.sum(num, -1)) / jnp.sqrt(x0.shape[0]) / jnp.mean(jnp.sum(den, -1))
    assert abs(float(d_star)) < 4 * float(se) + 1e-12
    base = jnp.mean(obj.per_example(f, x0, t, eps))
    for d in (0.1, -0.1):
        pert = jnp.mean(obj.per_example(lambda x, s, l: f(x, s, l) + d * h, x0, t, eps))
        assert float(pert) > float(base)


def test_elbo_weighting_is_invariant_to_schedule_and_time_sampling(x64):
    """Kingma et al. 2021: the continuous-time diffusion loss depends on the schedule only
    through its log-SNR end points. With those end points fixed, four paths and three time
    samplers estimate one number."""
    lam_max, lam_min = 6.0, -6.0
    x0 = _data(40000, seed=4)
    estimates = []
    for name, sampling in [("vp_linear", "stratified"), ("vp_cosine", "logit_normal"),
                           ("edm", "uniform"), ("rectified_flow", "lognormal"), ("ve", "stratified")]:
        path = paths.get(name)
        t_lo, t_hi = float(path.t_from_logsnr(lam_max)), float(path.t_from_logsnr(lam_min))
        obj = objectives.Objective(path, "eps", weighting="elbo", time_sampling=sampling,
                                   t_min=t_lo, t_max=t_hi)
        t, eps, _ = obj.draw(jax.random.PRNGKey(5), x0)
        if sampling in ("logit_normal", "lognormal"):  # clipping would bias the estimate
            assert float(jnp.mean((t <= t_lo) | (t >= t_hi))) < 0.25
            keep = (t > t_lo) & (t < t_hi)
            per = obj.per_example(_exact(path, "eps"), x0, t, eps)
            # Clipped draws sit exactly on the ends and are dropped: E_p[1{t inside} f / p]
            # is still the integral of f over the range.
            est = jnp.sum(jnp.where(keep, per, 0.0)) / x0.shape[0]
            se = jnp.std(jnp.where(keep, per, 0.0)) / jnp.sqrt(x0.shape[0])
        else:
            per = obj.per_example(_exact(path, "eps"), x0, t, eps)
            est, se = jnp.mean(per), jnp.std(per) / jnp.sqrt(x0.shape[0])
        estimates.append((name, float(est), float(se)))
    ref = estimates[0][1]
    for name, est, se in estimates[1:]:
        assert abs(est - ref) < 4 * (se + estimates[0][2]), (name, est, ref, se)


def test_elbo_weight_is_half_the_logsnr_slope_over_the_density(x64):
    """VDM eq. 17 with the slope of lambda = log(alpha^2 / sigma^2) taken by central finite
    differences of the path's alpha and sigma, over the uniform density 1 / 0.5."""
    path = paths.get("vp_linear")
    obj = objectives.Objective(path, "eps", weighting="elbo", t_min=0.1, t_max=0.6)
    t = jnp.linspace(0.1, 0.6, 5)
    lam = lambda s: 2.0 * (jnp.log(path.alpha(s)) - jnp.log(path.sigma(s)))  # noqa: E731
    h = 1e-6
    slope = (lam(t + h) - lam(t - h)) / (2 * h)
    np.testing.assert_allclose(obj.eps_weight(t), -0.5 * slope / 2.0, rtol=1e-7)


@pytest.mark.parametrize("target", ["x0", "eps"])
@pytest.mark.parametrize("weighting,path_name", [("min_snr", "vp_linear"), ("edm", "edm")])
def test_min_snr_and_edm_losses_are_their_papers_weights_on_the_x0_error(weighting, path_name,
                                                                         target, x64):
    """Hang et al. 2023 define min-SNR as ``min(SNR, gamma) |x0_hat - x0|^2``; Karras et al.
    2022 (eq. 8) weight ``|D - x0|^2`` by ``(sigma^2 + sd^2) / (sigma sd)^2``. A model whose
    prediction is off by a fixed amount in its own target space has a known x0 error (an
    x0 model: the offset; an eps model: ``-sigma / alpha`` times it, from
    ``x_t = alpha x0 + sigma eps``); its per-example loss must be the paper's weight times
    that error, whatever the target."""
    path = paths.get(path_name)
    obj = objectives.Objective(path, target, weighting=weighting, min_snr_gamma=5.0,
                               sigma_data=0.5, t_min=0.05, t_max=0.95)
    key = jax.random.PRNGKey(0)
    x0 = _data(64)
    t, eps, _ = obj.draw(key, x0)
    offset = 0.1 * jax.random.normal(jax.random.PRNGKey(1), x0.shape, x0.dtype)
    y = targets.from_x0_eps(target, path, x0, eps, t)
    loss = obj.per_example(lambda x, s, c: y + offset, x0, t, eps)
    alpha, sigma = path.alpha(t), path.sigma(t)
    x0_offset = offset if target == "x0" else -(sigma / alpha)[:, None] * offset
    err = jnp.mean(x0_offset**2, axis=-1)
    if weighting == "min_snr":
        weight = jnp.minimum(alpha**2 / sigma**2, 5.0)
    else:
        s = sigma / alpha
        weight = (s**2 + 0.25) / (s * 0.5) ** 2
    np.testing.assert_allclose(loss, weight * err, rtol=1e-8)


def test_time_samplers_draw_their_distributions(x64):
    key = jax.random.PRNGKey(0)
    n = 200_000
    edm = paths.get("edm")
    obj = objectives.Objective(edm, "x0", time_sampling="lognormal", p_mean=-1.2, p_std=1.2)
    log_sigma = jnp.log(edm.sigma(obj.sample_t(key, n)))
    assert float(jnp.mean(log_sigma)) == pytest.approx(-1.2, abs=0.02)
    assert float(jnp.std(log_sigma)) == pytest.approx(1.2, abs=0.02)
    rf = paths.get("rectified_flow")
    t = objectives.Objective(rf, "velocity", time_sampling="logit_normal").sample_t(key, n)
    logit = jnp.log(t / (1 - t))
    assert float(jnp.mean(logit)) == pytest.approx(0.0, abs=0.02)
    assert float(jnp.std(logit)) == pytest.approx(1.0, abs=0.02)
    ddpm = paths.get("ddpm")
    t = objectives.Objective(ddpm, "eps", time_sampling="discrete").sample_t(key, n)
    i = np.asarray(t) * 1000
    np.testing.assert_allclose(i, np.round(i), atol=1e-6)
    assert i.min() == 1 and i.max() == 1000
    t = objectives.Objective(ddpm, "eps", time_sampling="stratified", t_min=0.2, t_max=0.4).sample_t(key, 10)
    assert np.all(np.diff(np.floor((np.asarray(t) - 0.2) / 0.02)) == 1)
    # Each density integrates to one over its range.
    for name, sampling in [("edm", "lognormal"), ("rectified_flow", "logit_normal"), ("ddpm", "uniform")]:
        o = objectives.Objective(paths.get(name), "eps", time_sampling=sampling, t_min=1e-4, t_max=1 - 1e-4)
        grid = jnp.linspace(1e-4, 1 - 1e-4, 200001)
        mass = float(jnp.sum(o.t_density(grid)) * (grid[1] - grid[0]))
        assert mass == pytest.approx(1.0, abs=2e-3), name


def test_label_dropout_uses_the_null_label():
    obj = objectives.Objective(paths.get("vp_linear"), "eps", label_dropout=0.3, num_classes=10)
    label = jnp.arange(20000) % 10
    _, _, masks = obj.draw(jax.random.PRNGKey(0), jnp.zeros((20000, 2)), {"label": label})
    dropped = obj.null_values.apply_masks({"label": label}, masks)["label"]
    null = np.asarray(dropped) == 10
    assert float(null.mean()) == pytest.approx(0.3, abs=0.015)
    np.testing.assert_array_equal(np.asarray(dropped)[~null], np.asarray(label)[~null])


def test_condition_dropout_nulls_each_kind_and_its_companion_together():
    n, rates = 20000, {"text": 0.2, "control": 0.5}
    nulls = conditions.Nulls(text=np.zeros(3, np.int32), text_mask=np.array([1, 0, 0]))
    cond = {"text": jnp.full((n, 3), 7, jnp.int32), "text_mask": jnp.ones((n, 3), jnp.int32),
            "control": jnp.ones((n, 2, 2, 1))}
    out = nulls.drop(cond, jax.random.PRNGKey(1), rates)
    text_null = np.all(np.asarray(out["text"]) == 0, axis=1)
    mask_null = np.all(np.asarray(out["text_mask"]) == [1, 0, 0], axis=1)
    control_null = np.all(np.asarray(out["control"]) == 0, axis=(1, 2, 3))
    np.testing.assert_array_equal(text_null, mask_null)          # the mask follows its text
    assert float(text_null.mean()) == pytest.approx(0.2, abs=0.015)
    assert float(control_null.mean()) == pytest.approx(0.5, abs=0.015)
    # Independent draws per kind: P(both) = 0.2 * 0.5.
    assert float((text_null & control_null).mean()) == pytest.approx(0.1, abs=0.01)
    kept = ~text_null
    assert np.all(np.asarray(out["text"])[kept] == 7)


def test_unknown_names_raise_with_the_choices():
    path = paths.get("vp_linear")
    with pytest.raises(ValueError, match="valid choices: mse, eps, elbo, min_snr, edm"):
        objectives.Objective(path, "eps", weighting="snr")
    with pytest.raises(ValueError, match="valid choices: uniform, stratified, discrete"):
        objectives.Objective(path, "eps", time_sampling="beta")
    with pytest.raises(ValueError, match="valid targets"):
        objectives.Objective(path, "epsilon")
    with pytest.raises(ValueError, match="config.loss.wieghting.*weighting"):
        objectives.from_config(path, "eps", {"wieghting": "eps"})
