"""Samplers against ground truth: exact identities between samplers, the exact mixture, an
independent high-accuracy ODE solve (scipy), and the documented NFE and errors.

Kept fast for a 2-core CPU, where each XLA compile costs ~0.5 s: one model object per
(path, target) so that equal runs share compiled programs, the 2-D ring, small batches.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import analytic, paths
from diffjax.samplers import SAMPLERS

RING = analytic.GaussianMixture.ring()
DETERMINISTIC = [("ddim", {}, 9), ("euler", {}, 9), ("heun", {}, 9), ("rk4", {}, 9),
                 ("edm", {}, 9), ("dpm_solver++", {"order": 3}, 9),  # runs orders 1, 2, 3
                 ("unipc", {"order": 3}, 9), ("adaptive", {}, 400)]
_CALLS = {}


@functools.lru_cache(maxsize=None)
def _path(name):
    return paths.get(name)


@functools.lru_cache(maxsize=None)
def _model(path_name, target):
    """One model object per (path, target), so jitted samplers are compiled once.

    It counts its evaluations at run time (a debug callback), for the NFE checks.
    """
    exact = RING.model_fn(_path(path_name), target)
    calls = _CALLS.setdefault((path_name, target), [])

    def fn(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact(x, t)

    return fn


def _sample(path_name, target, sampler, num_steps, key=0, n=64, **options):
    return diffjax.sample(_model(path_name, target), _path(path_name), (n, 2),
                          jax.random.PRNGKey(key), target=target, sampler=sampler,
                          num_steps=num_steps, **options)


def _counted(path_name, target, sampler, num_steps, **options):
    """Runs a sampler and returns ``(x, info, model evaluations counted at run time)``."""
    calls = _CALLS.setdefault((path_name, target), [])
    calls.clear()
    x, info = _sample(path_name, target, sampler, num_steps, return_info=True, **options)
    x.block_until_ready()
    jax.effects_barrier()
    return x, info, len(calls)


# -- identities between samplers ---------------------------------------------------------
def test_ddim_eta0_equals_flow_euler_on_rectified_flow_path(x64):
    _, ddim = _sample("rectified_flow", "velocity", "ddim", 12, return_trajectory=True)
    _, euler = _sample("rectified_flow", "velocity", "euler", 12, return_trajectory=True)
    assert ddim.trajectory.shape == (13, 64, 2)  # t = 1 ... 0, x_0 is data (no denoise step)
    np.testing.assert_allclose(ddim.trajectory, euler.trajectory, atol=1e-10)


def test_ddim_eta1_equals_ancestral_ddpm_on_ddpm_path(x64):
    _, ddim = _sample("ddpm", "eps", "ddim", 15, eta=1.0, return_trajectory=True)
    _, ddpm = _sample("ddpm", "eps", "ddpm", 15, return_trajectory=True)
    np.testing.assert_allclose(ddim.trajectory, ddpm.trajectory, atol=1e-9)
    # The noise is really there: the sampler is stochastic in its key.
    _, other = _sample("ddpm", "eps", "ddpm", 15, key=1, return_trajectory=True)
    assert float(jnp.max(jnp.abs(other.trajectory[-1] - ddpm.trajectory[-1]))) > 1e-3


_LOGSNR_DDIM = dict(grid="logsnr", denoise_to_zero=True, return_trajectory=True)


def test_dpm_solver_order1_is_ddim_on_a_logsnr_grid(x64):
    """Lu et al. 2022: first-order DPM-Solver++ is DDIM."""
    _, dpm = _sample("vp_linear", "eps", "dpm_solver++", 10, order=1, **_LOGSNR_DDIM)
    _, ddim = _sample("vp_linear", "eps", "ddim", 10, **_LOGSNR_DDIM)
    np.testing.assert_allclose(dpm.trajectory, ddim.trajectory, atol=1e-10)


# -- target invariance and NFE -----------------------------------------------------------
@pytest.mark.parametrize("sampler,options,num_steps", DETERMINISTIC, ids=lambda v: str(v))
def test_every_target_gives_the_same_deterministic_samples(sampler, options, num_steps, x64):
    ref, info, calls = _counted("vp_linear", "eps", sampler, num_steps, **options)
    assert bool(jnp.all(jnp.isfinite(ref)))
    assert calls == int(info.nfe) <= num_steps
    for target in ("x0", "score", "v", "velocity"):
        np.testing.assert_allclose(_sample("vp_linear", target, sampler, num_steps, **options),
                                   ref, rtol=1e-7, atol=1e-7, err_msg=target)


@pytest.mark.parametrize("sampler,num_steps,options,nfe", [
    ("ddim", 9, {}, 9), ("euler", 9, {}, 9), ("heun", 9, {}, 9), ("edm", 9, {}, 9),
    ("rk4", 9, {}, 9), ("rk4", 10, {}, 9), ("dpm_solver++", 9, {"order": 3}, 9),
    ("heun", 10, {"denoise_to_zero": False}, 10), ("pc", 10, {"corrector_steps": 2}, 10)])
def test_documented_nfe_is_counted_at_run_time(sampler, num_steps, options, nfe, x64):
    _, info, calls = _counted("vp_linear", "eps", sampler, num_steps, **options)
    assert calls == info.nfe == nfe


def test_deis_order1_is_ddim(x64):
    """Zhang & Chen 2022: tAB-DEIS with a constant eps extrapolation is DDIM."""
    opts = dict(grid="quadratic", denoise_to_zero=False, return_trajectory=True)
    _, deis = _sample("vp_linear", "eps", "deis", 8, order=1, **opts)
    _, ddim = _sample("vp_linear", "eps", "ddim", 8, **opts)
    np.testing.assert_allclose(deis.trajectory, ddim.trajectory, atol=1e-10)


def test_deis_integrates_eps_polynomial_in_t_exactly(x64):
    """With eps_hat = p(t) of degree order - 1, each step from the order-th on is exact:
    x/alpha changes by int p(t) d(sigma/alpha), against quadrature."""
    from scipy.integrate import quad
    path, coef = _path("vp_cosine"), np.array([0.8, -1.3, 0.4])  # degree 2, order 3
    model = lambda x, t: jnp.broadcast_to(jnp.polyval(jnp.asarray(coef), t)[:, None], x.shape)
    _, info = diffjax.sample(model, path, (2, 2), jax.random.PRNGKey(0), target="eps",
                             sampler="deis", num_steps=6, return_trajectory=True)
    ts = np.asarray(info.ts)
    x_ve = np.asarray(info.trajectory[:, 0, 0]) / np.asarray(path.alpha(info.ts))
    d_noise = jax.jit(jax.grad(lambda t: jnp.exp(-0.5 * path.logsnr(t))))  # d(sigma/alpha)/dt
    for i in range(2, len(ts) - 1):
        exact = quad(lambda t: np.polyval(coef, t) * float(d_noise(t)), ts[i], ts[i + 1])[0]
        np.testing.assert_allclose(x_ve[i + 1] - x_ve[i], exact, rtol=1e-9)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_coefficients_integrate_polynomials_exactly(order, variant, x64):
    """UniP of order p is exact when x0_hat is a polynomial of degree p - 1 in lambda, UniC
    (one more point) of degree p: the order conditions of Zhao et al. 2023 (eq. 8), against
    quadrature."""
    from scipy.integrate import quad
    from diffjax.samplers.unipc import _rhos
    lam_t, h, r1, r2 = 0.3, 0.7, -0.8, -1.9  # previous points at lam_t + r h
    coef = np.array([0.4, -1.3, 0.8, 0.5])

    def exact_update(degree):
        """x_s - (sigma_s/sigma_t) x_t for alpha_s = 1, by quadrature."""
        poly = lambda lam: np.polyval(coef[-degree - 1:], lam)
        return quad(lambda lam: np.exp(lam - lam_t - h) * poly(lam), lam_t, lam_t + h)[0]

    def update(degree, corrector):
        poly = lambda lam: np.polyval(coef[-degree - 1:], lam)
        m0, m1, m2, ms = (poly(lam_t + r * h) for r in (0.0, r1, r2, 1.0))
        pred, corr, b_h = _rhos(jnp.asarray(h), jnp.asarray(r1), jnp.asarray(r2),
                                jnp.asarray(order), variant)
        d1, d2 = (m1 - m0) / r1, (m2 - m0) / r2
        rho = corr if corrector else pred
        extra = rho[2] * (ms - m0) if corrector else 0.0
        return float(-jnp.expm1(-h) * m0 - b_h * (rho[0] * d1 + rho[1] * d2 + extra))

    # UniP-2 and UniC-1 take rho = 1/2 (the reference code's h -> 0 limit of the solution):
    # accurate to their order but not exact, so they are not checked here.
    if order != 2:
        np.testing.assert_allclose(update(order - 1, False), exact_update(order - 1), rtol=1e-10)
    if order != 1:
        np.testing.assert_allclose(update(order, True), exact_update(order), rtol=1e-10)


def test_explicit_and_tuned_grids(x64):
    """An explicit grid is used as given; a grid fitted on pilot noise brings a 5-step solver
    closer to the ODE's own solution on fresh noise (the quantity it minimises)."""
    from diffjax.samplers.tuning import optimise_grid
    path, model = _path("vp_linear"), _model("vp_linear", "x0")
    _, info = _sample("vp_linear", "x0", "unipc", 5, return_info=True)
    same = _sample("vp_linear", "x0", "unipc", 5, grid=info.ts)
    np.testing.assert_array_equal(same, _sample("vp_linear", "x0", "unipc", 5))
    ts = optimise_grid(model, path, (128, 2), jax.random.PRNGKey(11), target="x0",
                       sampler="unipc", num_steps=5, iterations=60)
    assert ts[0] == info.ts[0] and ts[-1] == info.ts[-1] and bool(jnp.all(jnp.diff(ts) < 0))
    ref = _reference()  # from the evaluation noise (key 0), not the pilot noise (key 11)
    err = lambda x: float(jnp.sqrt(jnp.mean((x - ref) ** 2)))
    assert err(_sample("vp_linear", "x0", "unipc", 5, grid=ts)) < 0.8 * err(same)


