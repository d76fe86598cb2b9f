"""A small CNN classifier trained in-project, for class accuracy and Fréchet distance.

Public Inception weights do not fit 8x8 digits or 2-channel toys and cannot be fetched at
run time, so each image dataset gets its own small classifier, trained once and cached.
Its penultimate layer is the feature space of ``fd_classifier``; numbers in that space are
comparable only between runs that use the same cached classifier, which is why
``fd_classifier`` is always reported next to its real-data floor.

Shapes: images ``x: [N, H, W, C]`` in ``[-1, 1]`` (8x8x1 digits, 28x28x1, 32x32x3, ...).
"""
from __future__ import annotations

import dataclasses
import json
import os
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from diffjax import atomic

__all__ = ["CNN", "Classifier", "load_or_train", "train_classifier"]

# Bump when the architecture or the checkpoint layout changes: old caches are then refused
# with a clear message instead of being loaded into the wrong shapes.
_FORMAT_VERSION = 1
_WEIGHTS_FILE = "params.npz"
_META_FILE = "meta.json"


class CNN(nn.Module):
    """Conv stages with 2x average-pool downsampling while the map is >= 8 pixels wide.

    ``__call__(x: [N, H, W, C]) -> (logits [N, num_classes], features [N, feature_dim])``.
    GELU rather than ReLU keeps the penultimate features free of dead (always-zero) units,
    whose degenerate covariance would make the Fréchet distance less informative.
    """

    num_classes: int
    widths: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for i, width in enumerate(self.widths):
            x = nn.gelu(nn.Conv(width, (3, 3))(x))
            if i < len(self.widths) - 1 and min(x.shape[1:3]) >= 8:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        features = nn.gelu(nn.Dense(self.feature_dim)(x))
        logits = nn.Dense(self.num_classes)(features)
        return logits, features


