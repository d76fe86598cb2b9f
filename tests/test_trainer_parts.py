"""The trainer's parts against hand computations: the learning-rate schedule, one clipped
Adam/AdamW step with its EMA, the logged rate after a skipped step, gradient accumulation
against one big batch (looped and unrolled), and the sampler compiled once, split over devices
and run in chunks."""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import _train_helpers as helpers
from diffjax import configs as configs_lib
from diffjax import data, train
from diffjax.training import optim

REPO = helpers.REPO


def _optim_cfg(**changes) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        optimizer="adam", lr=0.1, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, grad_clip=0.0,
        warmup_steps=5, schedule="cosine", end_lr_factor=0.05, grad_accum_steps=1))
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize("schedule,warmup", [("cosine", 5), ("cosine", 0), ("constant", 5),
                                             ("cosine", 1)])
def test_lr_schedule_is_warmup_then_cosine_by_hand(schedule, warmup):
    n, lr, end = 50, 0.1, 0.05
    fn = optim.lr_schedule(_optim_cfg(schedule=schedule, warmup_steps=warmup), n)
    for s in range(0, 60):
        rate = lr * min(1.0, (s + 1) / max(warmup, 1))
        if schedule == "cosine" and s >= warmup:
            progress = min(s - warmup, n - warmup) / (n - warmup)
            rate = lr * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress)))
        assert float(fn(s)) == pytest.approx(rate, rel=1e-6, abs=1e-9), s


def _toy_setup(**optim_changes) -> train.Setup:
    """A Setup holding only what apply_gradients reads."""
    cfg = _optim_cfg(**optim_changes)
    optimizer, schedule = optim.make_optimizer(cfg, 50)
    return train.Setup(net=None, denoiser=None, objective=None, optimizer=optimizer,
                       lr_schedule=schedule, data_info=None, cond_kinds=(), ema_decay=0.99,
                       ema_warmup=True)


def _toy_state(setup, w):
    params = {"w": jnp.asarray(w, jnp.float32)}
    return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            ema_params=jax.tree_util.tree_map(jnp.copy, params),
                            opt_state=setup.optimizer.init(params), key=jax.random.PRNGKey(0),
                            nonfinite_count=jnp.zeros((), jnp.int32))


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_clipped_adam_steps_and_ema_match_a_hand_computation(optimizer):
    b1, b2, eps, clip, wd, lr = 0.9, 0.99, 1e-8, 1.0, 0.1, 0.1
    setup = _toy_setup(optimizer=optimizer, grad_clip=clip, weight_decay=wd, warmup_steps=0,
                       schedule="constant")
    w = np.array([1.0, -2.0, 0.5])
    state = _toy_state(setup, w)
    grads = [np.array([3.0, 4.0, 0.0]), np.array([0.1, -0.2, 0.05])]  # norms 5 and 0.23
    m = v = np.zeros(3)
    ema = w.copy()
    for k, g in enumerate(grads, start=1):
        state, metrics = train.apply_gradients(setup, state, jnp.float32(1.0),
                                               {"w": jnp.asarray(g, jnp.float32)})
        g = g * min(1.0, clip / np.linalg.norm(g))         # global-norm clipping
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**k), v / (1 - b2**k)     # bias correction
        step = m_hat / (np.sqrt(v_hat) + eps) + (wd * w if optimizer == "adamw" else 0.0)
        w = w - lr * step
        decay = min(0.99, k / (9.0 + k))                    # (1 + s) / (10 + s), s = k - 1
        ema = ema + (1 - decay) * (w - ema)
        np.testing.assert_allclose(state.params["w"], w, rtol=1e-5)
        np.testing.assert_allclose(state.ema_params["w"], ema, rtol=1e-5)
        assert float(metrics["lr"]) == pytest.approx(lr)


