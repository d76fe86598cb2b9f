"""The few-step methods train as tasks of the one trainer, resume exactly and refuse a
teacher that does not fit (diffjax.distill with diffjax.training)."""
import json
import os

import jax
import numpy as np
import pytest

import _train_helpers as helpers

from diffjax import analytic, train
from diffjax.distill import settings
from diffjax.distill import teacher as teacher_lib
from diffjax.training import frozen

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# task -> (path, model.target, teacher)
METHODS = {
    "progressive": ("vp_cosine", "v", "analytic:ring"),
    "consistency_distillation": ("edm", "x0", "analytic:ring"),
    "consistency_training": ("edm", "x0", None),
    "reflow": ("rectified_flow", "velocity", "analytic:ring"),
    "shortcut": ("rectified_flow", "velocity", None),
    "meanflow": ("rectified_flow", "velocity", "analytic:ring"),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def _config(data_dir, task, num_steps=2):
    path, target, teacher = METHODS[task]
    config = helpers.tiny_config(data_dir, **{
        "data.dataset": "ring", "model.class_conditional": False, "loss.label_dropout": 0.0,
        "training.num_steps": num_steps, "training.checkpoint_every": 2})
    config.task = task
    config.path.name = path
    config.model.target = target
    config.model.preconditioning = "none"
    config.distill = settings.default_config()
    config.distill.teacher = teacher
    config.distill.num_couplings = 128
    config.distill.ode_steps = 4
    config.distill.couplings_cache = os.path.join(data_dir, "couplings")  # not ~/.cache
    return config


@pytest.mark.parametrize("task", sorted(METHODS))
def test_every_method_trains_with_finite_loss_and_records_its_teacher(data_dir, tmp_path, task):
    train.train(_config(data_dir, task), str(tmp_path))
    losses = helpers.losses(str(tmp_path))
    assert len(losses) == 2 and np.all(np.isfinite(losses)) and np.all(losses > 0)
    with open(os.path.join(tmp_path, frozen.REFERENCES_FILE)) as f:
        recorded = json.load(f)
    teacher = METHODS[task][2]
    assert list(recorded) == ([teacher_lib.TEACHER_KEY] if teacher else [])


@pytest.mark.parametrize("task", sorted(METHODS))
def test_every_method_resumes_to_the_straight_runs_losses(data_dir, tmp_path, task):
    """2 steps, then 2 more from the checkpoint: the losses of 4 steps in one go, exactly
    (the task's draws, its teacher and, for consistency training, its curriculum)."""
    train.train(_config(data_dir, task, num_steps=4), str(tmp_path / "straight"))
    train.train(_config(data_dir, task, num_steps=2), str(tmp_path / "resumed"))
    train.train(_config(data_dir, task, num_steps=4), str(tmp_path / "resumed"))
    np.testing.assert_array_equal(helpers.losses(str(tmp_path / "resumed")),
                                  helpers.losses(str(tmp_path / "straight")))


@pytest.fixture(scope="module")
def vp_linear_run(data_dir, tmp_path_factory) -> str:
    """A 2-step denoising run on the ring with the vp_linear path: a teacher no student's
    path matches."""
    config = _config(data_dir, "reflow")
    config.task = "denoise"
    config.path.name = "vp_linear"
    config.model.target = "eps"
    workdir = str(tmp_path_factory.mktemp("vp_linear_teacher"))
    train.train(config, workdir)
    return workdir


@pytest.mark.parametrize("task", sorted(t for t, m in METHODS.items() if m[2]))
def test_a_run_teacher_of_another_path_is_refused(data_dir, tmp_path, vp_linear_run, task):
    """A run's x0_hat is a statement about its own path's marginals: every method with a
    teacher refuses one of another path, naming both, before a step is saved."""
    config = _config(data_dir, task)
    config.distill.teacher = vp_linear_run
    with pytest.raises(ValueError,
                       match=r"trained on path VPLinear.*the student.s is .*the same config.path"):
        train.train(config, str(tmp_path))
    saved = os.path.join(tmp_path, "checkpoints")
    assert not os.path.exists(saved) or not os.listdir(saved)


def test_a_teacher_of_another_data_shape_is_refused(data_dir, tmp_path, monkeypatch):
    three_d = analytic.GaussianMixture([1.0], np.zeros((1, 3)), np.eye(3)[None])
    monkeypatch.setitem(teacher_lib.MIXTURES, "three_d", lambda: three_d)
    config = _config(data_dir, "reflow")
    config.distill.teacher = "analytic:three_d"
    with pytest.raises(ValueError, match=r"data shape \(3,\).*\(2,\)"):
        train.train(config, str(tmp_path))


def test_a_teacher_workdir_without_checkpoint_is_refused(data_dir, tmp_path):
    config = _config(data_dir, "progressive")
    config.distill.teacher = str(tmp_path / "empty")
    os.makedirs(config.distill.teacher)
    with pytest.raises(Exception, match="no run|no checkpoint"):
        train.train(config, str(tmp_path / "student"))


def test_resuming_against_a_changed_teacher_is_refused(data_dir, tmp_path, monkeypatch):
    train.train(_config(data_dir, "reflow"), str(tmp_path))
    monkeypatch.setitem(teacher_lib.MIXTURES, "ring",
                        lambda: analytic.GaussianMixture.ring(std=0.2))
    config = _config(data_dir, "reflow", num_steps=4)
    with pytest.raises(frozen.ReferenceChangedError, match="distill.teacher"):
        train.train(config, str(tmp_path))


def test_a_progressive_schedule_that_does_not_halve_fails_before_training(data_dir, tmp_path):
    config = _config(data_dir, "progressive")
    config.distill.steps = (8, 4, 3)
    with pytest.raises(ValueError, match="must halve"):
        train.train(config, str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_progressive_round_two_starts_from_its_teacher_run(data_dir, tmp_path):
    from diffjax.distill import progressive
    round1 = _config(data_dir, "progressive")
    round1.distill.steps, round1.distill.round = (4, 2, 1), 1
    train.train(round1, str(tmp_path / "round1"))
    round2 = _config(data_dir, "progressive")
    round2.distill.steps, round2.distill.round = (4, 2, 1), 2
    round2.distill.teacher = str(tmp_path / "round1")
    refs = frozen.load_all({teacher_lib.TEACHER_KEY: round2.distill.teacher})
    from diffjax.training.setup import build
    from diffjax.training.state import init_state
    fresh = init_state(build(round2), round2.seed)
    started = progressive._initialize(fresh, refs)
    teacher_params = refs[teacher_lib.TEACHER_KEY].params
    for a, b in zip(jax.tree_util.tree_leaves(started.params),
                    jax.tree_util.tree_leaves(teacher_params)):
        np.testing.assert_array_equal(a, b)
    train.train(round2, str(tmp_path / "round2"))      # the teacher's buffers are not donated
    assert np.all(np.isfinite(helpers.losses(str(tmp_path / "round2"))))


def test_progressive_student_samples_on_its_own_grid(data_dir):
    """The run's sampler (``--mode=eval``/``sample``) at ``ddim`` with ``n`` steps gives a
    progressive student the ``n`` steps it trained on: DDIM from ``t_max i/n`` to
    ``t_max (i-1)/n``, then ``x0_hat`` at ``t_max/n`` -- the samples of ``diffjax.sample``
    on that grid written out (Salimans & Ho, Alg. 2); a grid the user sets wins."""
    from diffjax import paths, sample

    config = _config(data_dir, "progressive")
    config.sampling.sampler, config.sampling.num_steps = "ddim", 4
    setup = train.build(config)
    # The network's last layer starts at zero; shifted weights give a non-trivial model.
    params = jax.tree_util.tree_map(lambda p: p + 0.05, train.init_state(setup, 0).ema_params)
    key = jax.random.PRNGKey(3)
    got = np.asarray(train.Sampler(setup, config.sampling, 16)(params, key))

    def direct(**grid):
        return np.asarray(sample(setup.denoiser.fn, setup.denoiser.path,
                                 (16, *setup.data_info.shape), key, params=params,
                                 target=setup.denoiser.target, sampler="ddim", num_steps=4,
                                 **grid))

    t_max = paths.get("vp_cosine").t_max
    student = direct(grid=t_max * np.arange(4, 0, -1) / 4, denoise_to_zero=True)
    np.testing.assert_allclose(got, student, rtol=2e-5)
    assert np.max(np.abs(got - direct())) > 1e-2   # the sampler's own grid is another one
    config.sampling.grid = "logsnr"
    chosen = np.asarray(train.Sampler(setup, config.sampling, 16)(params, key))
    np.testing.assert_allclose(chosen, direct(grid="logsnr"), rtol=2e-5)


def test_reflow_from_a_run_teacher_starts_as_that_teacher_unless_told_not_to(data_dir, tmp_path):
    """Liu et al.'s k-rectified flow starts from the (k-1)-th: a reflow run whose teacher is a
    run of the same network begins with the teacher's parameters (its EMA too);
    ``init_from_teacher=False`` keeps the seed's fresh ones; anything but a bool is refused."""
    from diffjax.training import tasks
    from diffjax.training.setup import build
    from diffjax.training.state import init_state
    train.train(_config(data_dir, "reflow"), str(tmp_path / "first"))       # 1 -> 2-rectified
    second = _config(data_dir, "reflow")
    second.distill.teacher = str(tmp_path / "first")
    refs = frozen.load_all({teacher_lib.TEACHER_KEY: second.distill.teacher})
    teacher_params = refs[teacher_lib.TEACHER_KEY].params
    fresh = init_state(build(second), second.seed)
    started = tasks.for_config(second).initialize(fresh, refs)
    for tree in (started.params, started.ema_params):
        for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(teacher_params)):
            np.testing.assert_array_equal(a, b)
    second.distill.init_from_teacher = False
    kept = tasks.for_config(second).initialize(fresh, refs)
    for a, b in zip(jax.tree_util.tree_leaves(kept.params), jax.tree_util.tree_leaves(fresh.params)):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(fresh.params), jax.tree_util.tree_leaves(teacher_params)))
    second.distill.init_from_teacher = True
    train.train(second, str(tmp_path / "second"))   # the teacher's buffers are not donated
    assert np.all(np.isfinite(helpers.losses(str(tmp_path / "second"))))
    with open(os.path.join(tmp_path, "second", frozen.REFERENCES_FILE)) as f:
        assert list(json.load(f)) == [teacher_lib.TEACHER_KEY]
    with second.unlocked():   # the typed default refuses a str; a hand-built config may not
        del second.distill["init_from_teacher"]
        second.distill.init_from_teacher = "yes"
    with pytest.raises(ValueError, match="init_from_teacher='yes'"):
        train.train(second, str(tmp_path / "third"))
    assert not os.path.exists(os.path.join(tmp_path, "third", "checkpoints"))


