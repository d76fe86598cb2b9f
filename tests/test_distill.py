"""Proofs of the few-step methods against the exact Gaussian mixture (diffjax.distill)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import analytic, paths
from diffjax.distill import consistency, meanflow, ode, progressive, reflow
from diffjax.distill import teacher as teacher_lib
from diffjax.training import frozen


def _ring_x0(path):
    mix = analytic.GaussianMixture.ring(num_components=4, std=0.3)
    return lambda x, t: mix.x0_hat(path, x, t)


def _points(key, n, scale=1.0):
    return scale * jax.random.normal(key, (n, 2), jnp.float64)


def test_progressive_target_equals_two_teacher_ddim_steps(x64):
    path = paths.get("vp_cosine")
    x0_fn = _ring_x0(path)
    n = 4
    dt = path.t_max / n
    z = _points(jax.random.PRNGKey(0), 16)
    t = jnp.full((16,), 3 * dt)

    def ddim(x, s, u):  # written out here, independent of diffjax.distill.ode
        a_s, s_s = path.alpha(s)[:, None], path.sigma(s)[:, None]
        a_u, s_u = path.alpha(u)[:, None], path.sigma(u)[:, None]
        x0 = x0_fn(x, s)
        return a_u * x0 + s_u * (x - a_s * x0) / s_s

    z2 = jax.jit(lambda z: ddim(ddim(z, t, t - dt / 2), t - dt / 2, t - dt))(z)
    x_tilde = jax.jit(lambda z: progressive.target(x0_fn, path, z, t, dt))(z)
    a_t, s_t = path.alpha(t)[:, None], path.sigma(t)[:, None]
    a_2, s_2 = path.alpha(t - dt)[:, None], path.sigma(t - dt)[:, None]
    student_step = a_2 * x_tilde + s_2 * (z - a_t * x_tilde) / s_t
    np.testing.assert_allclose(student_step, z2, rtol=1e-10, atol=1e-10)
    # and it is not the trivial answer: one teacher step of size dt lands elsewhere
    assert np.max(np.abs(ddim(z, t, t - dt) - z2)) > 1e-3


def test_consistency_loss_of_the_exact_consistency_function_is_zero(x64):
    path = paths.get("edm", sigma_max=5.0)
    x0_fn = _ring_x0(path)

    def f_exact(x, t):  # the mixture's ODE solved tightly down to t = 0 (f(x, 0) = x)
        return ode.rk4(path, x0_fn, x, t, jnp.zeros_like(t), 100)

    x_hi = _points(jax.random.PRNGKey(1), 32, 2.0)
    t_hi, t_lo = jnp.full((32,), 0.6), jnp.full((32,), 0.5)
    c = 0.00054 * np.sqrt(2)

    @jax.jit
    def losses(x_hi):
        x_lo = ode.rk4(path, x0_fn, x_hi, t_hi, t_lo, 100)   # the pair on one exact ODE path
        f_hi, f_lo = f_exact(x_hi, t_hi), f_exact(x_lo, t_lo)
        return (consistency.pseudo_huber(f_hi, f_lo, c),
                consistency.pseudo_huber(1.01 * f_hi, f_lo, c))

    exact, off = losses(x_hi)
    assert float(jnp.max(exact)) < 1e-8
    assert float(jnp.min(off)) > 1e-5


def test_consistency_network_meets_its_boundary_condition_exactly():
    import flax.linen as nn
    from diffjax.distill import nets

    class Wild(nn.Module):
        @nn.compact
        def __call__(self, x, noise_cond, cond=None, train=False):
            return nn.Dense(x.shape[-1])(x) * 100.0 + noise_cond[:, None]

    path = paths.get("edm")
    net = nets.Consistency(Wild(), path)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    params = net.init(jax.random.PRNGKey(1), x, jnp.zeros((8,)))
    np.testing.assert_array_equal(net.apply(params, x, jnp.zeros((8,))), x)
    assert float(jnp.max(jnp.abs(net.apply(params, x, jnp.full((8,), 0.5)) - x))) > 1.0


def _mean_velocity_by_quadrature(path, x0_fn, z, r, t, num=200):
    """Simpson's rule for (1/(t-r)) int_r^t v(z_tau, tau) dtau along the RK4 trajectory."""
    taus = jnp.linspace(t, r, num + 1)
    rows = lambda a: jnp.full(z.shape[:1], a)  # noqa: E731

    def step(x, pair):
        tau, nxt = pair
        v = ode.velocity(path, x0_fn, x, rows(tau))
        return ode.rk4(path, x0_fn, x, rows(tau), rows(nxt), 2), v

    x_r, vs = jax.jit(lambda x: jax.lax.scan(step, x, (taus[:-1], taus[1:])))(z)
    vs = jnp.concatenate([vs, ode.velocity(path, x0_fn, x_r, rows(r))[None]])
    w = np.ones(num + 1)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return jnp.tensordot(jnp.asarray(w), vs, axes=1) / (3 * num)


