"""The raw arrays behind the bundled ``digits`` and 2-D toy data sets (deterministic).

The tfds builders of :mod:`diffjax.data.builders` write these arrays into their records.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable

import numpy as np

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION_DENOMINATOR = 6
DIGITS_NUM_TRAIN = 1501
DIGITS_NUM_TEST = 296

TOY2D_NUM_TRAIN = 20000
TOY2D_NUM_TEST = 5000

MOONS_NOISE = 0.05
MOONS_SHIFT = (0.5, 0.25)
MOONS_SCALE = 1.2
SWISS_ROLL_NOISE = 0.25
SWISS_ROLL_SCALE = 1.0 / 7.0
RING_NUM_COMPONENTS = 8
RING_RADIUS = float(np.sqrt(2.0))
RING_STD = 0.1
CHECKERBOARD_CELLS = tuple(
    (i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0)



def _uint8_digits(images: np.ndarray) -> np.ndarray:
    """sklearn intensities 0..16 -> uint8 0..255. images: [N, 8, 8] -> [N, 8, 8, 1]."""
    return np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., None]


def digits_split() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The documented digits split: ``{split: (rows, image [N,8,8,1] uint8, label [N])}``.

    ``rows`` are the indices into ``sklearn.datasets.load_digits()``.
    """
    from sklearn.datasets import load_digits  # only needed when preparing

    digits = load_digits()
    target = np.asarray(digits.target)
    # RandomState, not Generator: its streams are frozen across numpy versions, which
    # keeps the split (and so the cache) identical on every machine.
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    test_rows = []
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(target == c))
        test_rows.append(rows[: len(rows) // DIGITS_TEST_FRACTION_DENOMINATOR])
    is_test = np.zeros(len(target), bool)
    is_test[np.concatenate(test_rows)] = True
    images = _uint8_digits(digits.images)
    out = {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        rows = np.flatnonzero(mask)
        out[split] = (rows, images[rows], target[rows])
    assert len(out["train"][0]) == DIGITS_NUM_TRAIN, "static digits sizes are stale"
    assert len(out["test"][0]) == DIGITS_NUM_TEST, "static digits sizes are stale"
    return out


def _moons(n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    label = rng.randint(0, 2, size=n)
    a = rng.uniform(0.0, np.pi, size=n)
    upper = np.stack([np.cos(a), np.sin(a)], axis=1)
    lower = np.stack([1.0 - np.cos(a), 0.5 - np.sin(a)], axis=1)
    raw = np.where(label[:, None] == 0, upper, lower)
    raw = raw + MOONS_NOISE * rng.standard_normal((n, 2))
    return MOONS_SCALE * (raw - np.asarray(MOONS_SHIFT)), label


def _swiss_roll(n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(size=n))
    raw = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    raw = raw + SWISS_ROLL_NOISE * rng.standard_normal((n, 2))
    return SWISS_ROLL_SCALE * raw, np.zeros(n, np.int64)


def ring_means() -> np.ndarray:
    """Means of the ``ring`` mixture (equal weights, isotropic std ``RING_STD``). [8, 2]."""
    angle = 2.0 * np.pi * np.arange(RING_NUM_COMPONENTS) / RING_NUM_COMPONENTS
    return RING_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def _ring(n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    label = rng.randint(0, RING_NUM_COMPONENTS, size=n)
    return ring_means()[label] + RING_STD * rng.standard_normal((n, 2)), label


def _checkerboard(n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    label = rng.randint(0, len(CHECKERBOARD_CELLS), size=n)
    corner = np.asarray(CHECKERBOARD_CELLS, np.float64)[label] - 2.0
    return corner + rng.uniform(size=(n, 2)), label


@dataclasses.dataclass(frozen=True)
class _Toy2dSpec:
    sample: Callable[[int, np.random.RandomState], tuple[np.ndarray, np.ndarray]]
    num_classes: int
    description: str


_TOY2D = {
    "moons": _Toy2dSpec(_moons, 2, "Two interleaved half circles (sklearn's moons)."),
    "swiss_roll": _Toy2dSpec(_swiss_roll, 1, "A 2-D Swiss roll spiral."),
    "ring": _Toy2dSpec(_ring, RING_NUM_COMPONENTS, "8 Gaussians on a circle."),
    "checkerboard": _Toy2dSpec(
        _checkerboard, len(CHECKERBOARD_CELLS), "Uniform on 8 cells of a 4x4 board."),
}


def toy2d_points(config: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The documented points of a toy set: ``(x [N, 2] float32, label [N] int64)``."""
    n = {"train": TOY2D_NUM_TRAIN, "test": TOY2D_NUM_TEST}[split]
    rng = np.random.RandomState(zlib.crc32(f"diffjax_toy2d/{config}/{split}".encode()))
    x, label = _TOY2D[config].sample(n, rng)
    return x.astype(np.float32), label.astype(np.int64)