def test_reflow_init_from_starts_from_that_run_and_refuses_what_cannot_start(data_dir, tmp_path):
    """``config.distill.init_from``: the student starts from that run's parameters (here with
    the exact mixture as teacher, whose couplings it keeps), recorded beside the teacher; a run
    of another network, the exact mixture, a task that does not start from a run and
    ``init_from_teacher=False`` are refused before any training."""
    import dataclasses
    from diffjax.training import tasks
    from diffjax.training.setup import build
    from diffjax.training.state import init_state
    train.train(_config(data_dir, "reflow"), str(tmp_path / "first"))
    tuned = _config(data_dir, "reflow")
    tuned.distill.init_from = str(tmp_path / "first")
    tuned.distill.reflow_steps = 2
    refs = frozen.load_all(tasks.for_config(tuned).references(tuned))
    assert sorted(refs) == [teacher_lib.INIT_KEY, teacher_lib.TEACHER_KEY]
    start = refs[teacher_lib.INIT_KEY].params
    fresh = init_state(build(tuned), tuned.seed)
    started = tasks.for_config(tuned).initialize(fresh, refs)
    for tree in (started.params, started.ema_params):
        for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(start)):
            np.testing.assert_array_equal(a, b)
    train.train(tuned, str(tmp_path / "tuned"))
    assert np.all(np.isfinite(helpers.losses(str(tmp_path / "tuned"))))
    with open(os.path.join(tmp_path, "tuned", frozen.REFERENCES_FILE)) as f:
        assert sorted(json.load(f)) == [teacher_lib.INIT_KEY, teacher_lib.TEACHER_KEY]
    other = dict(refs, **{teacher_lib.INIT_KEY: dataclasses.replace(
        refs[teacher_lib.INIT_KEY], params=jax.tree_util.tree_map(lambda p: p[..., :1], start))})
    with pytest.raises(ValueError, match="another network"):
        tasks.for_config(tuned).initialize(fresh, other)
    bad = [("init_from", "analytic:ring", {}, "has no network"),
           ("reflow_steps", -1, {}, "reflow_steps=-1"),
           ("init_from_teacher", False, {}, "unset one of them"),
           ("init_from", str(tmp_path / "first"), {"task": "meanflow"}, "does not start")]
    for i, (key, value, top, match) in enumerate(bad):
        config = _config(data_dir, "reflow")
        config.distill.init_from = str(tmp_path / "first")
        config.distill[key] = value
        for k, v in top.items():
            config[k] = v
        with pytest.raises(ValueError, match=match):
            train.train(config, str(tmp_path / f"bad{i}"))
        assert not os.path.exists(os.path.join(tmp_path, f"bad{i}", "checkpoints"))