def test_meanflow_target_equals_the_mixtures_average_velocity(x64):
    path = paths.get("rectified_flow")
    x0_fn = _ring_x0(path)
    r0, t0 = 0.3, 0.8
    z = _points(jax.random.PRNGKey(2), 8)
    r, t = jnp.full((8,), r0), jnp.full((8,), t0)

    def u_exact(z_, r_, t_):  # (z_t - z_r) / (t - r) along the exact ODE
        return (z_ - ode.rk4(path, x0_fn, z_, t_, r_, 64)) / (t_ - r_)[:, None]

    v = ode.velocity(path, x0_fn, z, t)
    u, u_tgt = jax.jit(lambda: meanflow.target(u_exact, z, r, t, v))()
    quad = _mean_velocity_by_quadrature(path, x0_fn, z, r0, t0)
    np.testing.assert_allclose(u, quad, atol=1e-6)
    np.testing.assert_allclose(u_tgt, quad, atol=1e-6)
    # u(z, t, t) = v(z, t): the target at r = t is the instantaneous velocity, whatever u is
    _, at_t = meanflow.target(lambda z_, r_, t_: 3.0 * z_ + r_[:, None], z, t, t, v)
    np.testing.assert_array_equal(at_t, v)
    short = (z - ode.rk4(path, x0_fn, z, t, t - 1e-4, 20)) / 1e-4
    np.testing.assert_allclose(short, v, atol=1e-3)


def test_reflow_couplings_are_reproducible_from_their_seed():
    path = paths.get("rectified_flow")
    x0_fn = _ring_x0(path)
    a = reflow.couplings(x0_fn, path, (64, 2), seed=3, num_steps=8)
    b = reflow.couplings(x0_fn, path, (64, 2), seed=3, num_steps=8)
    c = reflow.couplings(x0_fn, path, (64, 2), seed=4, num_steps=8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], c[0])


def test_coupling_solve_takes_the_teacher_params_as_an_argument():
    """DESIGN §6: a teacher's parameters are traced, not constants of the compiled solve. A
    Gaussian teacher N(mu, s^2 I) on rectified flow, E[x0 | x_t] with (mu, s) as its params,
    couples eps with mu + s eps exactly (its ODE is affine): two parameter sets give their
    closed-form couplings from one program (x0_fn is traced once)."""
    path = paths.get("rectified_flow")
    traces = []

    def x0_fn(params, x, t):   # the Gaussian's posterior mean on x_t = (1 - t) x0 + t eps
        traces.append(1)
        mu, s = params["mu"], params["s"]
        a = (1 - t)[:, None]
        gain = a * s**2 / (a**2 * s**2 + t[:, None] ** 2)
        return mu + gain * (x - a * mu)

    for mu, s in (([1.0, -0.5], 0.4), ([-2.0, 0.3], 1.5)):
        params = {"mu": jnp.asarray(mu, jnp.float32), "s": jnp.float32(s)}
        eps, x0 = reflow.couplings(x0_fn, path, (64, 2), seed=3, num_steps=64, params=params)
        np.testing.assert_allclose(x0, np.asarray(mu) + s * np.asarray(eps), atol=1e-4)
        if s == 0.4:
            first = len(traces)
    assert first > 0 and len(traces) == first   # the second set reused the first's program


def test_reflow_of_straight_couplings_is_a_fixed_point(x64):
    """A Gaussian teacher N(mu, s^2 I) on rectified flow couples eps with mu + s eps (its ODE is
    affine); those lines never cross, so their rectified flow is straight and reflowing it
    returns the same couplings."""
    path = paths.get("rectified_flow")
    mu, s = np.array([1.0, -0.5]), 0.4
    mix = analytic.GaussianMixture([1.0], mu[None], (s**2 * np.eye(2))[None])
    eps, x0 = reflow.couplings(lambda x, t: mix.x0_hat(path, x, t), path, (128, 2), seed=0,
                               num_steps=64)
    np.testing.assert_allclose(x0, mu + s * eps, atol=2e-5)  # float32 couplings

    def x0_reflowed(x, t):  # E[x0 | x_t] of the coupling (eps, mu + s eps): deterministic
        e = (x - (1 - t)[:, None] * mu) / ((1 - t) * s + t)[:, None]
        return mu + s * e

    eps2, x02 = reflow.couplings(x0_reflowed, path, (128, 2), seed=0, num_steps=64)
    np.testing.assert_allclose(x02, x0, atol=2e-5)
    v_teacher = lambda x, t: ode.velocity(path, lambda y, u: mix.x0_hat(path, y, u), x, t)  # noqa
    v_reflowed = lambda x, t: ode.velocity(path, x0_reflowed, x, t)  # noqa: E731
    eps = jnp.asarray(eps, jnp.float64)
    assert float(reflow.straightness(v_reflowed, eps, 64)) < 1e-12
    assert float(reflow.straightness(v_teacher, eps, 64)) > 1e-3


