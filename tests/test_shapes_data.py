"""Tests for the `shapes` data set: generator, captions, parser and tfds builder.

Ground truth: the scene arrays (captions are read back and checked against them with
plain loops written here), closed-form shape areas, and a second, brute-force reading of
what a prompt asks for.
"""
from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest

import diffjax.data as data
from diffjax.data import builders, shapes, shapes_builder
from diffjax.data import shapes_captions as sc
from diffjax.evaluate import shapes_eval


@pytest.fixture(scope="module")
def chunk() -> dict[str, np.ndarray]:
    return shapes.generate_chunk("test", 0, 32)


def test_chunk_is_bit_identical_on_regeneration_and_scenes_do_not_depend_on_resolution(chunk):
    again = shapes.generate_chunk("test", 0, 32)
    for key in chunk:
        np.testing.assert_array_equal(again[key], chunk[key], err_msg=key)
    big = shapes.generate_chunk("test", 0, 64)
    for key in ("count", "shape", "colour", "size", "centre", "caption", "category"):
        np.testing.assert_array_equal(big[key], chunk[key], err_msg=key)
    # The 64x64 rendering, box-downsampled, is the same picture up to anti-aliasing.
    pooled = big["image"].reshape(-1, 32, 2, 32, 2, 3).astype(float).mean(axis=(2, 4))
    assert np.mean(np.abs(pooled - chunk["image"])) < 1.0
    other = shapes.generate_chunk("train", 0, 32)
    assert not np.array_equal(other["image"], chunk["image"])


def test_each_chunk_holds_the_fixed_category_proportions(chunk):
    np.testing.assert_array_equal(np.bincount(chunk["category"], minlength=6),
                                  shapes.CATEGORY_COUNTS)
    assert sum(shapes.CATEGORY_COUNTS) == shapes.CHUNK
    assert set(np.unique(chunk["count"])) == {1, 2, 3, 4}


def test_objects_lie_inside_the_image_and_never_overlap(chunk):
    radius = np.asarray(shapes.RADIUS)
    for i in range(len(chunk["count"])):
        n = chunk["count"][i]
        c, r = chunk["centre"][i, :n].astype(float), radius[chunk["size"][i, :n]]
        assert np.all(c - r[:, None] >= shapes.MARGIN - 1e-6)
        assert np.all(c + r[:, None] <= 1 - shapes.MARGIN + 1e-6)
        for a, b in itertools.combinations(range(n), 2):
            assert np.linalg.norm(c[a] - c[b]) >= r[a] + r[b] + shapes.GAP - 1e-6
        assert np.all(chunk["shape"][i, n:] == -1) and np.all(chunk["centre"][i, n:] == -1)


def _group_objects(scene: dict, i: int, group: tuple) -> int:
    count, shape, colour, size = group
    n = scene["count"][i]
    return sum(1 for k in range(n) if scene["shape"][i, k] == shape
               and colour in (-1, scene["colour"][i, k]) and size in (-1, scene["size"][i, k]))


def test_captions_parse_back_to_their_scene_arrays(chunk):
    for i, caption in enumerate(chunk["caption"]):
        p = sc.parse(caption)
        assert p["category"] == chunk["category"][i], caption
        groups = [g for g in zip(p["count"], p["shape"], p["colour"], p["size"]) if g[0] > 0]
        # A caption describes the whole scene: its groups account for every object.
        assert sum(g[0] for g in groups) == chunk["count"][i], caption
        for g in groups:
            assert _group_objects(chunk, i, g) == g[0], caption
        category = shapes.CATEGORIES[chunk["category"][i]]
        if category in ("colors", "color_attr"):
            assert all(g[2] >= 0 for g in groups), caption
        if category == "counting":
            same = len(set(chunk["colour"][i, :chunk["count"][i]])) == 1
            assert (p["colour"][0] >= 0) == same, caption
        if category == "position":
            dx, dy = chunk["centre"][i, 1] - chunk["centre"][i, 0]  # object 1 minus object 0
            along = {0: dx, 1: -dx, 2: dy, 3: -dy}[int(p["relation"])]
            across = abs(dy) if p["relation"] < 2 else abs(dx)
            assert along >= 0.25 and along >= 1.5 * across, caption


def test_captions_vary_in_wording(chunk):
    captions = set(chunk["caption"])
    assert len(captions) > 600
    text = " ".join(captions)
    for phrase in ("to the left of", "above", "below", "that is", " and ", " with ", "four",
                   "little", "big", "a photo of"):
        assert phrase in text, phrase


def _brute_force_satisfies(p: dict, scene: dict, i: int) -> bool:
    """What a prompt asks, read literally: enumerate the scene's objects."""
    n = scene["count"][i]
    groups = [(p["count"][i, g], p["shape"][i, g], p["colour"][i, g], p["size"][i, g])
              for g in range(2) if p["count"][i, g] > 0]
    matches = [[k for k in range(n) if scene["shape"][i, k] == s
                and c in (-1, scene["colour"][i, k]) and z in (-1, scene["size"][i, k])]
               for (_, s, c, z) in groups]
    if shapes.CATEGORIES[p["category"][i]] == "counting":
        return len(matches[0]) == groups[0][0]
    if any(len(m) < g[0] for m, g in zip(matches, groups)):
        return False
    rel = p["relation"][i]
    if rel < 0:
        return True
    for a in matches[0]:
        for b in matches[1]:
            dx, dy = scene["centre"][i, b] - scene["centre"][i, a]
            along = (dx, -dx, dy, -dy)[rel]
            if a != b and along > (abs(dy) if rel < 2 else abs(dx)):
                return True
    return False