def test_logged_lr_is_the_rate_of_the_applied_update_around_a_skipped_step():
    """With a constant gradient every Adam update is ``-lr_k * sign(g)`` (m_hat / sqrt(v_hat)
    = sign(g)), so each parameter change reads off the rate that was applied. A skipped
    step does not advance the schedule: warm-up over 5 updates gives, per step,
    1/5, 2/5, 3/5, (skipped), 4/5, 5/5 of lr."""
    lr = 0.1
    setup = _toy_setup(warmup_steps=5, schedule="constant", lr=lr)
    g = jnp.asarray([0.5, -2.0, 1.0])
    state = _toy_state(setup, np.zeros(3))
    expected = np.array([1, 2, 3, 4, 4, 5]) / 5 * lr
    for i, loss in enumerate([1.0, 1.0, 1.0, np.nan, 1.0, 1.0]):
        before = np.asarray(state.params["w"])
        state, metrics = train.apply_gradients(setup, state, jnp.float32(loss), {"w": g})
        applied = -(np.asarray(state.params["w"]) - before) / np.sign(np.asarray(g))
        skipped = bool(metrics["skipped"])
        assert skipped == (i == 3)
        np.testing.assert_allclose(applied, 0.0 if skipped else expected[i], rtol=1e-5)
        assert float(metrics["lr"]) == pytest.approx(expected[i], rel=1e-6)
    assert int(state.nonfinite_count) == 1 and int(state.step) == 6


@pytest.mark.parametrize("loop", ["scan", "unroll"])
def test_two_accumulated_micro_batches_of_64_give_the_update_of_one_batch_of_128(tmp_path, loop):
    """No batch statistics and no dropout: the loss is a mean over rows, so its gradient on
    128 rows is the mean of the gradients on two halves with the same draws, whether the
    micro-batches run as a loop or unrolled (CPU's default)."""
    config = helpers.tiny_config(str(tmp_path), **{"data.batch_size": 128})
    one = train.build(config)
    two = dataclasses.replace(one, grad_accum_steps=2, grad_accum_loop=loop)
    x, labels = data.load_arrays("moons", "train", str(tmp_path), limit=128)
    batch = {"x": jnp.asarray(x), "cond": {"label": jnp.asarray(labels)}}
    results = {}
    for name, setup in (("one", one), ("two", two)):
        state = train.init_state(setup, config.seed)
        step = jax.jit(train.make_train_step(setup))
        losses = []
        for _ in range(2):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        results[name] = (state, losses)
    np.testing.assert_allclose(results["two"][1], results["one"][1], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(results["two"][0].params),
                    jax.tree_util.tree_leaves(results["one"][0].params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # One micro-batch alone is a different update: the test can tell them apart.
    half = {"x": batch["x"][:64], "cond": {"label": batch["cond"]["label"][:64]}}
    state, _ = jax.jit(train.make_train_step(one))(train.init_state(one, config.seed), half)
    first = jax.tree_util.tree_leaves(results["one"][0].params)[0]
    assert not np.allclose(jax.tree_util.tree_leaves(state.params)[0], first, atol=1e-6)


def test_grad_accum_that_does_not_divide_the_batch_is_refused(tmp_path):
    config = helpers.tiny_config(str(tmp_path), **{"optim.grad_accum_steps": 3})
    setup = train.build(config)
    batch = {"x": jnp.zeros((64, 2)), "cond": {"label": jnp.zeros((64,), jnp.int32)}}
    with pytest.raises(ValueError, match="grad_accum_steps=3 does not divide the 64 rows"):
        train.make_train_step(setup)(train.init_state(setup, 0), batch)


def test_sampler_compiles_once_for_new_parameters_and_splits_rows_over_8_devices(tmp_path):
    data_dir = str(tmp_path)
    out = str(tmp_path / "eight.npz")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               XLA_FLAGS=helpers.EIGHT_DEVICES)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "_train_helpers.py"),
                             "sampler", out, data_dir], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    one = helpers.sample_twice(data_dir)
    _, err = proc.communicate(timeout=900)  # generous: CI shares 2 cores between 2 workers
    assert proc.returncode == 0, err[-3000:]
    eight = np.load(out)
    assert int(one["traces"]) == 1 and int(eight["traces"]) == 1  # new params: no retrace
    assert int(eight["devices"]) == 8  # the rows were split over the 8 devices
    assert not np.allclose(one["a"], one["b"])  # the two parameter sets gave other samples
    for name in ("a", "b"):
        np.testing.assert_allclose(eight[name], one[name], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eight["nll"], one["nll"], rtol=1e-4)  # likelihood split too


