"""Control maps: the kinds a ControlNet reads, where they come from, and their [-1, 1] encoding.

* ``edges``: 1 on object outlines (the shapes data set's ``edges``: an object pixel with a
  4-neighbour of another object or the background), -1 elsewhere.
* ``segmentation``: which shape covers the pixel, ``2 * s / NUM_SEGMENTS - 1`` (background -1).
* ``scribble``: a degraded edge map, as a person would draw it: the outline with a random
  ``SCRIBBLE_DROP`` of its pixels removed and the rest shifted by up to one pixel (drawn from
  the record's index, so a record's scribble is the same every epoch).

Records of a data set that stores the maps (``shapes``) use them; any other image data set
(e.g. digits in tests) and ``sampling.control_from`` get them from the image
(:func:`labels_from_images`: the pixels far from the image's median colour are objects,
labelled by coarse colour).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from diffjax.controlnet.settings import KINDS
from diffjax.data.shapes import _edges
from diffjax.data.shapes_vocab import SHAPES

NUM_SEGMENTS = len(SHAPES)  # segment values 0 (background) .. len(SHAPES)
SCRIBBLE_DROP = 0.3
FOREGROUND_DISTANCE = 0.25  # in [-1, 1] image units from the median colour


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"config.controlnet.kind={kind!r}; valid choices: {', '.join(KINDS)}")


def labels_from_images(images: np.ndarray) -> np.ndarray:
    """Object labels of images [N, H, W, C] in [-1, 1]: 0 background (near the median colour),
    else 1 + a coarse colour code. [N, H, W] int32."""
    images = np.asarray(images, np.float32)
    median = np.median(images.reshape(len(images), -1, images.shape[-1]), axis=1)
    distance = np.abs(images - median[:, None, None, :]).max(-1)
    bins = np.clip(((images + 1) * 1.5).astype(np.int32), 0, 2)  # 3 levels per channel
    code = np.zeros(images.shape[:3], np.int32)
    for c in range(images.shape[-1]):
        code = code * 3 + bins[..., c]
    return np.where(distance > FOREGROUND_DISTANCE, 1 + code, 0)


def edges_from_labels(labels: np.ndarray) -> np.ndarray:
    """bool [N, H, W]: the data set's edge extractor (:func:`diffjax.data.shapes._edges`)."""
    return _edges(np.asarray(labels)) > 0


def edges_from_images(images: np.ndarray) -> np.ndarray:
    """bool [N, H, W]: the edges of the objects found in images [N, H, W, C] in [-1, 1]."""
    return edges_from_labels(labels_from_images(images))


def scribble(edges: np.ndarray, index: np.ndarray) -> np.ndarray:
    """bool [N, H, W]: edges with ``SCRIBBLE_DROP`` of the pixels dropped and a per-record
    shift of up to one pixel, drawn from each record's ``index``."""
    out = np.zeros_like(edges, bool)
    for n, (e, i) in enumerate(zip(edges, index)):
        rng = np.random.default_rng(int(i))
        kept = e & (rng.random(e.shape) >= SCRIBBLE_DROP)
        out[n] = np.roll(kept, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
    return out


def encode(kind: str, maps: np.ndarray) -> np.ndarray:
    """float32 [N, H, W, 1] in [-1, 1] from bool edges or int segment maps [N, H, W]."""
    maps = np.asarray(maps)
    if kind == "segmentation":
        return (2.0 * maps / NUM_SEGMENTS - 1.0).astype(np.float32)[..., None]
    return np.where(maps, 1.0, -1.0).astype(np.float32)[..., None]


def from_images(kind: str, images: np.ndarray, index: Optional[np.ndarray] = None) -> np.ndarray:
    """The control maps of ``kind`` of images [N, H, W, C] in [-1, 1], encoded."""
    check_kind(kind)
    labels = labels_from_images(images)
    if kind == "segmentation":
        return encode(kind, (labels > 0) * NUM_SEGMENTS)
    edges = edges_from_labels(labels)
    if kind == "scribble":
        edges = scribble(edges, np.arange(len(images)) if index is None else index)
    return encode(kind, edges)


def records_maps(kind: str, dataset: str, split: str, data_dir: Optional[str]) -> np.ndarray:
    """The encoded control map of every record of a split, [N, H, W, 1] float32."""
    check_kind(kind)
    from diffjax import data as data_lib  # deferred: pulls in tfds
    from diffjax.data import shapes_builder

    if dataset in shapes_builder.SPECS:
        records = shapes_builder.load_records(dataset, split, data_dir)
        if kind == "segmentation":
            return encode(kind, records["segmentation"][..., 0])
        edges = records["edges"][..., 0] > 0
        if kind == "scribble":
            edges = scribble(edges, np.arange(len(edges)))
        return encode(kind, edges)
    images, _ = data_lib.load_arrays(dataset, split, data_dir)
    return from_images(kind, images)


@dataclasses.dataclass(frozen=True)
class ControlTable:
    """Record ``i``'s ``{"control": maps[i]}`` (float16 in memory), optionally joined with
    another per-record table (a text condition's :class:`CondTable`)."""

    maps: np.ndarray
    other: object = None

    @property
    def rows(self) -> np.ndarray:
        return np.arange(len(self.maps))

    def lookup(self, index: int) -> dict:
        out = {} if self.other is None else dict(self.other.lookup(index))
        out["control"] = self.maps[index].astype(np.float32)
        return out


def table(kind: str, dataset: str, split: str, data_dir: Optional[str],
          other: object = None) -> ControlTable:
    """The per-record control table of a split (joining ``other``'s conditions)."""
    maps = records_maps(kind, dataset, split, data_dir).astype(np.float16)
    if other is not None and len(other.rows) != len(maps):
        raise ValueError(f"a condition table of {len(other.rows)} rows for {len(maps)} records")
    return ControlTable(maps, other)


__all__ = ["ControlTable", "KINDS", "check_kind", "edges_from_images", "edges_from_labels",
           "encode", "from_images", "labels_from_images", "records_maps", "scribble", "table"]
