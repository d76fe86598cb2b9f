"""Editing inputs and control adherence metrics.

Ground truth: the known pixels themselves (inpainting must return them exactly, for every
sampler), plain sampling from noise (SDEdit at strength 1), the input image (strength -> 0),
hand-computed F1 / IoU values, and hand-made PNGs for the refusals.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from diffjax import paths, sample
from diffjax.controlnet import editing, maps, settings
from diffjax.errors import ConfigError
from diffjax.evaluate import control, metrics
from diffjax.samplers.registry import SAMPLERS

SHAPE = (2, 4, 4, 1)


def _fn(params, x, t, cond):
    del t, cond
    return params["w"] * x  # a cheap stand-in for a network: a linear velocity field


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    init = rng.uniform(-1, 1, SHAPE[1:]).astype(np.float32)
    mask = (rng.random(SHAPE[1:]) < 0.5).astype(np.float32)
    return init, mask


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "adaptive"])
def test_inpainting_keeps_the_known_pixels_exactly(sampler, inputs):
    init, mask = inputs
    path = paths.get("vp_linear")
    x = editing.edit_samples(_fn, path, SHAPE, jax.random.PRNGKey(0), params={"w": -0.5},
                             target="eps", sampler=sampler, num_steps=6, init=init, mask=mask,
                             **({"steps_per_level": 2} if sampler == "langevin" else {}))
    x = np.asarray(x)
    known = np.broadcast_to(mask, SHAPE) > 0
    np.testing.assert_array_equal(x[known], np.broadcast_to(init, SHAPE)[known])
    assert np.all(np.isfinite(x)) and not np.allclose(x[~known], np.broadcast_to(init, SHAPE)[~known])


def test_sdedit_at_strength_one_is_sampling_from_noise_and_near_zero_the_input(inputs):
    init, _ = inputs
    path = paths.get("rectified_flow")
    kw = dict(params={"w": 0.3}, target="velocity", sampler="euler", num_steps=4)
    key = jax.random.PRNGKey(3)
    edited = editing.edit_samples(_fn, path, SHAPE, key, init=init, strength=1.0, **kw)
    plain = sample(_fn, path, SHAPE, key, **kw)
    np.testing.assert_array_equal(np.asarray(edited), np.asarray(plain))
    # At strength s the start is (1 - s) x + s eps and the flow moves it by O(s).
    near = editing.edit_samples(_fn, path, SHAPE, key, init=init, strength=1e-4, **kw)
    np.testing.assert_allclose(np.asarray(near), np.broadcast_to(init, SHAPE), atol=2e-3)


def test_one_input_per_row_edits_each_row_from_its_own_image(inputs):
    """A batch of inputs (experiments/editing.py): row i keeps the known pixels of image i,
    and SDEdit near strength 0 returns each row's own image."""
    _, mask = inputs
    init = np.random.default_rng(1).uniform(-1, 1, SHAPE).astype(np.float32)
    kw = dict(params={"w": -0.5}, target="eps", sampler="ddim", num_steps=4)
    x = np.asarray(editing.edit_samples(_fn, paths.get("vp_linear"), SHAPE,
                                        jax.random.PRNGKey(0), init=init, mask=mask, **kw))
    known = np.broadcast_to(mask, SHAPE) > 0
    np.testing.assert_array_equal(x[known], init[known])
    near = editing.edit_samples(_fn, paths.get("rectified_flow"), SHAPE, jax.random.PRNGKey(3),
                                init=init, strength=1e-4, params={"w": 0.3}, target="velocity",
                                sampler="euler", num_steps=4)
    np.testing.assert_allclose(np.asarray(near), init, atol=2e-3)


def _png(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return str(path)


def _config(tmp_path, task="controlnet", **sampling):
    config = ml_collections.ConfigDict({"task": task, "controlnet": settings.default_config(),
                                        "sampling": {"strength": 0.5, "control": None,
                                                     "control_from": None, "init_image": None,
                                                     "mask": None}})
    config.sampling.update(sampling)
    return config


def test_bad_editing_inputs_are_one_line_errors_before_compute(tmp_path):
    shape = (8, 8, 3)
    small = _png(tmp_path / "small.png", np.zeros((4, 4, 3)))
    grey_mask = _png(tmp_path / "grey.png", np.full((8, 8), 128))
    edges = np.zeros((8, 8)); edges[2, 2:6] = 255
    edge_png = _png(tmp_path / "edges.png", edges)
    image = _png(tmp_path / "image.png", np.full((8, 8, 3), 60))
    cases = [
        (dict(init_image=small), r"init_image=.*small.png' is 4x4; the model makes 8x8"),
        (dict(init_image=image, mask=grey_mask), r"mask=.*grey.png' is not binary"),
        (dict(init_image=image, strength=0.0), r"strength=0.0 must be in \(0, 1\]"),
        (dict(init_image=image, strength=1.2), r"strength=1.2 must be in \(0, 1\]"),
        (dict(control=image), r"control=.*image.png' is not a edges map"),
        (dict(control=small), r"control=.*small.png' is 4x4"),
    ]
    for sampling, match in cases:
        with pytest.raises(ConfigError, match=match):
            editing.read_inputs(_config(tmp_path, **sampling), shape)
    with pytest.raises(ConfigError, match=r"has no ControlNet"):
        editing.read_inputs(_config(tmp_path, task="denoise", control=edge_png), shape)
    got = editing.read_inputs(_config(tmp_path, control=edge_png), shape)["control"]
    np.testing.assert_array_equal(got[..., 0], np.where(edges > 0, 1.0, -1.0))


def test_control_f1_matches_a_hand_computed_value():
    requested = np.zeros((2, 8, 8), bool)
    requested[:, 2, 1:5] = True                 # a 4-pixel line in both images
    found = np.zeros((2, 8, 8), bool)
    found[0, 3, 1:5] = True                     # one pixel off: within the tolerance
    found[0, 7, 7] = True                       # plus a stray pixel
    found[1, 5, 1:5] = True                     # three pixels off: all wrong
    # Image 0: precision 4/5, recall 4/4 -> F1 = 2 * 0.8 / 1.8 = 8/9; image 1: 0.
    np.testing.assert_allclose(control.edge_f1(requested, found), [8 / 9, 0.0])
    np.testing.assert_allclose(control.edge_f1(requested, found, tolerance=0), [0.0, 0.0])
    a = np.zeros((1, 4, 4), bool); a[0, :2] = True
    b = np.zeros((1, 4, 4), bool); b[0, 1:3] = True
    np.testing.assert_allclose(control.mask_iou(a, b), [4 / 12])


def test_control_metrics_score_an_image_against_its_own_map_as_perfect():
    image = np.full((2, 8, 8, 3), -0.6, np.float32)
    image[:, 2:6, 1:5] = (0.9, -0.8, -0.8)
    edges = maps.from_images("edges", image)
    blank = np.full_like(image, -0.6)
    got = control.evaluate_control("control_f1", image, edges, real_images=image,
                                   uncontrolled=blank)
    assert got == {"control_f1": 1.0, "control_f1_real": 1.0, "control_f1_uncontrolled": 0.0}
    seg = maps.from_images("segmentation", image)
    assert control.evaluate_control("control_iou", image, seg)["control_iou"] == 1.0
    assert set(metrics.METRICS["control_f1"].reports) == set(got)
