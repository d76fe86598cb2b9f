"""Stable Diffusion's VAE in JAX: a diffusers-format ``AutoencoderKL`` folder read into
:class:`diffjax.autoencoder.model.AutoencoderKL`, with no torch at run time.

A folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (e.g.
``stabilityai/sd-vae-ft-ema``, downloaded by the user). Weights are read with the
``safetensors`` library as NumPy arrays and converted: convolutions OIHW -> HWIO, linear
layers (out, in) -> (in, out), norms' ``weight`` -> ``scale``. The older attention names
(``query``/``key``/``value``/``proj_attn``, 1x1-convolution shaped) load too. A missing,
unexpected or wrongly shaped weight is an error naming the key.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffjax import xla_options
from diffjax.autoencoder.model import AutoencoderKL, factor

Array = jax.Array
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# New attention names -> the names of diffusers' older checkpoints.
_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


class VAEWeightsError(ValueError):
    """A diffusers VAE folder whose config or weights do not fit the autoencoder."""


@dataclasses.dataclass(frozen=True)
class VAE:
    """A loaded autoencoder: ``encode(x) -> (mean, logvar)``, ``decode(z) -> x``.

    ``x: [B, H, W, C]`` float in [-1, 1] (NHWC); ``mean, logvar, z: [B, H/f, W/f, latent]``.
    ``scaling_factor`` / ``shift_factor`` are the folder's (SD: 0.18215 / 0): diffusion
    models are trained on ``scaling_factor * (z - shift_factor)``.
    """

    module: AutoencoderKL
    params: Any
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    @property
    def factor(self) -> int:
        return factor(self.module.block_out_channels)

    def encode(self, x: Array) -> tuple[Array, Array]:
        return _encode(self.module, self.params, jnp.asarray(x, jnp.float32))

    def decode(self, z: Array) -> Array:
        return _decode(self.module, self.params, jnp.asarray(z, jnp.float32))


@functools.partial(xla_options.jit, static_argnums=0)
def _encode(module: AutoencoderKL, params: Any, x: Array) -> tuple[Array, Array]:
    return module.apply({"params": params}, x, method=AutoencoderKL.encode)


@functools.partial(xla_options.jit, static_argnums=0)
def _decode(module: AutoencoderKL, params: Any, z: Array) -> Array:
    return module.apply({"params": params}, z, method=AutoencoderKL.decode)


def read_config(path: str) -> dict[str, Any]:
    """The ``config.json`` of a diffusers VAE folder.

    Raises:
      VAEWeightsError: no such file, or a VAE this autoencoder does not implement.
    """
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise VAEWeightsError(f"{path} is not a diffusers AutoencoderKL folder: no {CONFIG_FILE}")
    with open(file, encoding="utf-8") as f:
        config = json.load(f)
    for key, allowed in (("down_block_types", "DownEncoderBlock2D"),
                         ("up_block_types", "UpDecoderBlock2D")):
        bad = [b for b in config.get(key, [allowed]) if b != allowed]
        if bad:
            raise VAEWeightsError(f"{file}: {key} holds {bad[0]!r}; only {allowed!r} is "
                                  "implemented")
    if config.get("act_fn", "silu") != "silu":
        raise VAEWeightsError(f"{file}: act_fn={config['act_fn']!r}; only 'silu' is implemented")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise VAEWeightsError(f"{file}: in_channels={config.get('in_channels')} differs from "
                              f"out_channels={config.get('out_channels')}")
    return config


def module_from_config(config: Mapping[str, Any], dtype: Any = jnp.float32) -> AutoencoderKL:
    """The autoencoder a diffusers ``config.json`` describes (its defaults where unset)."""
    return AutoencoderKL(
        block_out_channels=tuple(config.get("block_out_channels", (64,))),
        layers_per_block=int(config.get("layers_per_block", 1)),
        latent_channels=int(config.get("latent_channels", 4)),
        norm_num_groups=int(config.get("norm_num_groups", 32)),
        mid_attention=bool(config.get("mid_block_add_attention", True)),
        use_quant_conv=bool(config.get("use_quant_conv", True)),
        use_post_quant_conv=bool(config.get("use_post_quant_conv", True)),
        image_channels=int(config.get("in_channels", 3)), dtype=dtype)


def torch_key(path: tuple[str, ...]) -> str:
    """``("encoder", "down_blocks_0", "resnets_1", "conv1", "kernel")`` ->
    ``"encoder.down_blocks.0.resnets.1.conv1.weight"``."""
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
    return ".".join([re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]] + [leaf])


def _legacy_key(key: str) -> str:
    for new, old in _LEGACY.items():
        key = key.replace(f".{new}.", f".{old}.")
    return key


def to_flax(value: np.ndarray, ndim: int) -> np.ndarray:
    """A torch-layout weight as the Flax layout of a ``ndim``-dimensional parameter."""
    if ndim == 4:  # conv: OIHW -> HWIO
        return np.transpose(value, (2, 3, 1, 0))
    if ndim == 2:  # linear (out, in) -> (in, out); legacy 1x1 convs (out, in, 1, 1) too
        return np.transpose(value.reshape(value.shape[:2]))
    return value


def convert(state: Mapping[str, np.ndarray], module: AutoencoderKL,
            where: str = "state dict") -> Any:
    """Flax parameters of ``module`` from a diffusers state dict ``{key: ndarray}``.

    Raises:
      VAEWeightsError: a missing or unexpected key, or a shape that does not fit, naming it.
    """
    size = 2 * factor(module.block_out_channels)
    x = jnp.zeros((1, size, size, module.image_channels), jnp.float32)
    abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))
    flat = traverse_util.flatten_dict(abstract["params"])
    used, out = set(), {}
    for path, leaf in flat.items():
        key = torch_key(path)
        name = key if key in state else _legacy_key(key)
        if name not in state:
            raise VAEWeightsError(f"{where}: weight {key!r} is missing (parameter "
                                  f"{'/'.join(path)} of the autoencoder its config describes)")
        value = np.asarray(state[name], np.float32)
        value = to_flax(value, len(leaf.shape)) if value.ndim > 1 else value
        if tuple(value.shape) != tuple(leaf.shape):
            raise VAEWeightsError(f"{where}: weight {name!r} has shape {tuple(state[name].shape)}"
                                  f", which does not fit parameter {'/'.join(path)} of shape "
                                  f"{tuple(leaf.shape)} (Flax layout)")
        used.add(name)
        out[path] = jnp.asarray(value)
    extra = sorted(set(state) - used)
    if extra:
        raise VAEWeightsError(f"{where}: unexpected weight {extra[0]!r} ({len(extra)} key(s) "
                              "the config's autoencoder has no parameter for)")
    return traverse_util.unflatten_dict(out)


def read_weights(path: str) -> dict[str, np.ndarray]:
    """The state dict of ``path/diffusion_pytorch_model.safetensors`` as NumPy arrays."""
    from safetensors import numpy as st_numpy  # deferred: only this loader needs it

    file = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(file):
        raise VAEWeightsError(f"{path} is not a diffusers AutoencoderKL folder: no {WEIGHTS_FILE}")
    return st_numpy.load_file(file)


def load_diffusers_vae(path: str, dtype: Any = jnp.float32) -> VAE:
    """Reads a diffusers-format AutoencoderKL folder into a :class:`VAE`.

    Args:
      path: a folder with ``config.json`` and ``diffusion_pytorch_model.safetensors``.
      dtype: the computation dtype (parameters stay float32).

    Raises:
      VAEWeightsError: not such a folder, an unsupported config, or weights that do not
        match it (naming the key).
    """
    path = os.path.abspath(os.path.expanduser(path))
    config = read_config(path)
    module = module_from_config(config, dtype)
    params = convert(read_weights(path), module, os.path.join(path, WEIGHTS_FILE))
    shift = config.get("shift_factor")
    return VAE(module, params, float(config.get("scaling_factor", 0.18215)),
               float(shift) if shift is not None else 0.0)
