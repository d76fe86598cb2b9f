"""Diffusion in an autoencoder's latent space (Rombach et al. 2022), for any task.

``config.latent.autoencoder = DIR`` (a trained autoencoder run, or a diffusers AutoencoderKL
folder) changes a run in three places, nowhere else:

* the network models ``[H/f, W/f, latent_channels]`` (:func:`diffjax.autoencoder.spec.data_info`);
* the task (:data:`diffjax.training.tasks.WRAPPERS`) sees ``x = scale * (z - shift)``,
  ``z ~ q(z|pixels)`` encoded inside the jitted step by the frozen encoder, whose parameters
  are the step's ``frozen["latent.autoencoder"]`` argument, read by reference through
  :mod:`diffjax.training.frozen` (identity recorded; a changed autoencoder refused on resume);
  conditions, paths, targets and the task itself are untouched;
* every sampled batch is decoded (``z / scale + shift`` through the decoder) before figures and
  metrics (:data:`diffjax.training.evaluation.DECODERS`).

``scale``/``shift``: ``config.latent.scale``/``shift`` when set; else the run's
``latent_stats.json`` (measured on its training data when it was evaluated), measured afresh
when that file does not belong to the checkpoint read; a diffusers folder's
``scaling_factor``/``shift_factor``. ``config.latent.per_channel``: one scale and shift per
latent channel from the same statistics (EDM2's standardisation), broadcast on the last axis.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp

from diffjax import xla_options
from diffjax.autoencoder import spec
from diffjax.autoencoder import task as ae_task
from diffjax.autoencoder.diffusers import CONFIG_FILE, VAE, load_diffusers_vae
from diffjax.autoencoder.model import AutoencoderKL
from diffjax.training import evaluation, frozen, tasks

Array = jax.Array
KEY = spec.KEY
SCHEME = "diffusers"
_POSTERIOR_SALT = 0x1A7E  # folds the step's key into the posterior noise's key


@dataclasses.dataclass(frozen=True)
class VAEReference(frozen.Reference):
    """A diffusers folder as a frozen reference (its ``setup`` is None)."""

    vae: Optional[VAE] = None


def load_diffusers_reference(key: str, value: str) -> VAEReference:
    """``"diffusers:<folder>"`` -> the folder's VAE, identified by its config and weights."""
    path = value.split(":", 1)[1]
    vae = load_diffusers_vae(path)
    with open(os.path.join(path, CONFIG_FILE), "rb") as f:
        config_sha = hashlib.sha256(f.read()).hexdigest()
    identity = {"workdir": value, "step": 0, "config_sha256": config_sha,
                "params_sha256": frozen.params_digest(vae.params)}
    return VAEReference(key, None, vae.params, identity, vae)


frozen.register_scheme(SCHEME, load_diffusers_reference)


def reference_value(config) -> str:
    """What ``frozen.load`` reads for ``config.latent.autoencoder``."""
    d = spec.describe(spec.latent_dir(config))
    return f"{SCHEME}:{d.path}" if d.kind == "diffusers" else d.path


@dataclasses.dataclass(frozen=True)
class Latents:
    """The frozen autoencoder as a latent run reads it: ``x = scale * (z - shift)``
    (``scale``, ``shift``: floats, or tuples over the channels, the last axis)."""

    module: AutoencoderKL
    scale: Union[float, tuple[float, ...]]
    shift: Union[float, tuple[float, ...]]
    sample_posterior: bool = True

    def encode(self, params: Any, pixels: Array, eps: Optional[Array] = None) -> Array:
        mean, logvar = self.module.apply({"params": params}, pixels, method=AutoencoderKL.encode)
        return self.from_moments(mean, logvar, eps)

    def from_moments(self, mean: Array, logvar: Array, eps: Optional[Array] = None) -> Array:
        """``scale * (z - shift)``, ``z`` the posterior's mean or ``mean + std * eps``."""
        z = mean if eps is None else mean + jnp.exp(0.5 * logvar) * eps
        return (jnp.asarray(self.scale, z.dtype) * (z - jnp.asarray(self.shift, z.dtype)))

    def decode(self, params: Any, x: Array) -> Array:
        z = x / jnp.asarray(self.scale, x.dtype) + jnp.asarray(self.shift, x.dtype)
        return self.module.apply({"params": params}, z, method=AutoencoderKL.decode)


