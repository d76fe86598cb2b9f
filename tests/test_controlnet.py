"""ControlNet: a trainable encoder copy beside a frozen base, by reference.

Ground truth: the base run itself (at initialisation the ControlNet must reproduce its output
bit for bit; after training its checkpointed parameters must be byte-identical), the base's
recorded identity (a changed base is refused), and hand-drawn control maps. The base is the
tiny text run on digits with precomputed embeddings that tests/test_t2i.py checks
(tests/_text_base.py, trained once for both).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _text_base
from diffjax import checkpoint, config_validation, configs, data, train
from diffjax.config_validation import ConfigError
from diffjax.controlnet import maps, network, settings, task as cn_task
from diffjax.training import frozen

L, D = _text_base.L, _text_base.D


def _controlnet_config(base_config, base_dir: str, num_steps: int = 2):
    config = base_config.copy_and_resolve_references()
    config.task = "controlnet"
    config.controlnet = settings.default_config()
    config.controlnet.update(base=base_dir, kind="edges", control_dropout=0.25)
    config.training.update(num_steps=num_steps, checkpoint_every=num_steps)
    config.optim.update(lr=1e-2, warmup_steps=0)
    return config


@pytest.fixture(scope="module")
def runs(text_base):
    """The ControlNet trained on the shared tiny text run (tests/_text_base.py)."""
    base_config, base_dir = text_base["config"], text_base["workdir"]
    config = _controlnet_config(base_config, base_dir)
    config_validation.validate(config)
    before = frozen.load(cn_task.BASE_KEY, base_dir)
    cn_dir = os.path.join(text_base["root"], "cn")
    state = train.train(config, cn_dir)
    return dict(root=text_base["root"], base_config=base_config, base_dir=base_dir,
                config=config, cn_dir=cn_dir, state=state, before=before)


def _init(config, reference):
    setup = train.build(config)
    state = jax.jit(lambda: train.init_state(setup, 0))()
    return setup, cn_task._initialize(state, {cn_task.BASE_KEY: reference})


def test_at_initialisation_the_controlnet_is_its_base_bit_for_bit(runs):
    reference = runs["before"]
    setup, state = _init(runs["config"], reference)
    assert network.BASE not in state.params  # the base is not this run's parameter
    base_den = reference.setup.denoiser
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    t = jnp.array([0.1, 0.4, 0.7, 0.95])
    ctx = jax.random.normal(jax.random.PRNGKey(2), (4, L, D))
    cond = {"context": ctx, "context_mask": jnp.ones((4, L), jnp.int32)}
    control = jnp.where(jax.random.bernoulli(jax.random.PRNGKey(3), 0.3, (4, 8, 8, 1)), 1., -1.)
    expected = np.asarray(jax.jit(base_den.fn)(reference.params, x, t, cond))
    full = network.with_base(state.ema_params, reference.params)
    got = np.asarray(jax.jit(setup.denoiser.fn)(full, x, t, {**cond, "control": control}))
    np.testing.assert_array_equal(got, expected)
    assert np.abs(expected).max() > 0  # a trained base: not both trivially zero
    # The trainable copy starts as the base's encoder.
    enc = state.params["encoder"]
    for name in enc:
        jax.tree_util.tree_map(np.testing.assert_array_equal, enc[name], reference.params[name])


def test_training_moves_the_controlnet_and_leaves_the_base_untouched(runs):
    state, before = runs["state"], runs["before"]
    after = frozen.load(cn_task.BASE_KEY, runs["base_dir"])
    assert after.identity == before.identity
    jax.tree_util.tree_map(np.testing.assert_array_equal, after.params, before.params)
    assert network.BASE not in state.params
    # The zero convolutions left zero: the control now changes the output.
    assert float(jnp.abs(state.params["zero_0"]["kernel"]).max()) > 0
    # No checkpoint of the ControlNet run holds the base's parameters.
    names = {jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(state.params)[0]}
    assert not any("'base'" in n for n in names)


def test_resume_rereads_the_base_and_refuses_a_changed_one(runs):
    config = _controlnet_config(runs["base_config"], runs["base_dir"], num_steps=3)
    state = train.train(config, runs["cn_dir"])  # resumes at 2, trains step 3
    assert int(state.step) == 3
    config.training.num_steps = 4
    base_dir = runs["base_dir"]
    # A moved base: refused, naming where it was looked for.
    os.rename(base_dir, base_dir + "_moved")
    try:
        with pytest.raises(checkpoint.WorkdirError, match=f"config.controlnet.base={base_dir}"):
            train.train(config, runs["cn_dir"])
    finally:
        os.rename(base_dir + "_moved", base_dir)
    # A modified base (its config edited in place): its identity changed, refused.
    original = checkpoint.load_config(base_dir)
    edited = original.copy_and_resolve_references()
    edited.sampling.num_steps = 7
    checkpoint.write_config(base_dir, edited)
    try:
        with pytest.raises(frozen.ReferenceChangedError, match=base_dir):
            train.train(config, runs["cn_dir"])
    finally:
        checkpoint.write_config(base_dir, original)


def test_sample_mode_with_control_and_inpainting_keeps_the_known_pixels(runs, tmp_path):
    from PIL import Image

    from diffjax.controlnet import cli

    images, _ = data.load_arrays("digits", "test", runs["config"].data.data_dir, limit=1)
    pixels = np.rint((images[0, ..., 0] + 1) * 127.5).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    config = runs["config"].copy_and_resolve_references()
    config.sampling.update(control_from=str(tmp_path / "digit.png"), samples_per_prompt=2,
                           init_image=str(tmp_path / "digit.png"), mask=str(tmp_path / "mask.png"))
    cli.run(config, str(tmp_path), runs["cn_dir"], None)
    out = np.load(next((tmp_path / "samples").glob("edit_*.npz")))
    known = pixels.astype(np.float32) / 127.5 - 1.0  # as read_image reads the PNG
    np.testing.assert_array_equal(out["x"][:, :, :4, 0], np.broadcast_to(known[:, :4], (2, 8, 4)))
    np.testing.assert_array_equal(out["control"], maps.from_images("edges", known[None, ..., None])[0])
    assert (tmp_path / "samples" / os.path.basename(
        str(next((tmp_path / "samples").glob("edit_*.png"))))).exists()


def test_eval_mode_scores_control_against_the_real_ceiling_and_the_base_itself(runs, tmp_path):
    """``--mode=eval`` of a ControlNet run reads its base: the uncontrolled floor equals
    samples drawn from the base run on its own (same noise, same text), and real images
    follow their own edge maps exactly (F1 1)."""
    import json

    from diffjax import main, sample
    from diffjax.evaluate import control
    from diffjax.training import evaluation

    config = runs["config"].copy_and_resolve_references()
    config.eval.num_samples = 8
    main._eval(config, str(tmp_path), runs["cn_dir"])
    with open(tmp_path / "metrics.jsonl") as f:
        record = [json.loads(line) for line in f][-1]
    assert record["control_f1_real"] == 1.0
    assert 0.0 <= record["control_f1"] <= 1.0

    base = frozen.load(cn_task.BASE_KEY, runs["base_dir"])
    cond, _ = evaluation.eval_conditions(base.setup, 0, 8)
    den = base.setup.denoiser
    x_base = sample(den.fn, den.path, (8, 8, 8, 1), jax.random.PRNGKey(config.sampling.seed),
                    params=base.params, target=den.target, sampler=config.sampling.sampler,
                    num_steps=config.sampling.num_steps, cond=cond,
                    guidance_scale=config.sampling.guidance_scale, nulls=base.setup.nulls)
    controls = maps.records_maps("edges", "digits", "test", config.data.data_dir)[:8]
    floor = control.evaluate_control("control_f1", np.asarray(x_base), controls)["control_f1"]
    assert record["control_f1_uncontrolled"] == pytest.approx(floor, abs=1e-6)


def test_a_base_of_another_architecture_or_resolution_is_refused(runs):
    config = runs["config"].copy_and_resolve_references()
    config.model.ch = 16
    setup = train.build(config)
    with pytest.raises(ValueError, match=r"config.controlnet.base=.*config.model"):
        cn_task.check_base(setup, runs["before"])


def test_batches_carry_the_control_map_of_their_own_image(runs):
    from diffjax.training import loop

    batches = loop.default_batches(runs["config"], 0, 1)
    batch = next(batches)
    control = np.asarray(batch["cond"]["control"])
    assert control.shape == (8, 8, 8, 1)
    np.testing.assert_array_equal(control, maps.from_images("edges", batch["x"]))
    assert {"context", "context_mask"} <= set(batch["cond"])


def test_edges_of_a_drawn_square_are_its_one_pixel_outline():
    image = np.full((1, 8, 8, 3), -0.6, np.float32)
    image[0, 2:6, 1:5] = (0.9, -0.8, -0.8)  # a red 4x4 square on grey
    outline = np.zeros((8, 8), bool)
    outline[2:6, 1:5] = True
    outline[3:5, 2:4] = False
    np.testing.assert_array_equal(maps.edges_from_images(image)[0], outline)
    seg = maps.from_images("segmentation", image)[0, ..., 0]
    np.testing.assert_array_equal(seg == 1.0, outline | np.pad(np.ones((2, 2), bool),
                                                               ((3, 3), (2, 4))))


@pytest.mark.parametrize("changes, match", [
    ({"controlnet.kind": "depth"}, "config.controlnet.kind='depth'"),
    ({"controlnet.control_dropout": 1.0}, "control_dropout"),
    ({"sampling.strength": 0.0}, r"config.sampling.strength=0.0 must be in \(0, 1\]"),
    ({"sampling.strength": 1.5}, "config.sampling.strength=1.5"),
    ({"sampling.mask": "m.png"}, "needs config.sampling.init_image"),
    ({"training.eval_every": 5}, "eval_every=5"),
])
def test_bad_controlnet_settings_are_refused_before_compute(changes, match):
    config = configs.default_config()
    config.task = "controlnet"
    config.controlnet = settings.default_config()
    config.controlnet.base = "/somewhere"
    config.training.eval_every = 0
    for dotted, value in changes.items():
        group, key = dotted.split(".")
        config[group][key] = value
    with pytest.raises(ConfigError, match=match):
        config_validation.validate_static(config)
