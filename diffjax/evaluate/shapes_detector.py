"""A small one-stage detector of `shapes` objects, trained in-project and cached.

A fully convolutional CNN reads a 32x32 image (64x64 images are 2x2 average-pooled
first) and predicts, for every cell of an 8x8 grid, whether an object's centre lies in
the cell, and that object's shape, colour, size and centre offset within the cell
(one-stage grid detection as in YOLO, Redmon et al. 2016). Objects of `shapes` never
overlap and their centres are >= 9 pixels apart, so a cell holds at most one object
(see `targets`); detections closer than `NMS_DISTANCE` are merged.

It is trained on freshly rendered `shapes` train chunks (the same scenes as the
``shapes`` train split), lightly blurred and noised so that it also reads imperfect
samples, and cached under ``cache_dir/shapes_detector_v<FORMAT>/``. Its pooled last
feature map (mean and max over the grid, 2 * widths[-1] numbers) is the feature space of
``fd_shapes``.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from diffjax import atomic
from diffjax.data import shapes

# Names the cache entry: bump it whenever the network, its training or the shapes renderer
# changes, so that no stale detector is loaded.
FORMAT = 3
GRID = 8
INPUT = 32
NMS_DISTANCE = 0.1  # fraction of the image width; shapes keeps centres >= 0.28 apart
THRESHOLD = 0.5
BORDER = 0.25  # in cells; see `targets`
OFFSET_RANGE = (-0.5, 1.5)  # of the decoded offset: sigmoid(logit) mapped onto it
_HEAD = (1, len(shapes.SHAPES), len(shapes.COLOURS), len(shapes.SIZES), 2)


class DetectorNet(nn.Module):
    """``__call__(x [N, 32, 32, 3]) -> (head [N, 8, 8, 17], features [N, 2 * widths[-1]])``.

    Head channels: objectness logit, shape logits (6), colour logits (6), size logits (2),
    centre offset logits (2, sigmoid -> position in the cell).
    """

    widths: tuple[int, int, int] = (16, 32, 64)

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        w0, w1, w2 = self.widths
        x = nn.gelu(nn.Conv(w0, (3, 3))(x))
        x = nn.gelu(nn.Conv(w1, (3, 3), strides=2)(x))  # 16x16
        x = nn.gelu(nn.Conv(w1, (3, 3))(x))
        x = nn.gelu(nn.Conv(w2, (3, 3), strides=2)(x))  # 8x8
        x = nn.gelu(nn.Conv(w2, (3, 3))(x))
        h = nn.gelu(nn.Conv(w2, (3, 3))(x))
        head = nn.Conv(sum(_HEAD), (1, 1))(h)
        features = jnp.concatenate([h.mean(axis=(1, 2)), h.max(axis=(1, 2))], axis=-1)
        return head, features


def to_input(x: np.ndarray) -> np.ndarray:
    """Images [N, R, R, 3] in [-1, 1], R in (32, 64) -> [N, 32, 32, 3] float32."""
    x = np.asarray(x, np.float32)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2] or (
            x.shape[1] not in shapes.RESOLUTIONS):
        raise ValueError(f"the shapes detector reads images [N, R, R, 3] with R in "
                         f"{shapes.RESOLUTIONS}, got shape {x.shape}")
    f = x.shape[1] // INPUT
    return x.reshape(x.shape[0], INPUT, f, INPUT, f, 3).mean(axis=(2, 4))


def targets(scene: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-cell training targets of scenes: ``obj`` [N, 8, 8] and, at object cells,
    ``shape``, ``colour``, ``size`` [N, 8, 8] int32 and ``offset`` [N, 8, 8, 2].

    An object belongs to the cell of its centre and to the neighbours whose border lies
    within `BORDER` cells of it (offsets then fall in ``(-BORDER, 1 + BORDER)``): a centre
    near a border is no coin toss between two cells, and every cell it owns regresses the
    same centre, which non-maximum suppression merges. Objects of `shapes` are far enough
    apart (>= 2.25 cells) that no cell is owned twice.
    """
    n = len(scene["count"])
    out = {"obj": np.zeros((n, GRID, GRID), np.float32),
           "offset": np.zeros((n, GRID, GRID, 2), np.float32),
           **{k: np.zeros((n, GRID, GRID), np.int32) for k in ("shape", "colour", "size")}}
    for k in range(shapes.MAX_OBJECTS):
        idx = np.flatnonzero(scene["count"] > k)
        g = scene["centre"][idx, k] * GRID
        home = np.minimum(np.floor(g).astype(int), GRID - 1)
        frac = g - home
        for step in itertools.product((-1, 0, 1), repeat=2):  # (dx, dy)
            step = np.asarray(step)
            near = np.all((step == 0) | ((step > 0) & (frac > 1 - BORDER))
                          | ((step < 0) & (frac < BORDER)), axis=1)
            cell = home + step
            near &= np.all((cell >= 0) & (cell < GRID), axis=1)
            at = (idx[near], cell[near, 1], cell[near, 0])
            out["obj"][at] = 1.0
            out["offset"][at] = g[near] - cell[near]
            for key in ("shape", "colour", "size"):
                out[key][at] = scene[key][idx[near], k]
    return out