# -- convergence ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _reference():
    """A tight Dormand-Prince solve of the probability-flow ODE to t_min (float64)."""
    return _sample("vp_linear", "x0", "adaptive", 20_000, rtol=1e-11, atol=1e-11)


def test_adaptive_solver_matches_scipy_dop853(x64):
    """An independent solver (scipy's DOP853) from the same starting noise."""
    from scipy.integrate import solve_ivp
    path, model = _path("vp_linear"), RING.model_fn(_path("vp_linear"), "x0")
    start = _sample("vp_linear", "eps", "ddim", 10, **_LOGSNR_DDIM)[1].trajectory[0]

    @jax.jit
    def velocity(t, y):
        x0 = model(y, jnp.full(y.shape[:1], t))
        eps = (y - path.alpha(t) * x0) / path.sigma(t)
        return path.d_alpha(t) * x0 + path.d_sigma(t) * eps

    def rhs(t, y):
        return np.asarray(velocity(t, jnp.asarray(y.reshape(start.shape)))).ravel()

    sol = solve_ivp(rhs, (path.t_max, path.t_min), np.asarray(start).ravel(), method="DOP853",
                    rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(sol.y[:, -1].reshape(start.shape), _reference(), atol=1e-7)


def test_adaptive_out_of_budget_raises_naming_the_budget_and_tolerances(x64):
    with pytest.raises(ValueError, match=r"num_steps=20 model evaluations .* rtol=1e-09, "
                       r"atol=1e-09: raise the budget or loosen"):
        _sample("vp_linear", "x0", "adaptive", 20, rtol=1e-9, atol=1e-9)
    # Inside the caller's jit it cannot raise: NaN, never a half-integrated sample.
    run = jax.jit(lambda key: diffjax.sample(
        _model("vp_linear", "x0"), _path("vp_linear"), (8, 2), key, target="x0",
        sampler="adaptive", num_steps=20, rtol=1e-9, atol=1e-9, return_info=True))
    x, info = run(jax.random.PRNGKey(0))
    assert not bool(info.finished) and bool(jnp.all(jnp.isnan(x)))


def test_ode_samplers_converge_at_their_order(x64):
    """Halving the step size divides the error against a tight adaptive solve by 2^order."""
    ref = _reference()

    def error(sampler, n):
        x = _sample("vp_linear", "x0", sampler, n, grid="logsnr", denoise_to_zero=False)
        return float(jnp.sqrt(jnp.mean((x - ref) ** 2)))

    euler = [error("euler", n) for n in (200, 400)]
    heun = [error("heun", n) for n in (200, 400)]
    assert 1.8 < euler[0] / euler[1] < 2.3, euler
    assert 3.5 < heun[0] / heun[1] < 4.6, heun


@pytest.mark.parametrize("sampler,options,path_name", [
    ("ddpm", {}, "vp_linear"), ("ddim", {"eta": 1.0}, "vp_cosine"),
    ("euler_maruyama", {}, "vp_linear"), ("pc", {"snr": 0.16}, "vp_linear"),
    ("edm", {"s_churn": 20.0}, "edm"), ("dpm_solver++", {"sde": True}, "vp_linear")])
def test_stochastic_samplers_reproduce_the_mixture_moments(sampler, options, path_name):
    x, info, calls = _counted(path_name, "eps", sampler, 200, n=4000, **options)
    assert calls == info.nfe
    np.testing.assert_allclose(jnp.mean(x, 0), RING.mean(), atol=0.06)
    np.testing.assert_allclose(jnp.cov(x.T), RING.covariance(), atol=0.08)
    radius = jnp.linalg.norm(x, axis=-1)
    assert abs(float(jnp.median(radius)) - 1.4) < 0.05  # on the ring, not smeared


# -- guidance and editing ----------------------------------------------------------------
def _cond_model(path_name):
    return RING.conditional_model_fn(_path(path_name), "eps")


def test_guidance_scale_one_is_conditional_and_zero_unconditional(x64):
    path, label = _path("vp_linear"), jnp.arange(32) % RING.num_classes
    cond = _cond_model("vp_linear")
    run = functools.partial(diffjax.sample, path=path, shape=(32, 2), key=jax.random.PRNGKey(4),
                            target="eps", sampler="ddim", num_steps=8)
    guided1 = run(cond, label=label, guidance_scale=1.0, num_classes=RING.num_classes)
    guided0 = run(cond, label=label, guidance_scale=0.0, num_classes=RING.num_classes)
    np.testing.assert_allclose(guided1, run(lambda x, t: cond(x, t, {"label": label})),
                               atol=1e-12)
    np.testing.assert_allclose(guided0, run(lambda x, t: cond(x, t, None)), atol=1e-12)


def test_guidance_mixes_eps_in_one_batched_call(x64):
    path, label, w = _path("vp_linear"), jnp.arange(16) % RING.num_classes, 2.5
    cond = _cond_model("vp_linear")
    batches = []

    def recording(x, t, lab):
        batches.append(x.shape[0])  # at trace time: the batch size of every model call
        return cond(x, t, lab)

    def by_hand(x, t):  # two separate calls and the documented formula
        eps_u = cond(x, t, {"label": jnp.full_like(label, RING.num_classes)})
        return eps_u + w * (cond(x, t, {"label": label}) - eps_u)

    run = functools.partial(diffjax.sample, path=path, shape=(16, 2), key=jax.random.PRNGKey(5),
                            target="eps", sampler="euler", num_steps=6)
    guided = run(recording, label=label, guidance_scale=w, num_classes=RING.num_classes)
    np.testing.assert_allclose(guided, run(by_hand), atol=1e-10)
    assert batches and set(batches) == {32}


def test_inpainting_keeps_known_pixels_and_conditions_the_rest(x64):
    known = jnp.tile(jnp.array([[1.4, 0.0]]), (512, 1))  # x-coordinate of component 0's mean
    mask = jnp.array([1.0, 0.0])
    for sampler, noise in (("ddim", "fixed"), ("ddpm", "fresh")):
        x = _sample("vp_linear", "x0", sampler, 30, n=512, known=known, mask=mask,
                    inpaint_noise=noise)
        np.testing.assert_array_equal(x[:, 0], known[:, 0])
        # Unconditionally 2 of the 8 components (at 0 and 180 degrees) put y near 0; given
        # x = 1.4 only component 0 is plausible. Replacement (Song et al. 2021) is an
        # approximation of that conditional, so we check it moves towards it, not that it
        # reaches it.
        assert float(jnp.mean(jnp.abs(x[:, 1]) < 0.3)) > 0.35


def test_sdedit_from_a_small_noise_level_returns_the_input(x64):
    x_init = RING.sample(jax.random.PRNGKey(7), 64)[0]
    x = _sample("vp_linear", "x0", "ddim", 4, x_init=x_init, t_max=0.02)
    sigma = float(_path("vp_linear").sigma(0.02))
    assert float(jnp.max(jnp.abs(x - x_init))) < 5 * sigma
    far = _sample("vp_linear", "x0", "ddim", 4, x_init=x_init, t_max=0.5)
    assert float(jnp.max(jnp.abs(far - x_init))) > 5 * sigma


# -- errors before compute -----------------------------------------------------------------
def _never_called(x, t):
    raise AssertionError("the model must not be called when the arguments are wrong")


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=0), "num_steps must be an int >= 1"),
    (dict(num_steps=-3), "num_steps must be an int >= 1"),
    (dict(num_steps=2.5), "num_steps must be an int >= 1"),
    (dict(sampler="dpm_solver"), "Unknown sampler 'dpm_solver'; valid samplers: ddpm, ddim"),
    (dict(grid="cosine"), "Unknown grid 'cosine'; valid grids: uniform, quadratic, logsnr, karras"),
    (dict(s_churn=1.0), r"unknown option\(s\) \['s_churn'\]; it takes: .*eta"),
    (dict(sampler="adaptive", grid="uniform"), r"unknown option\(s\) \['grid'\]"),
    (dict(sampler="adaptive", num_steps=6), "needs num_steps >= 7"),
    (dict(sampler="rk4", num_steps=4), "4 model evaluations per interval"),
    (dict(eta=1.5), "eta must be in"),
    (dict(target="epsilon"), "Unknown target 'epsilon'"),
    (dict(sampler="dpm_solver++", order=4), "order must be one of 1, 2, 3"),
    (dict(guidance_scale=2.0), "guidance_scale=2 needs label"),
])
def test_wrong_arguments_raise_before_any_compute(kwargs, match):
    args = dict(target="eps", sampler="ddim", num_steps=10) | kwargs
    with pytest.raises(ValueError, match=match):
        diffjax.sample(_never_called, _path("vp_linear"), (4, 2), jax.random.PRNGKey(0), **args)


