"""``config.latent`` and ``config.autoencoder``, and what a latent run's network sees.

Everything here reads small JSON files only (no arrays, no trainer), so validation uses it
before any compute:

* ``config.latent.autoencoder``: a trained autoencoder run's workdir (``model.arch =
  "autoencoder"``) or a diffusers AutoencoderKL folder; unset for a pixel-space run.
* the latent data a run then models: ``[H/f, W/f, latent_channels]`` (:func:`data_info`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import ml_collections

from diffjax.errors import ConfigError

KEY = "latent.autoencoder"
RECONSTRUCTIONS = ("l1", "l2")
# The evaluation of an autoencoder run (config.eval.metrics); "" = psnr, plus fd_shapes_recon
# on shapes data.
METRICS = ("psnr", "fd_shapes_recon")
SHAPES_DATASETS = ("shapes", "shapes_64")


def latent_config() -> ml_collections.ConfigDict:
    """``config.latent``: diffusion in an autoencoder's latent space (any run)."""
    return ml_collections.ConfigDict({
        # A trained autoencoder's workdir or a diffusers AutoencoderKL folder; None = pixels.
        "autoencoder": ml_collections.FieldReference(None, field_type=str),
        # The run trains on scale * (z - shift); None = the autoencoder's own (measured on
        # its data when it was trained, or the diffusers folder's scaling/shift factors).
        "scale": ml_collections.FieldReference(None, field_type=float),
        "shift": ml_collections.FieldReference(None, field_type=float),
        # Standardise each latent channel by its own mean and std over the autoencoder's
        # training data (EDM2, Karras et al. 2024) instead of one scale and shift for all
        # entries (LDM): a channel of small variance is otherwise drowned by the noise
        # earlier than the others. Needs a diffjax autoencoder run (its data is known).
        "per_channel": False,
        # z drawn from the encoder's posterior (SD, DiT) or its mean.
        "sample_posterior": True,
        # Encode the training split once and read the stored posteriors (diffjax.autoencoder.
        # cache) instead of encoding every batch inside the step; cache_dir: where
        # (None = ~/.cache/diffjax/latents).
        "cache": False,
        "cache_dir": ml_collections.FieldReference(None, field_type=str),
    })


def autoencoder_config() -> ml_collections.ConfigDict:
    """``config.autoencoder``: the loss and statistics of ``task = "autoencoder"``."""
    return ml_collections.ConfigDict({
        "reconstruction": "l1",        # l1 | l2, per pixel
        # KL(q(z|x) || N(0, I)) in nats per image, over the pixel count (SD: 1e-6).
        "kl_weight": 1e-6,
        # weight of the error of the image gradients (edges; Mathieu et al. 2016); 0 = off
        "gradient_weight": 0.0,
        # The PatchGAN's hinge loss (Esser et al. 2021, LDM's first stage; needs
        # model.disc_channels > 0): its weight (LDM: 0.5; 0 = off), times the adaptive
        # weight, and the step it starts at (the discriminator trains from then on too).
        "disc_weight": 0.0,
        "disc_start": 0,
        # Train examples whose latents give the stored shift and scale.
        "stats_examples": 2048,
    })


@dataclasses.dataclass(frozen=True)
class Description:
    """An autoencoder named by ``config.latent.autoencoder``: a run or a diffusers folder."""

    kind: str  # "run" | "diffusers"
    path: str
    factor: int
    latent_channels: int
    image_channels: int


def latent_dir(config: Any) -> Optional[str]:
    """``config.latent.autoencoder`` or None."""
    group = config.get("latent") if hasattr(config, "get") else None
    value = group.get("autoencoder") if group else None
    return str(value) if value else None


def describe(path: str) -> Description:
    """Reads the autoencoder's ``config.json``.

    Raises:
      ConfigError: neither an autoencoder run nor a diffusers folder, naming the key.
    """
    path = os.path.abspath(os.path.expanduser(path))
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise ConfigError(f"config.{KEY}={path}: no config.json there; name a trained "
                          "autoencoder's workdir (configs/shapes_autoencoder.py) or a "
                          "diffusers AutoencoderKL folder")
    with open(file, encoding="utf-8") as f:
        cfg = json.load(f)
    if "model" in cfg:  # a diffjax run
        model = cfg["model"]
        if model.get("arch") != "autoencoder":
            raise ConfigError(f"config.{KEY}={path} holds a run of model.arch="
                              f"{model.get('arch')!r}; valid choices: a run of "
                              "model.arch='autoencoder' or a diffusers AutoencoderKL folder")
        return Description("run", path, 2 ** (len(model["block_out_channels"]) - 1),
                           int(model["latent_channels"]), int(model.get("image_channels", 3)))
    if "block_out_channels" in cfg:
        return Description("diffusers", path, 2 ** (len(cfg["block_out_channels"]) - 1),
                           int(cfg.get("latent_channels", 4)), int(cfg.get("in_channels", 3)))
    raise ConfigError(f"config.{KEY}={path}: its config.json is neither a diffjax run's nor "
                      "a diffusers AutoencoderKL's")


