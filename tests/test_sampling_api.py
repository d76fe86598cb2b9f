"""The sampling API of DESIGN §6: parameters as traced arguments, condition pytrees, guidance
(classifier-free, autoguidance, interval), the public argument check, gradients through the
adaptive solver. Ground truth: the exact mixture, hand-mixed models and finite differences.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import analytic, conditions, likelihood, paths, samplers

RING = analytic.GaussianMixture.ring()
PATH = paths.get("vp_linear")
COND_EPS = RING.conditional_model_fn(PATH, "eps")
LABEL = jnp.arange(16) % RING.num_classes


def _mlp_params(width, seed):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"w1": jax.random.normal(k1, (3, width)) / 3, "b1": jnp.zeros(width),
            "w2": jax.random.normal(k2, (width, 2)) / width**0.5, "b2": jnp.zeros(2)}


def _mlp(params, x, t, cond=None):
    h = jnp.tanh(jnp.concatenate([x, t[:, None]], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


class _Traces:
    """Counts traces of the compiled runs (``_run``) through ``jax.monitoring``."""

    def __init__(self):
        self.names = []

    def __call__(self, event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            self.names.append(kwargs.get("fun_name"))

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)

    def count(self, name="_run"):
        return self.names.count(name)


# -- parameters are arguments --------------------------------------------------------------
def test_new_parameters_of_the_same_structure_do_not_recompile_sampling_or_likelihood():
    key, x = jax.random.PRNGKey(0), RING.sample(jax.random.PRNGKey(1), 4)[0]
    run = functools.partial(diffjax.sample, path=PATH, shape=(4, 2), key=key, target="eps",
                            sampler="heun", num_steps=5)
    with _Traces() as traces:
        a = run(_mlp, params=_mlp_params(8, 0))
        b = run(_mlp, params=_mlp_params(8, 1))
        lik = functools.partial(likelihood.log_likelihood, _mlp, PATH, x, target="eps",
                                max_evals=200, rtol=1e-3, atol=1e-3)
        la, _ = lik(params=_mlp_params(8, 0))
        lb, _ = lik(params=_mlp_params(8, 1))
    assert traces.count() == 2, traces.names  # one sampler, one likelihood program
    # The parameters really are used: different weights, different results, equal to the
    # closure over the same weights.
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3 and float(jnp.max(jnp.abs(la - lb))) > 1e-3
    closure = run(lambda x, t, p=_mlp_params(8, 1): _mlp(p, x, t))
    np.testing.assert_allclose(b, closure, rtol=1e-6, atol=1e-6)
    # A closure over other weights is another program (the reason params= exists).
    with _Traces() as traces:
        run(lambda x, t, p=_mlp_params(8, 0): _mlp(p, x, t))
    assert traces.count() == 1


def test_program_size_does_not_grow_with_the_weights_passed_as_params():
    key = jax.random.PRNGKey(0)
    run = functools.partial(diffjax.sample, path=PATH, shape=(4, 2), key=key, target="eps",
                            sampler="ddim", num_steps=3)

    def sizes(width):
        p = _mlp_params(width, 0)
        as_args = jax.jit(lambda p: run(_mlp, params=p)).lower(p).as_text()
        closure = lambda x, t: _mlp(p, x, t)
        baked = jax.jit(lambda: run(closure)).lower().as_text()
        return len(as_args), len(baked)

    (args_small, baked_small), (args_big, baked_big) = sizes(16), sizes(1024)
    assert args_big < 1.05 * args_small, (args_small, args_big)
    # With a closure the weights (5k floats more) are constants of the program.
    assert baked_big - baked_small > 5 * (1024 - 16) * 5, (baked_small, baked_big)


# -- condition pytrees and classifier-free guidance ----------------------------------------
def _run(model, w=1.0, **kwargs):
    return diffjax.sample(model, PATH, (16, 2), jax.random.PRNGKey(3), target="eps",
                          sampler="ddim", num_steps=8, guidance_scale=w, **kwargs)


def _ignores_control(x, t, cond):
    """The exact conditional mixture as a model of a label and a control image it ignores."""
    assert set(cond) == {"label", "control"}
    return COND_EPS(x, t, {"label": cond["label"]})


def test_a_condition_pytree_with_a_label_gives_the_samples_of_label_shorthand(x64):
    for w in (1.0, 2.5):
        np.testing.assert_array_equal(
            _run(COND_EPS, w, cond={"label": LABEL}, num_classes=RING.num_classes),
            _run(COND_EPS, w, label=LABEL, num_classes=RING.num_classes))


def test_guidance_scale_one_and_zero_are_the_conditional_and_unconditional_models(x64):
    cond = {"label": LABEL, "control": jnp.ones((16, 2, 2, 1))}
    nulls = conditions.Nulls(num_classes=RING.num_classes)
    conditional = _run(lambda x, t: COND_EPS(x, t, {"label": LABEL}))
    unconditional = _run(RING.model_fn(PATH, "eps"))
    np.testing.assert_allclose(_run(_ignores_control, 1.0, cond=cond, nulls=nulls),
                               conditional, atol=1e-10)
    np.testing.assert_allclose(_run(_ignores_control, 0.0, cond=cond, nulls=nulls),
                               unconditional, atol=1e-10)
    assert float(jnp.max(jnp.abs(conditional - unconditional))) > 0.1


def test_guidance_of_a_pytree_condition_is_one_batched_call_mixing_eps(x64):
    w, seen = 2.5, []
    cond = {"label": LABEL, "control": jnp.ones((16, 2, 2, 1))}

    def recording(x, t, c):
        jax.debug.callback(lambda n, control, label: seen.append(
            (int(n), bool(np.all(control[16:] == 0)), bool(np.all(label[16:] == 8)))),
            x.shape[0] + 0 * c["label"][0], c["control"], c["label"])
        return _ignores_control(x, t, c)

    def hand_mixed(x, t):
        eps_u = COND_EPS(x, t, {"label": jnp.full_like(LABEL, RING.num_classes)})
        return eps_u + w * (COND_EPS(x, t, {"label": LABEL}) - eps_u)

    guided = _run(recording, w, cond=cond, nulls=conditions.Nulls(RING.num_classes))
    jax.effects_barrier()
    # Each of the 8 evaluations: one call on [x; x], the second half carrying the nulls.
    assert RING.num_classes == 8 and seen == [(32, True, True)] * 8
    np.testing.assert_allclose(guided, _run(hand_mixed), atol=1e-9)
    explicit = _run(_ignores_control, w, cond=cond,
                    uncond={"label": jnp.full_like(LABEL, RING.num_classes),
                            "control": jnp.zeros((16, 2, 2, 1))})
    np.testing.assert_allclose(explicit, guided, atol=1e-12)


def test_a_sweep_over_the_guidance_scale_compiles_once_and_mixes_each_scale(x64):
    """w is a traced argument: scales 1.5, 2.5 and 4 share one program (w = 0 and 1, which
    skip a model, are their own), and each equals its hand-mixed closure."""
    def hand_mixed(w):
        def fn(x, t):
            eps_u = COND_EPS(x, t, {"label": jnp.full_like(LABEL, RING.num_classes)})
            return eps_u + w * (COND_EPS(x, t, {"label": LABEL}) - eps_u)
        return fn

    model = lambda x, t, c: COND_EPS(x, t, c)  # noqa: E731  (a function no test compiled)
    with _Traces() as traces:
        guided = {w: _run(model, w, label=LABEL, num_classes=RING.num_classes)
                  for w in (1.5, 2.5, 4.0)}
    assert traces.count() == 1, traces.names
    for w, x in guided.items():
        np.testing.assert_allclose(x, _run(hand_mixed(w)), atol=1e-9)
    assert float(jnp.max(jnp.abs(guided[1.5] - guided[4.0]))) > 0.1


# -- autoguidance and the guidance interval ---------------------------------------------------
def test_autoguidance_by_the_main_model_itself_is_the_main_model_at_any_scale(x64):
    main = RING.model_fn(PATH, "eps")
    same_in_x0 = RING.model_fn(PATH, "x0")  # the same denoiser in another target
    for w in (0.0, 3.0):
        np.testing.assert_allclose(_run(main, w, guide_fn=same_in_x0, guide_target="x0"),
                                   _run(main), atol=1e-8)


def test_autoguidance_scale_one_is_the_main_model_and_zero_the_guide(x64):
    broad = analytic.GaussianMixture(RING.weights, RING.means, 4.0 * RING.covs)
    main, guide = RING.model_fn(PATH, "eps"), broad.model_fn(PATH, "velocity")
    np.testing.assert_allclose(_run(main, 1.0, guide_fn=guide, guide_target="velocity"),
                               _run(main), atol=1e-10)
    np.testing.assert_allclose(_run(main, 0.0, guide_fn=guide, guide_target="velocity"),
                               _run(broad.model_fn(PATH, "eps")), atol=1e-8)
    # Guide parameters are arguments like the main model's.
    scaled = lambda p, x, t, cond: p * guide(x, t)
    np.testing.assert_allclose(
        _run(main, 0.0, guide_fn=scaled, guide_params=jnp.asarray(1.0), guide_target="velocity"),
        _run(broad.model_fn(PATH, "eps")), atol=1e-8)


def _batches(interval, w=2.5):
    sizes = []

    def counted(x, t, c):
        jax.debug.callback(lambda n: sizes.append(int(n)), x.shape[0] + 0 * t[0].astype(int))
        return COND_EPS(x, t, c)

    x, info = _run(counted, w, label=LABEL, num_classes=RING.num_classes, return_info=True,
                   guidance_interval=interval)
    jax.effects_barrier()
    return x, info, sizes


def test_guidance_interval_covering_all_noise_levels_is_plain_guidance(x64):
    x, info, sizes = _batches((0.0, float("inf")))
    np.testing.assert_allclose(x, _run(COND_EPS, 2.5, label=LABEL,
                                       num_classes=RING.num_classes), atol=1e-12)
    assert sizes == [32] * info.nfe


def test_empty_guidance_interval_is_the_conditional_model_at_batch_b(x64):
    x, info, sizes = _batches((1e6, 1e7))  # above every sigma/alpha of the vp_linear path
    np.testing.assert_allclose(x, _run(lambda x, t: COND_EPS(x, t, {"label": LABEL})),
                               atol=1e-12)
    assert sizes == [16] * info.nfe  # one conditional evaluation per step, none guided
    # A middle interval guides only the evaluations whose noise level is inside it.
    _, info, sizes = _batches((0.5, 5.0))
    levels = np.exp(-0.5 * np.asarray(PATH.logsnr(info.ts)))
    inside = [(0.5 <= s <= 5.0) for s in levels[:-1]] + [0.5 <= levels[-1] <= 5.0]
    assert sizes == [32 if i else 16 for i in inside]


# -- gradients, checks ----------------------------------------------------------------------
def test_gradient_through_the_adaptive_sampler_matches_finite_differences(x64):
    exact = RING.model_fn(PATH, "eps")
    model = lambda p, x, t, cond: p * exact(x, t)

    def loss(p):
        x = diffjax.sample(model, PATH, (4, 2), jax.random.PRNGKey(0), target="eps",
                           sampler="adaptive", num_steps=2000, params=p, rtol=1e-7, atol=1e-7)
        return jnp.mean(jnp.sum(x**2, -1))

    h = 1e-4
    fd = (loss(1.0 + h) - loss(1.0 - h)) / (2 * h)
    grad = jax.grad(loss)(jnp.asarray(1.0))
    assert abs(float(fd)) > 0.1
    np.testing.assert_allclose(grad, fd, rtol=1e-3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sampler="dpm"), "Unknown sampler 'dpm'"),
    (dict(guidance_scale=2.0), "guidance_scale=2 needs label"),
    (dict(guidance_scale=2.0, label=np.zeros(4, int)), "needs the null condition: num_classes"),
    (dict(guidance_scale=2.0, cond={"text": np.zeros((4, 3), int)},
          nulls=conditions.Nulls(num_classes=3)), "no null value for condition 'text'"),
    (dict(label=np.zeros(4, int), cond={"label": np.zeros(4, int)}), "pass the condition once"),
    (dict(guidance_scale=2.0, guidance_interval=(2.0, 1.0), guide_fn=abs),
     "0 <= sigma_lo <= sigma_hi"),
    (dict(guide_params={"w": 1.0}), "guide_params needs guide_fn"),
    (dict(guide_fn=abs, guide_target="noise"), "Unknown target 'noise'"),
    (dict(guide_fn=abs, uncond={}, guidance_scale=2.0), "either uncond"),
    (dict(cond={"colour": np.zeros(4)}), "unknown condition key"),
])
def test_check_refuses_bad_arguments_without_a_model(kwargs, match):
    args = dict(target="eps", sampler="ddim", num_steps=10) | kwargs
    with pytest.raises(ValueError, match=match):
        samplers.check(PATH, (4, 2), **args)


def test_a_guide_of_other_data_is_refused_before_sampling():
    other_data = lambda x, t: jnp.zeros((x.shape[0], 3))
    with pytest.raises(ValueError, match=r"guide_fn returns shape \(4, 3\) for samples of "
                       r"shape \(4, 2\)"):
        diffjax.sample(RING.model_fn(PATH, "eps"), PATH, (4, 2), jax.random.PRNGKey(0),
                       target="eps", sampler="ddim", num_steps=4, guidance_scale=2.0,
                       guide_fn=other_data)


def test_check_accepts_what_sample_runs():
    samplers.check(PATH, (4, 2), target="eps", sampler="ddim", num_steps=10,
                   label=np.zeros(4, int), guidance_scale=2.0, num_classes=3,
                   guidance_interval=(0.1, 10.0))
    samplers.check(PATH, (4, 2), target="eps", sampler="adaptive", num_steps=100)


def test_callback_is_called_once_per_step_with_decreasing_times_and_absent_when_off(x64):
    steps = []
    model = RING.model_fn(PATH, "x0")
    run = functools.partial(diffjax.sample, model, PATH, (4, 2), jax.random.PRNGKey(0),
                            target="x0", sampler="euler", num_steps=6, return_trajectory=True)
    x, info = run(callback=lambda i, t, x, x0_hat: steps.append((i, t, x, x0_hat)))
    jax.effects_barrier()
    num = info.ts.shape[0] - 1                        # 5 Euler steps (+ the final x0_hat)
    assert [s[0] for s in steps] == list(range(num))
    np.testing.assert_allclose([s[1] for s in steps], info.ts[1:], rtol=1e-12)
    np.testing.assert_allclose(np.stack([s[2] for s in steps]), info.trajectory[1:],
                               rtol=1e-12)
    # Euler's one evaluation per step is at the step's start: x0_hat(x_{t_i}, t_i).
    for i, _, _, x0_hat in steps:
        np.testing.assert_allclose(x0_hat, model(info.trajectory[i], jnp.full((4,), info.ts[i])),
                                   rtol=1e-10, atol=1e-12)
    # The same samples without the callback (to float rounding: the two programs fuse
    # differently), and the callback is absent from the program when off.
    np.testing.assert_allclose(run()[0], x, rtol=1e-12, atol=1e-12)
    lowered = lambda **kw: jax.jit(lambda k: diffjax.sample(
        model, PATH, (4, 2), k, target="x0", sampler="euler", num_steps=6, **kw)).lower(
            jax.random.PRNGKey(0)).as_text()
    assert "callback" not in lowered() and "callback" in lowered(callback=print)


def test_callback_is_refused_where_steps_are_chosen_at_run_time():
    with pytest.raises(ValueError, match="'adaptive' does not take callback"):
        samplers.check(PATH, (4, 2), target="eps", sampler="adaptive", num_steps=100,
                       callback=print)


def test_progress_reports_each_step_index_once_without_the_sample_and_is_absent_when_off():
    """``progress(i, n)``: every grid step i = 0 .. n-1 once, n = the grid's steps (for a
    one-evaluation sampler and for Heun's two), from an unordered callback of a scalar;
    the samples are those of the run without it, and off it is not in the program."""
    model = RING.model_fn(PATH, "x0")
    for sampler, nfe in (("euler", 6), ("heun", 7)):
        seen = []
        run = functools.partial(diffjax.sample, model, PATH, (4, 2), jax.random.PRNGKey(0),
                                target="x0", sampler=sampler, num_steps=nfe, return_info=True)
        x, info = run(progress=lambda i, n: seen.append((i, n)))
        jax.effects_barrier()
        n = info.ts.shape[0] - 1
        assert sorted(seen) == [(i, n) for i in range(n)] and n >= 3
        np.testing.assert_allclose(run()[0], x, rtol=1e-6, atol=1e-6)
    lowered = lambda **kw: jax.jit(lambda k: diffjax.sample(
        model, PATH, (4, 2), k, target="x0", sampler="euler", num_steps=6, **kw)).lower(
            jax.random.PRNGKey(0)).as_text()
    assert "callback" not in lowered() and "callback" in lowered(progress=lambda i, n: None)
    with pytest.raises(ValueError, match="does not take progress"):
        diffjax.sample(model, PATH, (4, 2), jax.random.PRNGKey(0), target="x0",
                       sampler="adaptive", num_steps=50, progress=print)
    with pytest.raises(ValueError, match="progress must be a function"):
        diffjax.sample(model, PATH, (4, 2), jax.random.PRNGKey(0), target="x0",
                       sampler="euler", num_steps=4, progress=True)