@pytest.mark.parametrize("target,sampler,options,match", [
    ("eps", "euler", {}, "alpha = 0 on rectified_flow: pass t_max < 1"),
    ("velocity", "dpm_solver++", {}, "need a finite log-SNR"),
    ("velocity", "euler", {"grid": "logsnr"}, "grid 'logsnr' need"),
    ("x0", "heun", {}, "sigma = 0 on rectified_flow"),
])
def test_impossible_path_sampler_pairs_are_refused_with_the_reason(target, sampler, options, match):
    with pytest.raises(ValueError, match=match):
        diffjax.sample(_never_called, _path("rectified_flow"), (4, 2), jax.random.PRNGKey(0),
                       target=target, sampler=sampler, num_steps=10, **options)


def test_documented_t_max_below_one_makes_rectified_flow_work_for_eps_models():
    x = _sample("rectified_flow", "eps", "dpm_solver++", 12, n=512, t_max=0.999, t_min=1e-3,
                order=3)
    assert abs(float(jnp.median(jnp.linalg.norm(x, axis=-1))) - 1.4) < 0.05


_GENEROUS_NFE = {"adaptive": 2000, "pc": 200, "euler_maruyama": 200, "ddpm": 200, "rk4": 80,
                 "langevin": 201}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_registered_sampler_draws_the_ring_with_a_generous_budget(sampler):
    """Every name in the registry, run with its defaults on the exact ring mixture, reproduces
    the mixture's exact mean, covariance and radius (a sampler that is registered but wrong,
    or whose defaults are, fails here)."""
    n = _GENEROUS_NFE.get(sampler, 40)
    x = _sample("vp_linear", "eps", sampler, n, n=2000, key=3)
    np.testing.assert_allclose(jnp.mean(x, 0), RING.mean(), atol=0.08)
    np.testing.assert_allclose(jnp.cov(x.T), RING.covariance(), atol=0.1)
    assert abs(float(jnp.median(jnp.linalg.norm(x, axis=-1))) - 1.4) < 0.05


def test_edm_churn_confined_to_a_noise_window_gives_finite_samples_on_the_mixture():
    """Steps outside [s_tmin, s_tmax] have gamma = 0; their added noise must be exactly 0 (a
    difference of squares there once rounded negative and turned samples into NaN)."""
    path = paths.get("vp_linear")
    x = diffjax.sample(RING.model_fn(path, "score"), path, (2000, 2), jax.random.PRNGKey(0),
                       target="score", sampler="edm", num_steps=50, grid="karras",
                       s_churn=30.0, s_tmin=0.01, s_tmax=1.0, s_noise=1.007)
    assert bool(jnp.all(jnp.isfinite(x)))
    # E|x|^2 of the ring (radius sqrt 2, std 0.1): 2 + 2 * 0.01.
    assert abs(float(jnp.mean(jnp.sum(x**2, -1))) - 2.02) < 0.15
