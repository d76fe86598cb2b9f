"""Tests for diffjax.data: bundled builders, catalogue access, the grain pipeline.

Ground truth comes from scikit-learn's digits and from the documented definitions of the
toy sets, never from the code's own output.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

import diffjax.data as data
from diffjax.data import builders

REPO = Path(__file__).resolve().parents[1]
TOY = ("moons", "swiss_roll", "ring", "checkerboard")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """One prepared cache of the bundled sets these tests read (shapes: test_shapes_data)."""
    path = str(tmp_path_factory.mktemp("tfds"))
    for name in ("digits", *TOY):
        builders.ensure_prepared(name, path)
    return path


def _cfg(data_dir: str, dataset: str, batch_size: int, **kwargs):
    cfg = data.default_config()
    cfg.update(dataset=dataset, batch_size=batch_size, data_dir=data_dir, **kwargs)
    return cfg


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["x"], y["x"])
        np.testing.assert_array_equal(x["cond"]["label"], y["cond"]["label"])


# --------------------------------------------------------------------------- digits

def test_digits_split_is_sklearn_digits_exactly_stratified_one_sixth(data_dir):
    digits = load_digits()
    # Documented scaling: round(v * 255 / 16); floor(. + 1/2) agrees with numpy's
    # half-to-even rounding on the only tie (v = 8 -> 127.5 -> 128).
    expected = np.floor(digits.images * 255 / 16 + 0.5).astype(np.uint8)[..., None]
    truth = {im.tobytes(): int(c) for im, c in zip(expected, digits.target)}
    assert len(truth) == 1797  # every sklearn image is distinct, so bytes identify rows

    seen = {}
    for split in ("train", "test"):
        x, label = builders.bundled_arrays("digits", split, data_dir)
        assert x.dtype == np.uint8 and x.shape[1:] == (8, 8, 1)
        keys = [im.tobytes() for im in x]
        assert all(truth[k] == c for k, c in zip(keys, label))  # KeyError: not sklearn's
        seen[split] = set(keys)
        assert len(seen[split]) == len(keys)

    assert not seen["train"] & seen["test"]
    assert seen["train"] | seen["test"] == set(truth)
    class_sizes = np.bincount(digits.target)
    _, test_label = builders.bundled_arrays("digits", "test", data_dir)
    np.testing.assert_array_equal(np.bincount(test_label, minlength=10), class_sizes // 6)
    d = data.info("digits")
    assert (d.num_train, d.num_test) == (1797 - sum(class_sizes // 6), sum(class_sizes // 6))
    assert (d.kind, d.shape, d.num_classes) == ("image", (8, 8, 1), 10)


def test_load_arrays_scales_0_and_255_exactly_to_minus_one_and_one(data_dir):
    raw, raw_label = builders.bundled_arrays("digits", "train", data_dir)
    x, label = data.load_arrays("digits", "train", data_dir)
    assert x.dtype == np.float32 and label.dtype == np.int32 and x.shape == raw.shape
    assert (x[raw == 0] == -1.0).all() and (x[raw == 255] == 1.0).all()
    assert (raw == 255).any()
    np.testing.assert_allclose(x, raw / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(label, raw_label)
    x10, label10 = data.load_arrays("digits", "train", data_dir, limit=10)
    np.testing.assert_array_equal(x10, x[:10])
    np.testing.assert_array_equal(label10, label[:10])


# --------------------------------------------------------------------------- toy 2-D

def _toy(name: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [data.load_arrays(name, split, data_dir) for split in ("train", "test")]
    assert [len(p[0]) for p in parts] == [20000, 5000]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_moons_lie_on_their_half_circles(data_dir):
    x, label = _toy("moons", data_dir)
    raw = x / 1.2 + np.array([0.5, 0.25])  # undo the documented normalisation
    tol = 6 * 0.05
    upper, lower = raw[label == 0], raw[label == 1] - np.array([1.0, 0.5])
    for moon in (upper, lower):
        assert np.abs(np.linalg.norm(moon, axis=1) - 1.0).max() < tol
    assert upper[:, 1].min() > -tol and lower[:, 1].max() < tol  # upper / lower halves
    assert abs(label.mean() - 0.5) < 0.02


def test_swiss_roll_points_lie_near_the_spiral(data_dir):
    x, label = _toy("swiss_roll", data_dir)
    raw = 7.0 * x
    # The curve (t cos t, t sin t) is the Archimedean spiral r = unwrapped angle, so a
    # point's radius minus its polar angle is 0 mod 2 pi, up to the noise (std 0.25)
    # along the nearly radial normal.
    radius = np.linalg.norm(raw, axis=1)
    offset = (radius - np.arctan2(raw[:, 1], raw[:, 0]) + np.pi) % (2 * np.pi) - np.pi
    assert np.abs(offset).max() < 6 * 0.25
    assert 0.1 < np.median(np.abs(offset)) < 0.3  # |N(0, 0.25^2)| has median 0.17
    assert radius.min() > 1.5 * np.pi - 1.5 and radius.max() < 4.5 * np.pi + 1.5
    assert (label == 0).all()


def test_ring_points_belong_to_their_labelled_gaussian(data_dir):
    x, label = _toy("ring", data_dir)
    angle = 2 * np.pi * np.arange(8) / 8
    means = np.sqrt(2.0) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    dist = np.linalg.norm(x[:, None, :] - means[None], axis=-1)
    np.testing.assert_array_equal(dist.argmin(axis=1), label)
    assert dist.min(axis=1).max() < 6 * 0.1
    np.testing.assert_allclose((x - means[label]).std(axis=0), 0.1, rtol=0.05)
    np.testing.assert_allclose(np.bincount(label) / len(label), 1 / 8, rtol=0.1)


def test_checkerboard_points_fill_the_black_cells_uniformly(data_dir):
    x, label = _toy("checkerboard", data_dir)
    assert x.min() >= -2.0 and x.max() < 2.0
    cell = np.floor(x).astype(int) + 2
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    black = [(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    np.testing.assert_array_equal(label, [black.index(tuple(c)) for c in cell])
    np.testing.assert_allclose(np.bincount(label) / len(label), 1 / 8, rtol=0.1)
    within = x - np.floor(x)  # uniform in the cell: mean 1/2, variance 1/12
    np.testing.assert_allclose(within.mean(axis=0), 0.5, atol=0.01)
    np.testing.assert_allclose(within.var(axis=0), 1 / 12, rtol=0.05)


@pytest.mark.parametrize("name", TOY)
def test_toy_sets_have_roughly_unit_scale(data_dir, name):
    x, _ = _toy(name, data_dir)
    assert x.dtype == np.float32 and x.shape[1:] == data.info(name).shape == (2,)
    assert (0.5 < x.std(axis=0)).all() and (x.std(axis=0) < 1.2).all()
    assert np.abs(x.mean(axis=0)).max() < 0.5


def test_concurrent_fresh_preparations_are_bit_identical(data_dir, tmp_path):
    """Two new processes prepare one new dir at once (the lock makes that safe)."""
    fresh, names = tmp_path / "fresh", ("digits",)
    script = textwrap.dedent(f"""
        import warnings
        warnings.simplefilter("error")  # a concurrent writer would look like corruption
        from diffjax.data import builders
        for name in {names!r}:
            builders.ensure_prepared(name, {str(fresh)!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-3000:]
    assert list((fresh / ".diffjax" / "incomplete").iterdir()) == []
    for name in names:
        for split in ("train", "test"):
            x0, label0 = builders.bundled_arrays(name, split, data_dir)
            x1, label1 = builders.bundled_arrays(name, split, str(fresh))
            assert x0.tobytes() == x1.tobytes() and label0.tobytes() == label1.tobytes()


@pytest.mark.parametrize("name", TOY)
def test_toy_cache_holds_exactly_a_fresh_generation(data_dir, name):
    for split in ("train", "test"):
        x, label = builders.toy2d_points(name, split)
        stored_x, stored_label = builders.bundled_arrays(name, split, data_dir)
        assert x.tobytes() == stored_x.tobytes()
        np.testing.assert_array_equal(label, stored_label)


def test_info_reads_and_prepares_nothing(tmp_path):
    empty = tmp_path / "nothing"
    for name in data.BUNDLED:
        assert data.info(name, str(empty)).name == name
    mnist = data.info("mnist", str(empty))
    assert (mnist.kind, mnist.shape, mnist.num_classes) == ("image", (28, 28, 1), 10)
    assert not empty.exists()


# --------------------------------------------------------------------------- pipeline

def test_same_seed_same_batches_other_seed_other_batches(data_dir):
    cfg = _cfg(data_dir, "digits", 32, random_flip=True)
    a = _take(data.make_iterator(cfg, seed=7), 5)
    _assert_same_batches(a, _take(data.make_iterator(cfg, seed=7), 5))
    c = _take(data.make_iterator(cfg, seed=8), 5)
    assert not all(np.array_equal(p["x"], q["x"]) for p, q in zip(a, c))
    assert a[0]["x"].shape == (32, 8, 8, 1) and a[0]["x"].dtype == np.float32
    assert a[0]["cond"]["label"].shape == (32,) and a[0]["cond"]["label"].dtype == np.int32


def test_process_shards_are_disjoint_and_cover_the_one_process_epoch(data_dir):
    x_all, _ = data.load_arrays("moons", "test", data_dir)
    keys = lambda batches: [row.tobytes() for b in batches for row in b["x"]]
    assert len(set(keys([{"x": x_all}]))) == 5000

    cfg = _cfg(data_dir, "moons", 100)
    single = keys(data.make_iterator(cfg, split="test", seed=3, num_epochs=1))
    shards = [keys(data.make_iterator(cfg, split="test", seed=3, num_epochs=1,
                                      process_index=p, process_count=2)) for p in range(2)]
    assert len(single) == 5000 and set(single) == set(keys([{"x": x_all}]))
    assert [len(s) for s in shards] == [2500, 2500]
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(single)
    batch = next(data.make_iterator(cfg, seed=3, process_index=1, process_count=2))
    assert batch["x"].shape == (50, 2)


@pytest.mark.parametrize("stop", [7, 45])  # mid-epoch, and just before an epoch ends
def test_restored_iterator_continues_exactly(data_dir, stop):
    cfg = _cfg(data_dir, "digits", 32, random_flip=True)  # 46 batches an epoch
    uninterrupted = _take(data.make_iterator(cfg, seed=11), stop + 5)
    interrupted = data.make_iterator(cfg, seed=11)
    _take(interrupted, stop)
    state = interrupted.get_state()
    assert isinstance(state, bytes) and json.loads(state)
    resumed = data.make_iterator(cfg, seed=11)
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 5), uninterrupted[stop:])


