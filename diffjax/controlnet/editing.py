"""Editing with prompts at the command line: control maps, image-to-image, inpainting.

``--mode=sample`` with any of ``config.sampling.control`` (a control map image of the
ControlNet's kind), ``control_from`` (an image to extract it from, with the data set's
extractor, :mod:`diffjax.controlnet.maps`), ``control_scale``, ``init_image`` + ``strength``
(SDEdit, Meng et al. 2022: start from ``init_image`` noised to ``t = strength``; 1 = from
pure noise) and ``mask`` (inpainting: white = keep ``init_image``, black = generate; the known
region is re-imposed at every step and exactly in the result, :mod:`diffjax.samplers`).
Every input is read and checked (size, kind, binary mask, a ControlNet for a control) before
any checkpoint is restored; :func:`edit_samples` is the sampling itself, for any sampler.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.controlnet import maps
from diffjax.errors import ConfigError

INPUTS = ("control", "control_from", "init_image", "mask")


def requested(config) -> bool:
    """Whether ``config.sampling`` asks for editing or control, or the run is a ControlNet
    (whose samples need its base: :func:`diffjax.controlnet.cli.run`)."""
    return config.get("task") == "controlnet" or any(config.sampling.get(k) for k in INPUTS)


def read_image(key: str, path: str, shape: tuple) -> np.ndarray:
    """``config.sampling.<key>`` = a PNG of the model's size, as float32 [H, W, C] in [-1, 1]
    (grey to RGB and back as the model's channels ask)."""
    from PIL import Image

    if not os.path.isfile(path):
        raise ConfigError(f"config.sampling.{key}={path!r}: no such file")
    image = np.asarray(Image.open(path).convert("RGB" if shape[-1] == 3 else "L"), np.float32)
    image = image.reshape(image.shape[:2] + (shape[-1],))
    if image.shape[:2] != tuple(shape[:2]):
        raise ConfigError(f"config.sampling.{key}={path!r} is {image.shape[1]}x"
                          f"{image.shape[0]}; the model makes {shape[1]}x{shape[0]} images")
    return image / 127.5 - 1.0


def read_mask(path: str, shape: tuple) -> np.ndarray:
    """The inpainting mask [H, W, 1] float32: 1 (white) = keep, 0 (black) = generate.

    Raises:
      ConfigError: not of the model's size, or not black and white only.
    """
    grey = read_image("mask", path, (*shape[:2], 1))
    values = np.unique(grey)
    if not set(values.tolist()) <= {-1.0, 1.0}:
        raise ConfigError(f"config.sampling.mask={path!r} is not binary: it holds "
                          f"{len(values)} grey levels; use black (0, generate) and white "
                          "(255, keep) only")
    return (grey > 0).astype(np.float32)


def read_control(sampling, kind: str, shape: tuple) -> np.ndarray:
    """The control map [H, W, 1] encoded for the ControlNet (:func:`maps.encode`).

    Raises:
      ConfigError: wrong size, or an image that is not a map of ``kind`` (edges and
        scribbles are black and white; segmentations hold the levels of ``maps.encode``).
    """
    if sampling.get("control_from"):
        image = read_image("control_from", sampling.control_from, shape)
        return maps.from_images(kind, image[None])[0]
    path = sampling.control
    grey = read_image("control", path, (*shape[:2], 1))[..., 0]
    if kind == "segmentation":
        levels = np.rint((grey + 1.0) / 2.0 * maps.NUM_SEGMENTS)
        if np.abs(maps.encode(kind, levels[None])[0, ..., 0] - grey).max() > 1.5 / 255 * 2:
            raise ConfigError(f"config.sampling.control={path!r} is not a segmentation map: "
                              f"its grey levels must be k * 255 / {maps.NUM_SEGMENTS}")
        return maps.encode(kind, levels[None].astype(np.int32))[0]
    if not set(np.unique(grey).tolist()) <= {-1.0, 1.0}:
        raise ConfigError(f"config.sampling.control={path!r} is not a {kind} map: it must be "
                          "black with white lines (or pass the image as control_from)")
    return maps.encode(kind, grey[None] > 0)[0]


def read_inputs(config, data_shape: tuple) -> dict[str, Optional[np.ndarray]]:
    """Every editing input of ``config.sampling``, checked, before any compute."""
    sampling = config.sampling
    has_control = bool(sampling.get("control") or sampling.get("control_from"))
    if has_control and config.get("task") != "controlnet":
        raise ConfigError(f"config.sampling.control: the model (config.task="
                          f"{config.get('task', 'denoise')!r}) has no ControlNet; train one "
                          "with configs/shapes_controlnet.py")
    strength = float(sampling.get("strength", 1.0))
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"config.sampling.strength={strength!r} must be in (0, 1]")
    out = {"control": None, "init_image": None, "mask": None}
    if has_control:
        out["control"] = read_control(sampling, str(config.controlnet.kind), data_shape)
    if sampling.get("init_image"):
        out["init_image"] = read_image("init_image", sampling.init_image, data_shape)
    if sampling.get("mask"):
        out["mask"] = read_mask(sampling.mask, data_shape)
    return out


def edit_options(init: Optional[np.ndarray], mask: Optional[np.ndarray], strength: float,
                 shape: tuple) -> dict[str, Any]:
    """``diffjax.sample`` options for samples of ``shape`` ``[n, ...]``: inpainting
    (``known``, ``mask``), or SDEdit (``x_init``, ``t_max = strength``; strength 1 is
    sampling from noise). ``init`` is one image (every row edits it) or one per row."""
    if init is None:
        return {}
    init = jnp.asarray(init)
    known = init if init.shape == tuple(shape) else jnp.broadcast_to(init, tuple(shape))
    if mask is not None:
        return {"known": known, "mask": jnp.asarray(mask)[None]}
    if strength >= 1.0:
        return {}
    return {"x_init": known, "t_max": float(strength)}


def edit_samples(fn, path, shape: tuple, key, *, params, target: str, sampler: str,
                 num_steps: int, init=None, mask=None, strength: float = 1.0, cond=None,
                 **options) -> jax.Array:
    """Samples of ``shape`` edited from ``init`` (SDEdit / inpainting, :func:`edit_options`),
    for any sampler that takes the options; ``fn(params, x, t, cond)``."""
    from diffjax import sample

    options.update(edit_options(init, mask, strength, shape))
    return sample(fn, path, shape, key, params=params, target=target, sampler=sampler,
                  num_steps=num_steps, cond=cond, **options)


__all__ = ["INPUTS", "edit_options", "edit_samples", "read_control", "read_image",
           "read_inputs", "read_mask", "requested"]
