"""Tests for the `shapes` evaluator: detector decoding, the GenEval-style score, the metrics.

Ground truth: the scene arrays of rendered test images and the exact chance level (true
scenes against shuffled captions). The full-size detector takes minutes to train, so the
ceiling here is that of a small, quickly trained one with a weaker bound; the full
measurement is experiments/shapes_eval_ceiling.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from diffjax.data import shapes
from diffjax.data import shapes_captions as sc
from diffjax.evaluate import metrics, shapes_detector, shapes_eval

TINY = {"num_chunks": 2, "steps": 600}  # 0.9975 on the chunk below; 30-200 s on 2 shared cores


@pytest.fixture(scope="module")
def test_chunk() -> dict[str, np.ndarray]:
    chunk = shapes.generate_chunk("test", 0, 32)
    return {**chunk, "x": chunk["image"].astype(np.float32) / 127.5 - 1.0}


@pytest.fixture(scope="module")
def detector(tmp_path_factory, optimized_xla) -> shapes_detector.Detector:
    with optimized_xla():
        return shapes_detector.load_or_train(str(tmp_path_factory.mktemp("eval")), **TINY)


def _perfect_head(scene: dict[str, np.ndarray]) -> np.ndarray:
    """The head output of a detector that reads every target exactly."""
    t = shapes_detector.targets(scene)

    def one_hot(v, n):
        return 8.0 * np.eye(n)[v]

    lo, hi = shapes_detector.OFFSET_RANGE
    offset = (t["offset"] - lo) / (hi - lo)
    return np.concatenate([
        np.where(t["obj"] > 0, 8.0, -8.0)[..., None],
        one_hot(t["shape"], len(shapes.SHAPES)), one_hot(t["colour"], len(shapes.COLOURS)),
        one_hot(t["size"], len(shapes.SIZES)), np.log(offset / (1 - offset))], axis=-1)


def test_decoding_perfect_head_outputs_recovers_every_scene(test_chunk):
    found = shapes_detector.decode(_perfect_head(test_chunk))
    np.testing.assert_array_equal(found["count"], test_chunk["count"])
    for i in range(0, 1000, 37):
        n = test_chunk["count"][i]
        truth = sorted(zip(test_chunk["shape"][i, :n], test_chunk["colour"][i, :n],
                           test_chunk["size"][i, :n]))
        got = sorted(zip(found["shape"][i, :n], found["colour"][i, :n], found["size"][i, :n]))
        assert truth == got
    assert np.all(sc.satisfies(sc.parse_batch(test_chunk["caption"]), found))


def test_a_second_detection_of_one_object_across_a_cell_border_is_merged(test_chunk):
    head = _perfect_head(test_chunk)
    g = test_chunk["centre"][:, 0] * shapes_detector.GRID  # object 0, in cells
    i = int(np.flatnonzero((g[:, 0] % 1 > 0.5) & (g[:, 0] < shapes_detector.GRID - 1))[0])
    cx, cy = np.floor(g[i]).astype(int)
    head[i, cy, cx + 1] = head[i, cy, cx]  # the right-hand cell sees the same object ...
    head[i, cy, cx + 1, 0] = 3.0  # ... less surely ...
    head[i, cy, cx + 1, -2] = np.log(1e-3)  # ... at its left border, < 0.5 cells away
    found = shapes_detector.decode(head[i:i + 1])
    assert found["count"][0] == test_chunk["count"][i]
    n = found["count"][0]
    d = np.linalg.norm(found["centre"][0, :n] - test_chunk["centre"][i, 0], axis=-1)
    assert d.min() < 2e-3  # the stronger, exact detection is the one kept


def test_small_detector_ceiling_on_own_captions_and_chance_on_shuffled_ones(detector, test_chunk):
    own = shapes_eval.score(test_chunk["x"], list(test_chunk["caption"]), detector=detector)
    assert own["shapes_eval"] >= 0.97, own
    prompts = sc.parse_batch(test_chunk["caption"])
    perm = np.random.default_rng(1).permutation(1000)
    shuffled = {k: v[perm] for k, v in prompts.items()}
    judged = shapes_eval.score(test_chunk["x"], shuffled, detector=detector)["shapes_eval"]
    exact = shapes_eval.chance(prompts, test_chunk, seed=1)["overall"]
    assert abs(judged - exact) < 0.03, (judged, exact)


def test_fd_shapes_floor_is_far_below_the_distance_to_degraded_images(detector, test_chunk):
    train = shapes.generate_chunk("train", 0, 32)["image"].astype(np.float32) / 127.5 - 1.0
    noisy = test_chunk["x"] + 0.4 * np.random.default_rng(0).standard_normal(train.shape)
    out = shapes_eval.fd_shapes(np.clip(noisy, -1, 1), train, test_chunk["x"],
                                detector=detector)
    assert 0 <= out["fd_shapes_floor"] < 0.2 * out["fd_shapes"], out
    nan = shapes_eval.fd_shapes(np.full_like(train, np.nan), train, test_chunk["x"],
                                detector=detector)
    assert np.isnan(nan["fd_shapes"]) and nan["fd_shapes_floor"] == out["fd_shapes_floor"]


def test_score_reports_every_category_and_refuses_bad_input(detector, test_chunk):
    few = shapes_eval.score(test_chunk["x"][:3], ["a red circle", "two stars", "a square"],
                            detector=detector)
    assert set(few) == {"shapes_eval", *shapes_eval.CATEGORY_KEYS}
    assert np.isnan(few["shapes_eval_position"])
    with pytest.raises(ValueError, match="2 images and 1 prompts"):
        shapes_eval.score(test_chunk["x"][:2], ["a red circle"], detector=detector)
    with pytest.raises(ValueError, match="'crimson'"):
        shapes_eval.score(test_chunk["x"][:1], ["a crimson circle"], detector=detector)
    with pytest.raises(ValueError, match=r"R in \(32, 64\)"):
        shapes_eval.score(np.zeros((1, 28, 28, 3)), ["a red circle"], detector=detector)


def test_metric_registry_refuses_shapes_metrics_without_prompts_or_on_other_data(tmp_path):
    x = np.zeros((4, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="needs prompts"):
        metrics.evaluate_samples(x, metrics=["shapes_eval"], dataset="shapes",
                                 cache_dir=str(tmp_path), data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="fd_shapes.*not to dataset 'digits'"):
        metrics.evaluate_samples(np.zeros((4, 8, 8, 1)), metrics=["fd_shapes"],
                                 dataset="digits", cache_dir=str(tmp_path),
                                 data_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())  # refused before preparing or training anything
