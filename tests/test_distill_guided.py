"""Few-step students of a conditional teacher (diffjax.distill): the teacher read under
classifier-free guidance, and reflow couplings that carry each example's condition (labels
from the data, text from the training captions' table)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _train_helpers as helpers

from diffjax import analytic, paths, sample, train
from diffjax.distill import reflow, settings
from diffjax.distill import teacher as teacher_lib
from diffjax.training import frozen, tasks
from diffjax.training.setup import build

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
RF = paths.get("rectified_flow")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def _ring_config(data_dir, **distill):
    """A class-conditional reflow student of the exact (labelled) ring mixture."""
    config = helpers.tiny_config(data_dir, **{
        "data.dataset": "ring", "loss.label_dropout": 0.0, "training.num_steps": 2,
        "training.checkpoint_every": 2})
    config.task = "reflow"
    config.path.name = "rectified_flow"
    config.model.target = "velocity"
    config.model.preconditioning = "none"
    config.distill = settings.default_config()
    config.distill.update(teacher="analytic:ring", num_couplings=96, ode_steps=32,
                          couplings_cache="off", **distill)
    return config


def task_teacher(setup, config):
    return teacher_lib.teacher_of(setup, _references(config))


def _references(config):
    return frozen.load_all(tasks.get(config.task).references(config))


def test_the_guided_teacher_is_the_mixtures_guided_posterior_mean_inside_its_interval(
        data_dir, tmp_path):
    """x0_hat under guidance w on (lo, hi) is x0_u + w (x0_c - x0_u) of the exact mixture
    (x0_u: its unconditional posterior mean), x0_c outside the interval, and x0_u for a row
    whose label is already the null one."""
    config = _ring_config(data_dir, guidance_scale=2.5, guidance_interval=(0.0, 1.0))
    setup = build(config)
    teacher = teacher_lib.teacher_of(setup, _references(config))
    mix = analytic.GaussianMixture.ring()
    t = jnp.asarray([0.2, 0.4, 0.45, 0.6, 0.8, 0.3, 0.7, 0.55])   # sigma/alpha <= 1: t <= 0.5
    label = jnp.asarray([0, 3, 5, 1, 7, 8, 8, 2], jnp.int32)         # 8: the null label
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    got = teacher.x0_hat({}, x, t, {"label": label})
    x0_c, x0_u = mix.x0_hat(RF, x, t, label), mix.x0_hat(RF, x, t, None)
    w = np.where(np.asarray(t) <= 0.5, 2.5, 1.0)[:, None]
    np.testing.assert_allclose(got, x0_u + w * (x0_c - x0_u), atol=1e-5)
    np.testing.assert_allclose(got[5:7], x0_u[5:7], atol=1e-5)
    # every row outside the interval (a coupling solve's batch): the conditional teacher alone
    late = jnp.full((8,), 0.8)
    np.testing.assert_allclose(teacher.x0_hat({}, x, late, {"label": label}),
                               mix.x0_hat(RF, x, late, label), atol=1e-5)
    # a student's own condition the teacher does not read (MeanFlow's end time) passes by
    np.testing.assert_array_equal(teacher.x0_hat({}, x, t, {"label": label, "r": t}), got)
    assert np.abs(np.asarray(x0_c - x0_u)[:5]).max() > 0.05   # the guidance does something


def test_guided_couplings_of_gaussian_teachers_are_the_guided_gaussians_lines():
    """Teachers N(mu_y, s^2 I) per label and N(mu_u, s^2 I) for the null label: their guided
    posterior mean is exactly that of N(mu_u + w (mu_y - mu_u), s^2 I), whose ODE is affine,
    so coupling i is mu_w(label_i) + s eps_i; each row is solved under its own label."""
    mus = jnp.asarray([[1.0, -0.5], [-2.0, 0.3], [0.0, 0.0]])   # labels 0, 1 and null (2)
    s, w = 0.4, 3.0

    def x0_fn(params, x, t, cond):
        mu = mus[cond["label"]]
        a = (1 - t)[:, None]
        gain = a * s**2 / (a**2 * s**2 + t[:, None] ** 2)
        return mu + gain * (x - a * mu)

    teacher = teacher_lib.Teacher(x0_fn, RF, w, None,
                                  lambda c: {"label": jnp.full_like(c["label"], 2)})
    label = np.asarray([0, 1] * 32, np.int32)
    eps, x0 = reflow.couplings(teacher.x0_hat, RF, (64, 2), seed=3, num_steps=64, params={},
                               cond={"label": label}, batch=24)
    mu_w = mus[2] + w * (mus[label] - mus[2])
    np.testing.assert_allclose(x0, mu_w + s * eps, atol=1e-4)


def test_conditional_couplings_match_the_guided_sampler_and_train_a_student(data_dir, tmp_path):
    """A class-conditional reflow student of the exact ring under guidance 2: its couplings'
    labels are the coupling seed's draw over the 8 classes, and each x0 is the guided ODE's
    sample from its noise, as diffjax.sample's Heun solve with classifier-free guidance
    (a second, independent solver and guidance) finds it; the student then trains."""
    config = _ring_config(data_dir, guidance_scale=2.0)
    setup = build(config)
    task = tasks.get("reflow").build(setup, _references(config))
    pairs = task.frozen_arrays[reflow.COUPLINGS_KEY]
    label = np.asarray(pairs["cond"]["label"])
    np.testing.assert_array_equal(label, reflow.coupling_conditions(setup, 96, 0)["label"])
    assert set(label.tolist()) == set(range(8))
    # the sampler's starting noise is its own draw: read it off its trajectory, then solve
    # the task's teacher from it
    model = analytic.GaussianMixture.ring().conditional_model_fn(RF, "velocity")
    heun = dict(target="velocity", sampler="heun", num_steps=200, return_info=True,
                return_trajectory=True,
                cond={"label": jnp.asarray(label)})
    tight, info_g = sample(model, RF, (96, 2), jax.random.PRNGKey(0), **heun,
                           uncond={"label": jnp.full((96,), 8, jnp.int32)}, guidance_scale=2.0)
    start = info_g.trajectory[0]
    _, x0 = reflow.couplings(task_teacher(setup, config).x0_hat, RF, (96, 2), 0, 32,
                             params={}, cond={"label": label}, noise=start)
    np.testing.assert_allclose(x0, tight, atol=2e-2)
    unguided, info_u = sample(model, RF, (96, 2), jax.random.PRNGKey(0), **heun)
    np.testing.assert_array_equal(info_u.trajectory[0], start)
    assert np.abs(np.asarray(x0 - unguided)).max() > 0.2   # guidance mattered
    # the task's own pairs: its seed's noise, solved under each pair's label
    np.testing.assert_array_equal(pairs["eps"], jax.random.normal(jax.random.PRNGKey(0),
                                                                  (96, 2)))
    _, again = reflow.couplings(task_teacher(setup, config).x0_hat, RF, (96, 2), 0, 32,
                                params={}, cond={"label": label})
    np.testing.assert_allclose(pairs["x0"], again, atol=1e-6)
    _, shuffled = reflow.couplings(task_teacher(setup, config).x0_hat, RF, (96, 2), 0, 32,
                                   params={}, cond={"label": np.roll(label, 1)})
    assert np.abs(np.asarray(pairs["x0"] - shuffled)).max() > 0.2
    train.train(config, str(tmp_path / "student"))
    losses = helpers.losses(str(tmp_path / "student"))
    assert len(losses) == 2 and np.all(np.isfinite(losses))


def test_guidance_that_cannot_apply_is_refused_before_training(data_dir, tmp_path):
    bad = [({"guidance_scale": 2.0}, {"model.class_conditional": False},
            "guidance needs a conditional teacher"),
           ({"guidance_scale": 1.0, "guidance_interval": (0.0, 1.0)}, {},
            "guidance_interval=.* needs guidance"),
           ({"guidance_scale": 2.0, "guidance_interval": (1.0, 0.5)}, {},
            r"0 <= lo <= hi"),
           ({"guidance_scale": 2.0, "guidance_interval": (0.5,)}, {}, r"0 <= lo <= hi")]
    for i, (distill, changes, match) in enumerate(bad):
        config = _ring_config(data_dir, **distill)
        for dotted, value in changes.items():
            group, key = dotted.split(".")
            config[group][key] = value
        with pytest.raises(ValueError, match=match):
            train.train(config, str(tmp_path / f"bad{i}"))
        saved = os.path.join(tmp_path, f"bad{i}", "checkpoints")
        assert not os.path.exists(saved) or not os.listdir(saved)   # no step was saved


def test_text_reflow_couplings_carry_training_captions_and_refuse_a_guided_student(
        text_base, tmp_path):
    """On the tiny text run (precomputed embeddings, one per digit): each coupling's condition
    is a row of the training split's table, the teacher's guided ODE is solved under it, the
    student trains; that student, guided already, is refused as a guided teacher."""
    import _text_base

    config = _text_base.config(text_base["data_dir"], text_base["config"].text.embeddings)
    config.task = "reflow"
    config.training.update(num_steps=2, checkpoint_every=2)
    config.sampling.guidance_scale = 1.0
    config.distill = settings.default_config()
    config.distill.update(teacher=text_base["workdir"], num_couplings=24, ode_steps=2,
                          couplings_cache="off", guidance_scale=2.0)
    setup = build(config)
    pairs = tasks.get("reflow").build(setup, _references(config)).frozen_arrays[
        reflow.COUPLINGS_KEY]
    context = np.asarray(pairs["cond"]["context"])
    assert context.shape == (24, _text_base.L, _text_base.D)
    table = text_base["table"]
    match = [int(np.argmin(np.abs(table - c).reshape(10, -1).sum(-1))) for c in context]
    np.testing.assert_allclose(context, table[match], atol=1e-6)   # each a digit's row
    assert len(set(match)) > 3
    workdir = str(tmp_path / "student")
    train.train(config, workdir)
    assert np.all(np.isfinite(helpers.losses(workdir)))
    config.distill.teacher = workdir
    with pytest.raises(ValueError, match="guided at 2.0 already"):
        train.train(config, str(tmp_path / "again"))


def test_shapes_distill_recipes_are_the_t2i_job_with_a_guided_teacher():
    """configs/shapes_distill.py: every recipe of digits_distill, on configs/shapes_t2i.py's
    data and text encoder, valid; a teacher read under the main job's sampling guidance and
    students sampled unguided; the recipes that need a teacher ask for one (no mixture here)."""
    import importlib.util

    from diffjax import config_validation

    def module(name):
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py"))
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        return m

    shapes, t2i = module("shapes_distill"), module("shapes_t2i").get_config()
    for recipe in module("digits_distill").RECIPES:
        config = shapes.get_config(recipe)
        config_validation.validate(config)
        assert config.task == recipe and tasks.get(config.task) is tasks.TASKS[recipe]
        assert (config.data.dataset, config.model.text_encoder) == ("shapes", "minilm")
        assert config.distill.guidance_scale == t2i.sampling.guidance_scale != 1.0
        assert tuple(config.distill.guidance_interval) == tuple(t2i.sampling.guidance_interval)
        assert config.sampling.guidance_scale == 1.0
        if recipe in ("progressive", "consistency_distillation", "reflow"):
            with pytest.raises(ValueError, match="needs config.distill.teacher"):
                tasks.get(recipe).references(config)
        if not recipe.startswith("consistency"):
            assert config.path.name == t2i.path.name   # the teacher's path
    with pytest.raises(ValueError, match="valid recipes: progressive"):
        shapes.get_config("distill")


def test_a_guidance_interval_set_by_the_config_file_can_be_unset_on_the_command_line():
    """ml_collections parses ``--config.x=None`` on a tuple field as ``(None,)``; the
    command line's loader (diffjax.config_loading) makes it None, so a guided config's
    teacher (configs/shapes_distill.py) can be read unguided, and the main job
    (configs/shapes_t2i.py) sampled with guidance at every noise level, from flags alone."""
    from diffjax import config_loading, config_validation

    root = os.path.join(os.path.dirname(__file__), "..", "configs")

    def parsed(spec, *argv):   # the command line's parsing (diffjax.main's --config.* flags)
        return config_loading.load(os.path.join(root, spec), list(argv))

    guided = parsed("shapes_distill.py:progressive")
    assert teacher_lib.guidance_of(guided)[1] is not None
    unguided = parsed("shapes_distill.py:progressive", "--config.distill.guidance_scale=1.0",
                      "--config.distill.guidance_interval=None")
    assert unguided.distill.guidance_interval is None   # ml_collections alone gives (None,)
    assert teacher_lib.guidance_of(unguided) == (1.0, None)
    with pytest.raises(ValueError, match="needs guidance"):
        teacher_lib.guidance_of(parsed("shapes_distill.py:progressive",
                                       "--config.distill.guidance_scale=1.0"))
    everywhere = parsed("shapes_t2i.py", "--config.sampling.guidance_interval=None")
    assert everywhere.sampling.guidance_interval is None
    config_validation.validate(everywhere)   # guided at every noise level
    with pytest.raises(ValueError, match="sigma_lo <= sigma_hi"):
        config_validation.validate(parsed("shapes_t2i.py",
                                          "--config.sampling.guidance_interval=(2.0,1.0)"))