def _offset(unit):
    """sigmoid outputs in (0, 1) -> offsets in `OFFSET_RANGE`."""
    lo, hi = OFFSET_RANGE
    return lo + (hi - lo) * unit


def _loss(head: jax.Array, t: dict[str, jax.Array]) -> jax.Array:
    obj, shape, colour, size, offset = jnp.split(head, np.cumsum(_HEAD)[:-1], axis=-1)
    mask = t["obj"]
    loss = optax.sigmoid_binary_cross_entropy(obj[..., 0], mask).mean()
    per_cell = (optax.softmax_cross_entropy_with_integer_labels(shape, t["shape"])
                + optax.softmax_cross_entropy_with_integer_labels(colour, t["colour"])
                + optax.softmax_cross_entropy_with_integer_labels(size, t["size"])
                + 10.0 * jnp.sum((_offset(jax.nn.sigmoid(offset)) - t["offset"]) ** 2, -1))
    return loss + jnp.sum(per_cell * mask) / jnp.maximum(mask.sum(), 1.0)


@dataclasses.dataclass
class Detector:
    """A trained `DetectorNet` (``params``) with provenance ``info``."""

    params: Any
    module: DetectorNet
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def _run(self, x: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        x = to_input(x)
        heads, feats = [], []
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            pad = batch_size - len(chunk)  # one shape, one compilation
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            head, feat = _apply(self.module, self.params, chunk)
            heads.append(np.asarray(head)[:batch_size - pad])
            feats.append(np.asarray(feat)[:batch_size - pad])
        if not heads:
            return np.zeros((0, GRID, GRID, sum(_HEAD)), np.float32), np.zeros((0, 0))
        return np.concatenate(heads), np.concatenate(feats)

    def features(self, x: np.ndarray) -> np.ndarray:
        """Pooled features of images [N, R, R, 3] in [-1, 1]. [N, 2 * widths[-1]]."""
        return self._run(x)[1]

    def detect(self, x: np.ndarray, max_objects: int = 16) -> dict[str, np.ndarray]:
        """Objects in images [N, R, R, 3] in [-1, 1], as a scene (see `decode`)."""
        return decode(self._run(x)[0], max_objects)


def decode(head: np.ndarray, max_objects: int = 16) -> dict[str, np.ndarray]:
    """Detections of head outputs [N, 8, 8, 17] as a scene: ``count`` [N]; ``shape``,
    ``colour``, ``size`` [N, K] and ``centre`` [N, K, 2] (K = max_objects, most confident
    first, slots >= count hold -1)."""
    head = np.asarray(head).reshape(len(head), GRID * GRID, -1)
    obj, shape, colour, size, offset = np.split(head, np.cumsum(_HEAD)[:-1], axis=-1)
    score = obj[..., 0]
    cell = np.stack(np.meshgrid(np.arange(GRID), np.arange(GRID)), -1).reshape(-1, 2)
    centre = (cell[None] + _offset(1.0 / (1.0 + np.exp(-offset)))) / GRID  # [N, 64, 2] (x, y)
    keep = score > np.log(THRESHOLD / (1 - THRESHOLD))
    # Non-maximum suppression: drop a detection near a stronger one (ties: lower cell wins).
    d = np.linalg.norm(centre[:, :, None] - centre[:, None], axis=-1)
    cells = np.arange(GRID * GRID)
    stronger = (score[:, None, :] > score[:, :, None]) | (
        (score[:, None, :] == score[:, :, None]) & (cells[None, :] < cells[:, None]))
    keep &= ~np.any(keep[:, None, :] & stronger & (d < NMS_DISTANCE), axis=-1)
    order = np.argsort(np.where(keep, -score, np.inf), axis=1, kind="stable")[:, :max_objects]
    kept = np.take_along_axis(keep, order, 1)

    def pick(a: np.ndarray) -> np.ndarray:
        return np.where(kept, np.take_along_axis(a, order, 1), -1).astype(np.int32)

    return {"count": kept.sum(1).astype(np.int32),
            "shape": pick(shape.argmax(-1)), "colour": pick(colour.argmax(-1)),
            "size": pick(size.argmax(-1)),
            "centre": np.where(kept[..., None], np.take_along_axis(
                centre, order[..., None], 1), -1.0).astype(np.float32)}


@partial(jax.jit, static_argnames="module")
def _apply(module: DetectorNet, params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return module.apply({"params": params}, x)


def _box_blur(x: jax.Array) -> jax.Array:
    """3x3 box blur of images [N, H, W, C] with edge padding."""
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def training_data(num_chunks: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The first ``num_chunks`` train chunks: ``(x [N, 32, 32, 3] in [-1, 1], targets)``."""
    chunks = [shapes.generate_chunk("train", c, INPUT) for c in range(num_chunks)]
    scene = {k: np.concatenate([c[k] for c in chunks]) for k in ("count", "shape", "colour",
                                                                 "size", "centre")}
    x = np.concatenate([c["image"] for c in chunks]).astype(np.float32) / 127.5 - 1.0
    return x, targets(scene)


def train(*, num_chunks: int = 20, steps: int = 3000, batch_size: int = 64,
          learning_rate: float = 3e-3, noise: float = 0.08, blur: float = 0.7,
          seed: int = 0) -> Detector:
    """Trains a `DetectorNet` with AdamW (warmup-cosine) on ``num_chunks`` train chunks.

    Each step draws ``batch_size`` images with replacement, blends each with its 3x3 box
    blur by a weight drawn uniformly in ``[0, blur]`` and adds Gaussian noise of a standard
    deviation drawn uniformly in ``[0, noise]``: samples of a generator are rarely as sharp
    and clean as the renderings, and the judge should still read them.
    """
    start = time.time()
    x, t = training_data(num_chunks)
    module = DetectorNet()
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    params = jax.jit(module.init)(init_key, jnp.asarray(x[:1]))["params"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, steps // 20, steps)
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, t, i):
        keys = jax.random.split(jax.random.fold_in(data_key, i), 4)
        idx = jax.random.randint(keys[0], (batch_size,), 0, x.shape[0])
        std, weight = (scale * jax.random.uniform(k, (batch_size, 1, 1, 1))
                       for scale, k in ((noise, keys[1]), (blur, keys[2])))
        xb = (1 - weight) * x[idx] + weight * _box_blur(x[idx])
        xb = xb + std * jax.random.normal(keys[3], xb.shape)
        grads = jax.grad(lambda p: _loss(module.apply({"params": p}, xb)[0],
                                         jax.tree.map(lambda a: a[idx], t)))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    x_dev, t_dev = jnp.asarray(x), jax.tree.map(jnp.asarray, t)
    for i in range(steps):  # a Python loop: XLA:CPU runs convolutions slowly inside scan
        params, opt_state = step(params, opt_state, x_dev, t_dev, np.int32(i))
    info = {"num_chunks": num_chunks, "steps": steps, "batch_size": batch_size,
            "learning_rate": learning_rate, "noise": noise, "blur": blur, "seed": seed,
            "train_seconds": round(time.time() - start, 1)}
    return Detector(jax.device_get(params), module, info)


def _save(detector: Detector, directory: str) -> None:
    flat = traverse_util.flatten_dict(detector.params, sep="/")
    np.savez(os.path.join(directory, "params.npz"), **{k: np.asarray(v) for k, v in flat.items()})
    with open(os.path.join(directory, "meta.json"), "w") as f:
        json.dump({"format": FORMAT, "widths": list(detector.module.widths),
                   "info": detector.info}, f, indent=2)


def _load(directory: str) -> Detector:
    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    with np.load(os.path.join(directory, "params.npz")) as npz:
        params = traverse_util.unflatten_dict({k: npz[k] for k in npz.files}, sep="/")
    return Detector(params, DetectorNet(widths=tuple(meta["widths"])), meta["info"])


def load_or_train(cache_dir: str, **train_kwargs) -> Detector:
    """The detector cached in ``cache_dir``, trained (a few CPU minutes) on first use.

    ``train_kwargs`` (see `train`) name the cache entry, so a smaller detector for tests
    never replaces the default one. Written to a temporary sibling and renamed into place:
    readers see nothing or a complete detector; the first of concurrent writers wins.
    """
    suffix = "".join(f"_{k}{v}" for k, v in sorted(train_kwargs.items()))
    final = os.path.join(os.path.expanduser(cache_dir), f"shapes_detector_v{FORMAT}{suffix}")
    if os.path.isdir(final):
        return _load(final)
    detector = train(**train_kwargs)
    with atomic.publishing_dir(final, prefix=".shapes_detector.") as tmp:
        _save(detector, tmp)
    return _load(final)