def data_info(config: Any, info: Any) -> Any:
    """The DataInfo of what the network models: ``info`` itself, or with
    ``config.latent.autoencoder`` set the latents ``[H/f, W/f, latent_channels]``.

    Raises:
      ConfigError: the autoencoder does not fit the data.
    """
    path = latent_dir(config)
    if path is None:
        return info
    d = describe(path)
    if len(info.shape) != 3 or info.kind != "image":
        raise ConfigError(f"config.{KEY} needs images; config.data.dataset="
                          f"{info.name!r} holds {info.kind} of shape {info.shape}")
    h, w, c = info.shape
    if c != d.image_channels or h % d.factor or w % d.factor:
        raise ConfigError(f"config.{KEY}={d.path} encodes {d.image_channels}-channel images "
                          f"by f={d.factor}; config.data.dataset={info.name!r} has shape "
                          f"{info.shape}")
    return dataclasses.replace(info, shape=(h // d.factor, w // d.factor, d.latent_channels))


def check(config: ml_collections.ConfigDict, info: Any) -> None:
    """The checks of ``config.latent``, ``config.autoencoder`` and the ``autoencoder`` task.

    Raises:
      ConfigError: one line naming the key, the value and the valid choices.
    """
    is_task = config.get("task", "denoise") == "autoencoder"
    is_arch = config.model.arch == "autoencoder"
    if is_task != is_arch:
        raise ConfigError(f"config.task={config.get('task')!r} with config.model.arch="
                          f"{config.model.arch!r}: the autoencoder task trains exactly the "
                          "autoencoder arch; set both to 'autoencoder', or neither")
    latent = config.get("latent") or latent_config()
    if latent_dir(config) and is_task:
        raise ConfigError(f"config.{KEY} is set on an autoencoder run; an autoencoder trains "
                          "on pixels (unset it)")
    if not isinstance(latent.get("cache", False), bool):
        raise ConfigError(f"config.latent.cache={latent.get('cache')!r} must be True or False")
    if latent.get("cache", False) and not latent_dir(config):
        raise ConfigError(f"config.latent.cache=True caches the latents of config.{KEY}, "
                          "which is unset; set it, or leave the cache off")
    for key in ("scale", "shift"):
        value = latent.get(key)
        if value is not None and not (key == "shift" or value > 0):
            raise ConfigError(f"config.latent.{key}={value!r} must be > 0")
    per_channel = latent.get("per_channel", False)
    if not isinstance(per_channel, bool):
        raise ConfigError(f"config.latent.per_channel={per_channel!r} must be True or False")
    if per_channel and (latent.get("scale") is not None or latent.get("shift") is not None):
        raise ConfigError("config.latent.per_channel=True measures a scale and shift per "
                          "channel; unset config.latent.scale / shift, or per_channel")
    if per_channel and latent_dir(config) and describe(latent_dir(config)).kind != "run":
        raise ConfigError(f"config.latent.per_channel=True needs channel statistics of the "
                          f"autoencoder's training data; config.{KEY}={latent_dir(config)!r} "
                          "is a diffusers folder (use its scaling_factor, per_channel=False)")
    data_info(config, info)
    if latent_dir(config):
        names = config.eval.metrics
        names = names.split(",") if isinstance(names, str) else list(names)
        model_metrics = [n.strip() for n in names if n.strip() in ("nll", "bits_per_dim")]
        if model_metrics:
            raise ConfigError(f"config.eval.metrics: {model_metrics[0]!r} would be the "
                              f"likelihood of latents, not of config.data.dataset's images; "
                              f"with config.{KEY} set use sample metrics (e.g. fd_shapes)")
    if not is_task:
        return
    group = config.get("autoencoder") or autoencoder_config()
    if group.get("reconstruction") not in RECONSTRUCTIONS:
        raise ConfigError(f"config.autoencoder.reconstruction={group.get('reconstruction')!r} "
                          f"is not valid; valid choices: {', '.join(RECONSTRUCTIONS)}")
    for key in ("kl_weight", "gradient_weight", "disc_weight"):
        if not group.get(key, 0.0) >= 0:
            raise ConfigError(f"config.autoencoder.{key}={group.get(key)!r} must be >= 0")
    start = group.get("disc_start", 0)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(f"config.autoencoder.disc_start={start!r} must be an int >= 0")
    if group.get("disc_weight", 0.0) > 0 and not config.model.get("disc_channels", 0):
        raise ConfigError(f"config.autoencoder.disc_weight={group.get('disc_weight')!r} needs a "
                          "discriminator: set config.model.disc_channels (e.g. 64; 0 = none)")
    n = group.get("stats_examples")
    if not isinstance(n, int) or n < 2:
        raise ConfigError(f"config.autoencoder.stats_examples={n!r} must be an int >= 2")
    for name in metric_names(config):
        if name not in METRICS:
            raise ConfigError(f"config.eval.metrics: {name!r} is not a metric of an "
                              f"autoencoder run; valid choices: {', '.join(METRICS)}")
        if name == "fd_shapes_recon" and config.data.dataset not in SHAPES_DATASETS:
            raise ConfigError(f"config.eval.metrics: 'fd_shapes_recon' needs shapes data; "
                              f"config.data.dataset={config.data.dataset!r}; valid choices: "
                              f"{', '.join(SHAPES_DATASETS)}")


def metric_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The metrics of an autoencoder run's evaluation (``config.eval.metrics``, or the
    default: ``psnr``, and ``fd_shapes_recon`` on shapes)."""
    names = config.eval.metrics
    if isinstance(names, str):
        names = tuple(n.strip() for n in names.split(",") if n.strip())
    if names:
        return tuple(names)
    return ("psnr",) + (("fd_shapes_recon",) if config.data.dataset in SHAPES_DATASETS else ())
