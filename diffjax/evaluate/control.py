"""Control adherence: does a sample follow the control map it was generated from?

* ``control_f1``: F1 between the requested edge map and the edges of the generated image
  (the data set's edge extractor, :func:`diffjax.controlnet.maps.edges_from_images`) with a
  tolerance of 1 pixel (a predicted edge pixel counts as correct when a requested one lies in
  its 3x3 neighbourhood, and the other way round for recall), averaged over images;
  ``control_f1_real``: the same of real images against their own controls (the ceiling);
  ``control_f1_uncontrolled``: of the base model's samples on the same prompts without control
  (the floor to beat).
* ``control_iou``: intersection over union of the requested segmentation's objects and the
  objects found in the generated image, averaged over images (+ ``_real``,
  ``_uncontrolled`` likewise).

An image with no requested and no found edge (or object) scores 1; one with either empty 0.
The registry entries (:data:`diffjax.evaluate.metrics.METRICS`) read the controls, and the
ceiling's and floor's images, from the evaluation context (``controls``, ``real_images``,
``uncontrolled``); :func:`evaluate_control` is the direct call.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from diffjax.controlnet import maps

REPORTS = {"control_f1": ("control_f1", "control_f1_real", "control_f1_uncontrolled"),
           "control_iou": ("control_iou", "control_iou_real", "control_iou_uncontrolled")}


def _dilate(mask: np.ndarray) -> np.ndarray:
    """bool [N, H, W] grown by one pixel in all 8 directions."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    h, w = mask.shape[1:]
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[:, dy:dy + h, dx:dx + w]
    return out


def edge_f1(requested: np.ndarray, found: np.ndarray, tolerance: int = 1) -> np.ndarray:
    """Per-image F1 [N] of edge maps (bool [N, H, W]) with a ``tolerance``-pixel slack."""
    requested, found = np.asarray(requested, bool), np.asarray(found, bool)
    near_req, near_found = requested, found
    for _ in range(tolerance):
        near_req, near_found = _dilate(near_req), _dilate(near_found)
    tp_p = (found & near_req).sum((1, 2))
    tp_r = (requested & near_found).sum((1, 2))
    n_found, n_req = found.sum((1, 2)), requested.sum((1, 2))
    precision = np.where(n_found > 0, tp_p / np.maximum(n_found, 1), 0.0)
    recall = np.where(n_req > 0, tp_r / np.maximum(n_req, 1), 0.0)
    f1 = np.where(precision + recall > 0,
                  2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return np.where((n_found == 0) & (n_req == 0), 1.0, f1)


def mask_iou(requested: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Per-image IoU [N] of bool masks [N, H, W]."""
    requested, found = np.asarray(requested, bool), np.asarray(found, bool)
    inter, union = (requested & found).sum((1, 2)), (requested | found).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _score(name: str, images: np.ndarray, controls: np.ndarray) -> float:
    requested = np.asarray(controls)[..., 0] > -1.0 + 1e-3  # encoded in [-1, 1]
    if name == "control_f1":
        return float(np.mean(edge_f1(requested, maps.edges_from_images(images))))
    return float(np.mean(mask_iou(requested, maps.labels_from_images(images) > 0)))


def evaluate_control(name: str, samples: np.ndarray, controls: np.ndarray, *,
                     real_images: Optional[np.ndarray] = None,
                     uncontrolled: Optional[np.ndarray] = None) -> dict[str, float]:
    """``{name, name_real, name_uncontrolled}`` for ``name`` in :data:`REPORTS`.

    Args:
      samples: [N, H, W, C] in [-1, 1], generated from ``controls`` [N, H, W, 1] (encoded
        as :func:`diffjax.controlnet.maps.encode`: edges for ``control_f1``, segmentation
        for ``control_iou``).
      real_images: the real images the controls were taken from (the ceiling), or None.
      uncontrolled: the base's samples on the same prompts and noise (the floor), or None.
      Absent ones report NaN.
    """
    if name not in REPORTS:
        raise ValueError(f"unknown control metric {name!r}; choices: {sorted(REPORTS)}")
    if np.shape(samples)[:3] != np.shape(controls)[:3]:
        raise ValueError(f"samples {np.shape(samples)} and controls {np.shape(controls)} "
                         "must share [N, H, W]")
    value, real, floor = REPORTS[name]
    out = {value: _score(name, samples, controls), real: float("nan"), floor: float("nan")}
    if real_images is not None:
        out[real] = _score(name, real_images, controls)
    if uncontrolled is not None:
        out[floor] = _score(name, uncontrolled, controls)
    return out


def metric_fn(name: str):
    """``compute(ctx)`` of the registry: the controls and images come with the context."""

    def compute(ctx) -> dict[str, float]:
        controls = getattr(ctx, "controls", None)
        if controls is None:
            raise ValueError(f"metric {name!r} needs the control maps the samples were "
                             "generated from (diffjax.evaluate.control.evaluate_control)")
        return evaluate_control(name, ctx.samples, controls,
                                real_images=getattr(ctx, "real_images", None),
                                uncontrolled=getattr(ctx, "uncontrolled", None))

    return compute


__all__ = ["REPORTS", "edge_f1", "evaluate_control", "mask_iou", "metric_fn"]