@partial(jax.jit, static_argnames="module")
def _apply(module: CNN, params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return module.apply({"params": params}, x)


@dataclasses.dataclass
class Classifier:
    """A trained `CNN` and what it was trained on.

    Attributes:
      params: Flax parameter pytree of `module`.
      module: the `CNN` definition.
      image_shape: ``(H, W, C)`` of the training images; inputs must match.
      info: provenance written next to the weights (dataset, steps, test accuracy, ...).
    """

    params: Any
    module: CNN
    image_shape: tuple[int, int, int]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.module.num_classes

    def _run(self, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ValueError(f"classifier was trained on images [N, *{tuple(self.image_shape)}]"
                             f", got shape {x.shape}")
        logits, features = [], []
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size]
            # Pad the last chunk so every call has one shape and compiles once.
            pad = batch_size - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            out_logits, out_features = _apply(self.module, self.params, chunk)
            logits.append(np.asarray(out_logits)[:batch_size - pad])
            features.append(np.asarray(out_features)[:batch_size - pad])
        if not logits:
            return (np.zeros((0, self.num_classes), np.float32),
                    np.zeros((0, self.module.feature_dim), np.float32))
        return np.concatenate(logits), np.concatenate(features)

    def features(self, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
        """Penultimate-layer features, ``[N, H, W, C] -> [N, feature_dim]`` float32."""
        return self._run(x, batch_size)[1]

    def predict(self, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
        """Predicted labels, ``[N, H, W, C] -> [N]`` int32."""
        return np.argmax(self._run(x, batch_size)[0], axis=-1).astype(np.int32)

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of ``x: [N, H, W, C]`` whose predicted label equals ``labels: [N]``."""
        return float(np.mean(self.predict(x) == np.asarray(labels)))


def train_classifier(x_train: np.ndarray, y_train: np.ndarray, *, num_classes: int,
                     seed: int = 0, steps: int | None = None, batch_size: int = 128,
                     learning_rate: float = 2e-3,
                     widths: tuple[int, ...] = CNN.widths) -> Classifier:
    """Trains a `CNN` with AdamW and a warmup-cosine learning rate.

    Args:
      x_train: ``[N, H, W, C]`` float images in ``[-1, 1]``.
      y_train: ``[N]`` integer labels in ``[0, num_classes)``.
      num_classes: number of classes.
      seed: seeds the initialisation and the minibatch draws.
      steps: optimiser steps; default three epochs, clipped to ``[500, 3000]`` (8x8 digits
        reach ~98% test accuracy in 500 steps).
      batch_size: images per step, drawn with replacement.
      learning_rate: peak learning rate.
      widths: channels of the conv stages.

    Returns:
      The trained `Classifier`.
    """
    x_train = np.asarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.int32)
    if x_train.ndim != 4 or y_train.shape != (x_train.shape[0],):
        raise ValueError(f"expected x [N, H, W, C] and labels [N], got {x_train.shape} "
                         f"and {y_train.shape}")
    if y_train.min() < 0 or y_train.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got "
                         f"[{y_train.min()}, {y_train.max()}]")
    if steps is None:
        steps = int(np.clip(3 * x_train.shape[0] // batch_size, 500, 3000))
    module = CNN(num_classes=num_classes, widths=tuple(widths))
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    # Jitted, init is one compilation instead of a slow op-by-op trace.
    params = jax.jit(module.init)(init_key, jnp.asarray(x_train[:1]))["params"]
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps=max(1, steps // 20), decay_steps=steps)
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    x_dev, y_dev = jnp.asarray(x_train), jnp.asarray(y_train)
    opt_state = optimizer.init(params)
    step_fn = _make_step(module, optimizer, batch_size)
    # A Python loop over a jitted step: XLA:CPU runs convolutions inside `lax.scan` an
    # order of magnitude slower than at top level.
    for i in range(steps):
        params, opt_state = step_fn(params, opt_state, x_dev, y_dev, data_key, np.int32(i))
    return Classifier(params=params, module=module, image_shape=tuple(x_train.shape[1:]),
                      info={"num_train": int(x_train.shape[0]), "steps": steps,
                            "batch_size": batch_size, "seed": seed})


def _make_step(module: CNN, optimizer: optax.GradientTransformation, batch_size: int):
    """One jitted AdamW step on a minibatch drawn with replacement from ``(x, y)``."""

    def loss_fn(params, xb, yb):
        logits, _ = module.apply({"params": params}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def step(params, opt_state, x, y, key, i):
        idx = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, x.shape[0])
        grads = jax.grad(loss_fn)(params, x[idx], y[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def _save(classifier: Classifier, directory: str) -> None:
    flat = traverse_util.flatten_dict(jax.device_get(classifier.params), sep="/")
    np.savez(os.path.join(directory, _WEIGHTS_FILE), **{k: np.asarray(v) for k, v in flat.items()})
    meta = {"format_version": _FORMAT_VERSION, "num_classes": classifier.num_classes,
            "widths": list(classifier.module.widths),
            "feature_dim": classifier.module.feature_dim,
            "image_shape": list(classifier.image_shape), "info": classifier.info}
    with open(os.path.join(directory, _META_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def _load(directory: str) -> Classifier:
    with open(os.path.join(directory, _META_FILE)) as f:
        meta = json.load(f)
    if meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"classifier cache {directory} has format {meta.get('format_version')}, this code "
            f"reads format {_FORMAT_VERSION}; delete the directory to retrain")
    with np.load(os.path.join(directory, _WEIGHTS_FILE)) as npz:
        params = traverse_util.unflatten_dict({k: jnp.asarray(npz[k]) for k in npz.files},
                                              sep="/")
    module = CNN(num_classes=meta["num_classes"], widths=tuple(meta["widths"]),
                 feature_dim=meta["feature_dim"])
    return Classifier(params=params, module=module, image_shape=tuple(meta["image_shape"]),
                      info=meta["info"])


def load_or_train(dataset: str, cache_dir: str, *, data_dir: str | None = None) -> Classifier:
    """Returns the classifier of ``dataset``, training and caching it on first use.

    The cache is ``cache_dir/classifier_<dataset>/`` (``params.npz`` + ``meta.json``). It is
    written to a temporary sibling directory and renamed into place, so a reader sees either
    nothing or a complete checkpoint; if another process finishes first, its checkpoint is
    kept and this one discarded. Training uses the ``train`` split of
    ``diffjax.data.load_arrays``; accuracy on the ``test`` split is recorded in ``info``.
    """
    final = os.path.join(cache_dir, f"classifier_{dataset}")
    if os.path.isdir(final):
        return _load(final)
    from diffjax.data import info, load_arrays  # Deferred: data loading pulls in tfds.

    data_info = info(dataset, data_dir)
    if data_info.kind != "image" or data_info.num_classes < 2:
        raise ValueError(f"the classifier needs labelled images; {dataset!r} holds "
                         f"{data_info.kind} with {data_info.num_classes} class(es)")
    x_train, y_train = load_arrays(dataset, "train", data_dir)
    x_test, y_test = load_arrays(dataset, "test", data_dir)
    classifier = train_classifier(x_train, y_train, num_classes=data_info.num_classes)
    classifier.info.update(dataset=dataset, test_accuracy=classifier.accuracy(x_test, y_test))

    with atomic.publishing_dir(final, prefix=f".classifier_{dataset}.") as tmp:
        _save(classifier, tmp)
    return _load(final)