@pytest.mark.parametrize("k", [1, 2, 4])
def test_k_step_distillation_trains_where_the_k_step_euler_sampler_evaluates(k):
    """Liu et al.'s k-step distillation draws t from the times at which diffjax.sample's
    k-step Euler evaluates the model (recorded from the sampler, not recomputed), and on
    straight couplings one Euler step from x_t at such a time, with the chord velocity as the
    model, lands on the line's next grid point: k steps reach x0."""
    import diffjax
    path = paths.get("rectified_flow")
    seen = []
    x0 = jnp.array([1.0, -0.5]) + 0.3 * jax.random.normal(jax.random.PRNGKey(1), (8, 2))

    def chord(x, t):  # d x_t / dt on the line (1 - t) x0 + t eps through the start eps
        jax.debug.callback(lambda t: seen.append(float(np.asarray(t)[0])), t)
        return (x - x0) / t[:, None]

    out = diffjax.sample(chord, path, (8, 2), jax.random.PRNGKey(2), target="velocity",
                         sampler="euler", num_steps=k)
    out.block_until_ready()
    jax.effects_barrier()
    times = reflow.euler_times(path, k)
    np.testing.assert_allclose(sorted(seen, reverse=True), times, rtol=0, atol=1e-7)
    np.testing.assert_allclose(out, x0, atol=1e-5)

    class Setup:  # only the objective's sampler is read when times are None
        objective = None
    task = reflow.Reflow(Setup(), {}, times)
    draws = np.asarray(task.sample_t(jax.random.PRNGKey(3), 4096))
    np.testing.assert_array_equal(np.unique(draws), np.unique(np.float32(times)))
    with pytest.raises(ValueError, match="reflow_steps=0"):
        reflow.euler_times(path, 0)


def test_shortcut_bootstrap_of_an_exact_average_velocity_is_itself(x64):
    from diffjax.distill import shortcut
    path = paths.get("rectified_flow")
    x0_fn = _ring_x0(path)

    def u_exact(z_, t_, r_):
        gap = jnp.maximum(t_ - r_, 1e-4)
        return (z_ - ode.rk4(path, x0_fn, z_, t_, t_ - gap, 100)) / gap[:, None]

    z = _points(jax.random.PRNGKey(5), 8)
    t, d = jnp.full((8,), 0.9), jnp.full((8,), 0.5)
    boot = shortcut.bootstrap_target(u_exact, z, t, d, jnp.zeros((8,), bool))
    np.testing.assert_allclose(boot, u_exact(z, t, t - d), atol=1e-6)


def test_progressive_round_schedule_must_halve_and_be_positive():
    assert progressive.check_rounds((8, 4, 2, 1), 2) == (4, 2)
    with pytest.raises(ValueError, match="must halve"):
        progressive.check_rounds((8, 4, 3), 1)
    with pytest.raises(ValueError, match="int >= 1"):
        progressive.check_rounds((2, 1, 0), 1)
    with pytest.raises(ValueError, match="round=3"):
        progressive.check_rounds((8, 4, 2), 3)


def test_teacher_references_fail_clearly(tmp_path):
    with pytest.raises(Exception, match="no run|no checkpoint"):
        frozen.load(teacher_lib.TEACHER_KEY, str(tmp_path))
    with pytest.raises(ValueError, match="unknown mixture 'moons'.*analytic:digits"):
        frozen.load(teacher_lib.TEACHER_KEY, "analytic:moons")


def test_digits_distill_recipes_name_registered_tasks_and_unknown_recipes_fail():
    import importlib.util
    import os

    from diffjax.training import tasks
    spec = importlib.util.spec_from_file_location(
        "digits_distill", os.path.join(os.path.dirname(__file__), "..", "configs",
                                       "digits_distill.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for recipe in ("progressive", "consistency_distillation", "consistency_training", "reflow",
                   "shortcut", "meanflow"):
        config = module.get_config(recipe)
        assert config.task == recipe and tasks.get(config.task) is tasks.TASKS[recipe]
    with pytest.raises(ValueError, match="valid recipes: progressive"):
        module.get_config("distill")
