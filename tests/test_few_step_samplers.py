"""The few-step samplers of diffjax.sample (consistency, mean_flow/shortcut) against closed forms.

Ground truth: Gaussian data ``x0 ~ N(0, c^2 I)``. Under any path its probability-flow ODE is
linear, ``x_t = (m(t) / m(u)) x_u`` with ``m(t) = sqrt(alpha_t^2 c^2 + sigma_t^2)``, so the exact
consistency function is ``f(x, t) = c x / m(t)`` and the exact average velocity on the
``rectified_flow`` path is ``u(z, t, r) = z (1 - m(r) / m(t)) / (t - r)``. Model evaluations are
counted on the host (``jax.debug.callback``), independently of the sampler's own NFE report.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import paths

C = 0.5
CALLS = []


def _count(x):
    jax.debug.callback(lambda: CALLS.append(1), ordered=True)
    return x


def _m(path, t):
    return jnp.sqrt(path.alpha(t) ** 2 * C**2 + path.sigma(t) ** 2)


def _consistency_fn(path):
    def f(params, x, t, cond):
        return _count(params["c"] * x / _m(path, t)[:, None])
    return f


def _mean_flow_fn(path):
    def u(params, x, t, cond):
        r = cond["r"]
        return _count(x * ((1.0 - _m(path, r) / _m(path, t)) / (t - r))[:, None])
    return u


def _run(model_fn, path, sampler, n, shape=(4000, 2), **options):
    CALLS.clear()
    x, info = diffjax.sample(model_fn, path, shape, jax.random.PRNGKey(0), target=options.pop(
        "target", "x0"), sampler=sampler, num_steps=n, params={"c": jnp.asarray(C)},
        return_trajectory=True, **options)
    jax.block_until_ready(x)
    return np.asarray(x), info


@pytest.mark.parametrize("n", [1, 2, 4])
def test_consistency_sampler_with_the_exact_consistency_function_samples_the_data(n):
    """Song et al. 2023, Alg. 1 step by step: x0 = f(x_t, t), then x_s = alpha_s x0 + sigma_s z
    with fresh z ~ N(0, I); the last step returns x0 = f(x, t_{n-1}). NFE = n, counted."""
    path = paths.get("vp_linear")
    x, info = _run(_consistency_fn(path), path, "consistency", n)
    ts, traj = np.asarray(info.ts), np.asarray(info.trajectory)
    assert info.nfe == n == len(CALLS) and traj.shape[0] == n + 1
    np.testing.assert_allclose(ts, np.linspace(1.0, path.t_min, n + 1), atol=1e-6)  # uniform
    f = lambda x, t: C * x / float(_m(path, jnp.asarray(t)))  # noqa: E731
    np.testing.assert_allclose(x, f(traj[-2], ts[-2]), rtol=1e-5, atol=1e-6)
    for k in range(n - 1):
        a, s = float(path.alpha(ts[k + 1])), float(path.sigma(ts[k + 1]))
        z = (traj[k + 1] - a * f(traj[k], ts[k])) / s
        assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.03
        assert abs(np.corrcoef(z[:, 0], traj[k][:, 0])[0, 1]) < 0.05   # fresh noise
    assert abs(x.std() - C) < 0.02


def test_consistency_sampler_takes_explicit_renoising_times():
    path = paths.get("edm")
    times = np.array([1.0, 0.6, 0.3])
    x, info = _run(_consistency_fn(path), path, "consistency", 3, grid=np.append(times, 0.0))
    np.testing.assert_allclose(np.asarray(info.ts)[:-1], times, atol=1e-7)
    assert info.nfe == 3 == len(CALLS) and abs(x.std() - C) < 0.02


@pytest.mark.parametrize("sampler", ["mean_flow", "shortcut"])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_mean_flow_with_the_exact_average_velocity_is_the_exact_ode_map(sampler, n):
    """Each jump z_s = z_t - (t - s) u(z_t, t, s) of the exact average velocity lands on the
    ODE: the 1-, 2- and 4-step samples are c z_1 exactly. A sampler that does not tell the
    model the step's end (cond["r"]) divides 0 by 0 here."""
    path = paths.get("rectified_flow")
    x, info = _run(_mean_flow_fn(path), path, sampler, n, target="velocity")
    traj = np.asarray(info.trajectory)
    assert info.nfe == n == len(CALLS)
    np.testing.assert_allclose(x, C * traj[0], rtol=1e-4, atol=1e-5)


def test_mean_flow_step_is_the_jump_of_the_model_told_its_end_time():
    """x_s = x_t - (t - s) u(x_t, t, s) on rectified flow, for an arbitrary u and grid."""
    path = paths.get("rectified_flow")

    def u(params, x, t, cond):
        return _count(jnp.sin(3 * x) + t[:, None] - 2.0 * cond["r"][:, None] ** 2)

    grid = np.array([1.0, 0.7, 0.2, 0.0])
    x, info = _run(u, path, "mean_flow", 3, shape=(16, 2), target="velocity", grid=grid)
    traj = np.asarray(info.trajectory, np.float64)
    for k in range(3):
        t, s = grid[k], grid[k + 1]
        want = traj[k] - (t - s) * (np.sin(3 * traj[k]) + t - 2.0 * s**2)
        np.testing.assert_allclose(traj[k + 1], want, rtol=1e-5, atol=1e-5)


def test_mean_flow_of_a_model_without_condition_is_ddim():
    """A closure model without a condition is not told the end time: an instantaneous model,
    so the jump is DDIM's step."""
    path = paths.get("vp_linear")
    model = lambda x, t: (path.sigma(t) / _m(path, t) ** 2)[:, None] * x  # noqa: E731 exact eps
    run = lambda s: diffjax.sample(model, path, (64, 2), jax.random.PRNGKey(1),  # noqa: E731
                                   target="eps", sampler=s, num_steps=5, denoise_to_zero=False)
    np.testing.assert_allclose(run("mean_flow"), run("ddim"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sampler", ["consistency", "mean_flow"])
def test_few_step_samplers_refuse_zero_steps_before_any_compute(sampler):
    def never(params, x, t, cond):
        raise AssertionError("the model was called")
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        diffjax.sample(never, paths.get("rectified_flow"), (4, 2), jax.random.PRNGKey(0),
                       target="velocity", sampler=sampler, num_steps=0, params={})