def latents_of(reference: frozen.Reference, config) -> Latents:
    """The :class:`Latents` of a loaded reference, ``config.latent`` overriding scale/shift."""
    group = config.get("latent") or spec.latent_config()
    per_channel = bool(group.get("per_channel", False))
    if isinstance(reference, VAEReference):
        module, scale, shift = reference.vae.module, reference.vae.scaling_factor, \
            reference.vae.shift_factor
    else:
        module = reference.setup.net
        stats = ae_task.read_stats(reference.identity["workdir"])
        if (stats is None or stats.get("params_sha256") != reference.identity["params_sha256"]
                or (per_channel and "channel_std" not in stats)):   # (older stats files)
            stats = ae_task.measure_stats(reference.setup.config, module, reference.params)
        scale, shift = stats["scale"], stats["shift"]
        if per_channel:
            scale = tuple(1.0 / float(v) for v in stats["channel_std"])
            shift = tuple(float(v) for v in stats["channel_mean"])
            return Latents(module, scale, shift, bool(group.get("sample_posterior", True)))
    scale = group.get("scale") if group.get("scale") is not None else scale
    shift = group.get("shift") if group.get("shift") is not None else shift
    return Latents(module, float(scale), float(shift), bool(group.get("sample_posterior", True)))


@dataclasses.dataclass(frozen=True)
class LatentTask:
    """``inner`` trained on the latents of ``frozen[KEY]``'s encoder."""

    inner: Any
    latents: Latents

    @property
    def reads_step(self) -> bool:
        return getattr(self.inner, "reads_step", False)

    def loss(self, params, batch, key, frozen_params, rows=None):
        ae_params = frozen_params[KEY]
        rest = {k: v for k, v in frozen_params.items() if k != KEY}
        batch = dict(batch)
        logvar = batch.pop("x_logvar", None)  # cached moments (diffjax.autoencoder.cache)
        data = batch["x"]
        if logvar is None:
            shape = jax.eval_shape(lambda p: self.latents.encode(ae_params, p), data).shape
        else:
            shape = data.shape
        eps = None
        if self.latents.sample_posterior:  # the same draw whether encoded here or cached
            total = shape[0] if rows is None else rows.total
            eps = jax.random.normal(jax.random.fold_in(key, _POSTERIOR_SALT),
                                    (total,) + shape[1:], data.dtype)
            eps = eps if rows is None else rows.take(eps)
        if logvar is None:
            x = self.latents.encode(ae_params, data, eps)
        else:
            x = self.latents.from_moments(data, logvar, eps)
        x = jax.lax.stop_gradient(x)
        return self.inner.loss(params, {**batch, "x": x}, key, rest, rows)


def _without_key(references):
    return {k: v for k, v in references.items() if k != KEY}


def wrap(config, inner: tasks.TaskSpec) -> tasks.TaskSpec:
    """``inner`` on latents when ``config.latent.autoencoder`` is set; else ``inner``."""
    if spec.latent_dir(config) is None:
        return inner

    def references(cfg):
        return {**inner.references(cfg), KEY: reference_value(cfg)}

    def build(setup, refs):
        return LatentTask(inner.build(setup, _without_key(refs)), latents_of(refs[KEY], config))

    def initialize(state, refs):
        return inner.initialize(state, _without_key(refs))

    return tasks.TaskSpec(build, references, initialize, inner.evaluator)


tasks.WRAPPERS.append(wrap)


def decoder(config) -> Optional[Callable[[Array], Array]]:
    """``decode(x) -> images`` of a latent run's samples (None for a pixel run)."""
    if spec.latent_dir(config) is None:
        return None
    reference = frozen.load(KEY, reference_value(config))
    latents = latents_of(reference, config)
    fn = xla_options.jit(latents.decode)
    return lambda x: fn(reference.params, x)


evaluation.DECODERS.append(decoder)