def test_sampler_in_micro_batches_equals_each_chunk_sampled_on_its_own(tmp_path):
    """``sampling.micro_batch = 3`` on 7 conditioned rows: chunk j (rows j, j + 3, j + 6 of
    the batch padded to 9 by repeating its first rows) is what the plain sampler draws for
    those 3 rows with the j-th of 3 keys split from the call's key."""
    config = helpers.tiny_config(str(tmp_path), **{"sampling.num_steps": 4})
    setup = train.build(config)
    params = jax.tree_util.tree_map(lambda p: p + 0.05, train.init_state(setup, 0).ema_params)
    labels = np.array([0, 1, 1, 0, 1, 0, 0], np.int32)
    key = jax.random.PRNGKey(7)
    chunked_cfg = ml_collections.ConfigDict(config.sampling.to_dict())
    chunked_cfg.micro_batch = 3
    chunked = np.asarray(train.Sampler(setup, chunked_cfg, 7)(params, key, labels))
    assert chunked.shape == (7, 2)
    plain = train.Sampler(setup, config.sampling, 3)
    padded = np.concatenate([labels, labels[:2]])
    expected = np.zeros((9, 2), np.float32)
    for j, key_j in enumerate(jax.random.split(key, 3)):
        expected[j::3] = np.asarray(plain(params, key_j, padded[j::3]))
    np.testing.assert_allclose(chunked, expected[:7], rtol=1e-5, atol=1e-6)
    # The chunks are not one draw: the unchunked sampler gives other rows.
    whole = np.asarray(train.Sampler(setup, config.sampling, 7)(params, key, labels))
    assert not np.allclose(whole, chunked, atol=1e-3)


def test_evaluation_during_training_builds_its_sampler_once(tmp_path):
    config = helpers.tiny_config(str(tmp_path), **{
        "eval.metrics": "sliced_wasserstein", "eval.num_samples": 64, "eval.batch_size": 32,
        "sampling.num_samples": 64, "sampling.num_steps": 4})
    setup = train.build(config)
    evaluator = train.Evaluator(setup, config)
    params = train.init_state(setup, 0).ema_params
    first = evaluator(params, str(tmp_path / "run"), "step_1")
    shifted = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    second = evaluator(shifted, str(tmp_path / "run"), "step_2")
    assert evaluator.sampler.traces == 1  # two evaluations, four batches, one compile
    assert first["sliced_wasserstein"] != second["sliced_wasserstein"]
    assert os.path.exists(evaluator.last_outputs[0]) and "step_2" in evaluator.last_outputs[0]
    assert first["sliced_wasserstein_floor"] == second["sliced_wasserstein_floor"]


def test_model_sigma_data_is_the_one_data_scale_of_preconditioning_and_weighting(tmp_path):
    config = helpers.tiny_config(str(tmp_path), **{"model.sigma_data": 0.7})
    configs_lib.apply_recipe(config, "edm")
    setup = train.build(config)
    assert setup.denoiser.sigma_data == setup.objective.sigma_data == 0.7
    # The edm weighting on the x0 error reads it: (s^2 + sd^2) / (s sd)^2 at s = 1.
    t = setup.denoiser.path.t_from_logsnr(jnp.zeros(1))
    assert float(setup.objective.loss_weight(t)[0]) == pytest.approx((1 + 0.49) / 0.49, rel=1e-4)
    # A config stored before the keys merged may hold loss.sigma_data: equal is fine, a
    # mismatch is refused.
    with config.unlocked():
        config.loss.sigma_data = 0.7
    assert train.build(config).objective.sigma_data == 0.7
    config.loss.sigma_data = 0.5
    with pytest.raises(ValueError, match="config.loss.sigma_data=0.5 differs from "
                                         "config.model.sigma_data=0.7"):
        train.build(config)


def test_pmap_puts_the_state_on_the_devices_once_not_every_step(tmp_path, monkeypatch):
    """The pmap backend keeps the state on the devices between steps: it is broadcast at the
    start and fetched back only to checkpoint (a re-broadcast per step copies the whole state
    every step)."""
    from diffjax.training import backends

    calls = {"put_state": 0, "step": 0}
    original = backends._pmap

    def counting(*args, **kwargs):
        compiled = original(*args, **kwargs)

        def put_state(tree):
            calls["put_state"] += 1
            return compiled.put_state(tree)

        def step(*a):
            calls["step"] += 1
            return compiled.step(*a)

        return dataclasses.replace(compiled, put_state=put_state, step=step)

    monkeypatch.setattr(backends, "_pmap", counting)
    config = helpers.tiny_config(str(tmp_path), **{"parallel.backend": "pmap",
                                                   "training.num_steps": 12,
                                                   "training.checkpoint_every": 100})
    train.train(config, str(tmp_path / "run"))
    assert calls["step"] == 12
    assert calls["put_state"] == 1