def test_reflow_couplings_reach_the_step_as_arguments_not_constants(data_dir):
    """The coupling set is data: the traced loss holds no constant of its size, and the
    couplings it reads are the teacher ODE's (same seed -> same pairs as reflow.couplings)."""
    from diffjax.distill import reflow
    from diffjax.training import tasks
    from diffjax.training.setup import build
    from diffjax.training.state import init_state
    config = _config(data_dir, "reflow")
    setup = build(config)
    refs = frozen.load_all(tasks.get("reflow").references(config))
    task = tasks.get("reflow").build(setup, refs)
    pairs = task.frozen_arrays[reflow.COUPLINGS_KEY]
    assert pairs["eps"].shape == pairs["x0"].shape == (128, 2)
    batch = {"x": np.zeros((8, 2), np.float32), "cond": {}}
    jaxpr = jax.make_jaxpr(task.loss)(init_state(setup, 0).params, batch,
                                      jax.random.PRNGKey(0), {**task.frozen_arrays})
    assert all(np.size(c) < 128 * 2 for c in jaxpr.consts)
    eps = jax.random.normal(jax.random.PRNGKey(config.distill.coupling_seed), (128, 2))
    np.testing.assert_array_equal(pairs["eps"], eps)


def test_reflow_couplings_are_solved_once_and_read_back_by_content(data_dir, tmp_path,
                                                                   monkeypatch):
    """A second reflow build with the same teacher, seed, n and ODE steps reads the stored set
    (the teacher's ODE is not solved again) and gets the first build's pairs exactly; another
    seed is solved anew; an unreadable stored set is solved and replaced; "off" stores
    nothing."""
    from diffjax.distill import reflow
    from diffjax.training import tasks
    from diffjax.training.setup import build

    def pairs(config):
        refs = frozen.load_all(tasks.get("reflow").references(config))
        return tasks.get("reflow").build(build(config), refs).frozen_arrays[reflow.COUPLINGS_KEY]

    config = _config(data_dir, "reflow")
    config.distill.couplings_cache = str(tmp_path / "cache")
    config.distill.coupling_seed = 7
    first = pairs(config)
    (stored,) = os.listdir(tmp_path / "cache")
    solve = reflow.couplings

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher's ODE was solved again")

    monkeypatch.setattr(reflow, "couplings", refuse)
    again = pairs(config)
    for name in ("eps", "x0"):
        np.testing.assert_array_equal(again[name], first[name])
    config.distill.coupling_seed = 8
    with pytest.raises(AssertionError, match="solved again"):
        pairs(config)
    monkeypatch.setattr(reflow, "couplings", solve)
    with open(tmp_path / "cache" / stored, "r+b") as f:   # a truncated set
        f.truncate(100)
    config.distill.coupling_seed = 7
    np.testing.assert_array_equal(pairs(config)["x0"], first["x0"])
    assert os.listdir(tmp_path / "cache") == [stored]   # replaced in place, no temporary left
    monkeypatch.setattr(reflow, "couplings", refuse)
    np.testing.assert_array_equal(pairs(config)["x0"], first["x0"])   # readable again
    config.distill.couplings_cache = "off"
    config.distill.coupling_seed = 9
    monkeypatch.setattr(reflow, "couplings", solve)
    pairs(config)
    assert os.listdir(tmp_path / "cache") == [stored]   # "off" stored nothing