def test_iterator_state_roundtrips_through_orbax_grain_handler(data_dir, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    cfg = _cfg(data_dir, "ring", 64)
    it = data.make_iterator(cfg, seed=0)
    _take(it, 3)
    manager = ocp.CheckpointManager(
        tmp_path / "ckpt", item_names=("data",),
        item_handlers={"data": grain.checkpoint.CheckpointHandler()})
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = _take(it, 4)
    restored = data.make_iterator(cfg, seed=0)
    manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    _assert_same_batches(_take(restored, 4), expected)
    manager.close()


def test_every_epoch_is_a_new_permutation_of_the_split_and_batches_run_across_them(data_dir):
    x_all, _ = data.load_arrays("moons", "test", data_dir)   # 5000 records
    want = sorted(row.tobytes() for row in x_all)
    rows = np.concatenate([b["x"] for b in _take(data.make_iterator(
        _cfg(data_dir, "moons", 300), split="test", seed=2), 34)])  # 10 200 rows: 2.04 epochs
    epochs = [rows[:5000], rows[5000:10000]]
    for epoch in epochs:
        assert sorted(row.tobytes() for row in epoch) == want
    # (So batch 16, rows 4800-5099, ended epoch 0 and began epoch 1: none was dropped.)
    assert not np.array_equal(epochs[0], epochs[1])


def _grain_per_record(cfg, seed: int):
    """grain's per-record DataLoader, built here independently: what make_iterator returned
    for in-memory data before it read whole batches (runs checkpointed then hold its state)."""
    source = data.open_source(cfg.dataset, "train", cfg.data_dir)
    shard = grain.sharding.ShardOptions(shard_index=0, shard_count=1, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=shard, shuffle=True, num_epochs=None, seed=seed)
    to_batch = data.pipeline._ToBatchRecord()
    return iter(grain.DataLoader(
        data_source=source, sampler=sampler, worker_count=0, shard_options=shard,
        operations=[to_batch, grain.transforms.Batch(cfg.batch_size, drop_remainder=True)],
        read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def test_a_state_written_by_the_per_record_loader_resumes_its_sequence(data_dir):
    cfg = _cfg(data_dir, "digits", 32)
    old = _grain_per_record(cfg, seed=4)
    _take(old, 6)
    state = old.get_state()
    expected = _take(old, 5)
    resumed = data.make_iterator(cfg, seed=4)
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 5), expected)
    assert json.loads(resumed.get_state())["last_seen_indices"]   # still grain's state


def test_a_state_of_other_settings_is_refused_naming_the_setting(data_dir):
    state = data.make_iterator(_cfg(data_dir, "digits", 32), seed=4).get_state()
    with pytest.raises(ValueError, match="seed=4; this iterator reads seed=5"):
        data.make_iterator(_cfg(data_dir, "digits", 32), seed=5).set_state(state)
    with pytest.raises(ValueError, match="batch=32; this iterator reads batch=16"):
        data.make_iterator(_cfg(data_dir, "digits", 16), seed=4).set_state(state)


@pytest.mark.parametrize("per_record", [False, True])   # the batch reader, grain's loader
def test_random_flip_mirrors_about_half_the_images_deterministically(data_dir, per_record):
    plain = _take(data.make_iterator(_cfg(data_dir, "digits", 64), seed=5,
                                     per_record=per_record), 5)
    cfg = _cfg(data_dir, "digits", 64, random_flip=True)
    flipped = _take(data.make_iterator(cfg, seed=5, per_record=per_record), 5)
    _assert_same_batches(flipped, _take(data.make_iterator(cfg, seed=5,
                                                           per_record=per_record), 5))
    n_flipped = 0
    for p, f in zip(plain, flipped):
        np.testing.assert_array_equal(p["cond"]["label"], f["cond"]["label"])
        for a, b in zip(p["x"], f["x"]):
            same, mirrored = np.array_equal(a, b), np.array_equal(a[:, ::-1], b)
            assert same or mirrored
            n_flipped += mirrored and not same
    assert 0.35 < n_flipped / (5 * 64) < 0.65


def test_pipeline_scales_images_to_exactly_minus_one_to_one(data_dir):
    batch = next(data.make_iterator(_cfg(data_dir, "digits", 256), seed=0))
    # The 17 documented grey levels, mapped to [-1, 1] in float64, rounded once.
    levels = (np.floor(np.arange(17) * 255 / 16 + 0.5) / 127.5 - 1.0).astype(np.float32)
    assert np.isin(batch["x"], levels).all()
    assert batch["x"].min() == -1.0 and batch["x"].max() == 1.0


# --------------------------------------------------------------------------- catalogue

@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_catalogue_dataset_through_make_iterator_under_mock(name, shape, tmp_path):
    with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
        d = data.info(name, str(tmp_path))
        assert (d.kind, d.shape, d.num_classes) == ("image", shape, 10)
        cfg = _cfg(str(tmp_path), name, 16, random_flip=True)
        batches = list(data.make_iterator(cfg, seed=0, num_epochs=1))
    assert len(batches) == 3
    for b in batches:
        assert b["x"].shape == (16, *shape) and b["x"].dtype == np.float32
        assert b["x"].min() >= -1.0 and b["x"].max() <= 1.0 and b["x"].std() > 0.1
        assert b["cond"]["label"].dtype == np.int32
        assert ((0 <= b["cond"]["label"]) & (b["cond"]["label"] < 10)).all()


def test_unprepared_catalogue_dataset_raises_with_preparation_hint(tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(data.DatasetNotPreparedError) as excinfo:
        data.make_iterator(_cfg(str(empty), "mnist", 8), seed=0)
    assert isinstance(excinfo.value, FileNotFoundError)
    message = str(excinfo.value)
    assert "tfds build mnist" in message and "download_and_prepare" in message
    assert str(empty) in message
    assert not empty.exists() or not any(empty.rglob("*.array_record*"))


def test_unknown_dataset_is_a_value_error_listing_the_bundled_names(data_dir):
    for call in (lambda: data.info("no_such_data"),
                 lambda: data.make_iterator(_cfg(data_dir, "no_such_data", 8), seed=0),
                 lambda: data.load_arrays("no_such_data")):
        with pytest.raises(ValueError, match="no_such_data") as excinfo:
            call()
        assert all(name in str(excinfo.value) for name in data.BUNDLED)


def test_invalid_configs_fail_before_reading(data_dir):
    with pytest.raises(ValueError, match="batch_size"):
        data.make_iterator(_cfg(data_dir, "digits", 33), seed=0, process_count=2)
    with pytest.raises(ValueError, match="random_flip"):
        data.make_iterator(_cfg(data_dir, "moons", 32, random_flip=True), seed=0)


# --------------------------------------------------------------------------- cache repair

def _truncate_train_records(version_dir: Path) -> None:
    path = next(version_dir.glob("*-train.array_record-*"))
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [
    _truncate_train_records,
    lambda d: (d / "dataset_info.json").unlink(),
    lambda d: (d / builders.MANIFEST_NAME).unlink(),  # as if killed before completion
], ids=["truncated_record_file", "missing_dataset_info", "missing_manifest"])
def test_damaged_cache_is_detected_warned_and_rebuilt(data_dir, tmp_path, damage):
    spec = builders.SPECS["digits"]
    version_dir = spec.version_dir(str(tmp_path))
    shutil.copytree(spec.version_dir(data_dir), version_dir)
    damage(version_dir)
    with pytest.warns(data.CacheRebuiltWarning, match=str(version_dir)):
        x, label = data.load_arrays("digits", "train", str(tmp_path))
    x0, label0 = data.load_arrays("digits", "train", data_dir)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(label, label0)
    assert builders.cache_problem(version_dir) is None