def test_satisfies_agrees_with_a_brute_force_reading_on_mismatched_pairs(chunk):
    prompts = sc.parse_batch(chunk["caption"])
    perm = np.random.default_rng(0).permutation(len(chunk["caption"]))
    shuffled = {k: v[perm] for k, v in prompts.items()}
    fast = sc.satisfies(shuffled, chunk)
    slow = np.array([_brute_force_satisfies(shuffled, chunk, i) for i in range(len(perm))])
    np.testing.assert_array_equal(fast, slow)
    assert 10 <= fast.sum() <= len(fast) // 2  # mostly wrong, not always: a real comparison
    assert np.all(sc.satisfies(prompts, chunk))


def test_circles_cover_their_closed_form_area_and_centres_show_their_colour(chunk):
    seg, image = chunk["segmentation"][..., 0], chunk["image"].astype(float)
    for i in range(200):
        for k in range(chunk["count"][i]):
            x, y = (chunk["centre"][i, k] * 32).astype(int)
            assert seg[i, y, x] == chunk["shape"][i, k] + 1
            rgb = shapes.RGB[chunk["colour"][i, k]]
            assert np.all(np.abs(image[i, y, x] - rgb) <= shapes.COLOUR_JITTER + 1)
        if chunk["count"][i] == 1 and chunk["shape"][i, 0] == shapes.SHAPES.index("circle"):
            area = np.pi * (shapes.RADIUS[chunk["size"][i, 0]] * 32) ** 2
            assert abs(np.sum(seg[i] > 0) - area) < 0.12 * area


def test_edges_outline_every_object_and_nothing_else(chunk):
    edges, seg = chunk["edges"][..., 0], chunk["segmentation"][..., 0]
    assert set(np.unique(edges)) <= {0, 255}
    assert np.all(seg[edges > 0] > 0)
    for i in range(100):
        for k in range(chunk["count"][i]):
            x, y = (chunk["centre"][i, k] * 32).astype(int)
            assert edges[i, y, x] == 0  # centres are interior
        assert np.sum(edges[i] > 0) >= 8 * chunk["count"][i]


def test_parse_refuses_what_the_grammar_cannot_read():
    with pytest.raises(ValueError, match="'crimson'.*knows"):
        sc.parse("a crimson circle")
    with pytest.raises(ValueError, match="must start with"):
        sc.parse("red circle")
    with pytest.raises(ValueError, match="shape"):
        sc.parse("two circle")
    with pytest.raises(ValueError, match="relation needs"):
        sc.parse("a circle above")
    p = sc.parse("An image of a big blue star to the LEFT of a square.")
    assert (p["shape"][0], p["colour"][0], p["size"][0]) == (3, 4, 1)
    assert p["relation"] == 0 and shapes.CATEGORIES[p["category"]] == "position"


def test_shapes_is_registered_and_its_info_reads_nothing(tmp_path):
    for name, r in (("shapes", 32), ("shapes_64", 64)):
        d = data.info(name, str(tmp_path))
        assert (d.kind, d.shape, d.num_train, d.num_test) == ("image", (r, r, 3), 50000, 5000)
    assert not any(tmp_path.iterdir())
    assert shapes_eval.CATEGORIES == shapes.CATEGORIES


class _SmallShapes(shapes_builder.DiffjaxShapes, skip_registration=True):
    """The real builder with 40 train / 20 test examples."""

    def _num_examples(self, split: str) -> int:
        return {"train": 40, "test": 20}[split]


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.iterdir()) if "array_record" in p.name}


def test_builder_writes_the_same_bytes_twice_and_records_equal_the_generator(tmp_path, chunk):
    spec = builders.BundledSpec(_SmallShapes, "res32", "image", "image", (32, 32, 3), 1, 40, 20)
    digests = []
    for run in ("a", "b"):
        builders._prepare(spec, str(tmp_path / run))
        digests.append(_digests(spec.version_dir(str(tmp_path / run))))
    assert digests[0] == digests[1] and len(digests[0]) >= 2
    builder = _SmallShapes(data_dir=str(tmp_path / "a"), config="res32",
                           file_format="array_record")
    source = builder.as_data_source(split="test")
    assert len(source) == 20
    for j in (0, 7, 19):
        record = source[j]
        for key in ("image", "edges", "segmentation", "shape", "colour", "size", "centre"):
            np.testing.assert_array_equal(record[key], chunk[key][j], err_msg=key)
        assert record["count"] == chunk["count"][j]
        caption = record["caption"]
        assert (caption.decode() if isinstance(caption, bytes) else caption) == chunk["caption"][j]
