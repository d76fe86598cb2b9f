"""Networks (Flax Linen) and their registry.

Every architecture has the same call:
``model.apply(variables, x, noise_cond, cond=None, train=False, rngs={"dropout": key})`` →
float32 array shaped like ``x``. ``noise_cond: [B]`` is whatever number the caller chooses (t,
EDM's c_noise, ...); ``cond`` is the condition dict of :mod:`diffjax.conditions` (e.g.
``{"label": [B] ints in [0, num_classes]}`` with ``num_classes`` the null label of classifier-free
guidance), or None.

Build from a config with :func:`from_config`; check a config without building with
:func:`validate`.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from diffjax.models.layers import EMBEDDINGS
from diffjax.models.mlp import MLP, check_mlp
from diffjax.models.unet import UNet, check_unet

ARCHS: dict[str, type[nn.Module]] = {"unet": UNet, "mlp": MLP}
_CHECKS = {"unet": check_unet, "mlp": check_mlp}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

_COMMON_KEYS = ("arch", "class_conditional", "dtype", "embedding", "embedding_scale", "dropout")
_ARCH_KEYS = {
    "unet": _COMMON_KEYS + ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_heads",
                            "resblock_updown", "scale_shift"),
    "mlp": _COMMON_KEYS + ("hidden", "depth"),
}
# Keys of config.model read by the recipe (objective, preconditioning), not by the network.
RECIPE_KEYS = ("target", "preconditioning", "sigma_data")

__all__ = ["ARCHS", "EMBEDDINGS", "MLP", "UNet", "count_params", "default_mlp_config",
           "default_unet_config", "from_config", "get", "validate"]


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r} is unknown; valid choices: {', '.join(ARCHS)}")


def get(arch: str, **kwargs: Any) -> nn.Module:
    """Builds architecture ``arch`` ("unet" | "mlp") with the given module fields."""
    _check_arch(arch)
    cls = ARCHS[arch]
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    for key in kwargs:
        if key not in fields:
            raise ValueError(f"{key!r} is not a field of {cls.__name__}; valid fields: "
                             f"{', '.join(fields)}")
    return cls(**kwargs)


def _module_kwargs(model_cfg: Mapping[str, Any], data_shape: Sequence[int],
                   num_classes: int | None) -> tuple[str, dict[str, Any]]:
    """Checks ``model_cfg`` and returns ``(arch, module fields)``; raises ValueError naming the key.

    ``num_classes=None`` skips the check that ``class_conditional`` has classes to condition on.
    """
    cfg = dict(model_cfg)
    if "arch" not in cfg:
        raise ValueError(f"model.arch is missing; valid choices: {', '.join(ARCHS)}")
    arch = cfg["arch"]
    _check_arch(arch)
    other = {k for a, keys in _ARCH_KEYS.items() if a != arch for k in keys}
    for key in cfg:
        if key not in _ARCH_KEYS[arch] and key not in other and key not in RECIPE_KEYS:
            raise ValueError(f"model.{key} is not a setting of arch {arch!r}; valid keys: "
                             f"{', '.join(_ARCH_KEYS[arch])}")

    kwargs = {k: cfg[k] for k in _ARCH_KEYS[arch] if k in cfg}
    kwargs.pop("arch")
    dtype = kwargs.pop("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is unknown; valid choices: {', '.join(DTYPES)}")
    kwargs["dtype"] = DTYPES[dtype]

    conditional = bool(kwargs.pop("class_conditional", False))
    if conditional and num_classes is not None and num_classes < 1:
        raise ValueError(f"model.class_conditional=True but the data has num_classes="
                         f"{num_classes}; set model.class_conditional=False")
    kwargs["num_classes"] = (num_classes or 0) if conditional else 0

    # Lists come from YAML/CLI overrides; Flax module fields must be hashable.
    for key in ("ch_mult", "attn_resolutions"):
        if key in kwargs:
            value = kwargs[key]
            kwargs[key] = (value,) if isinstance(value, int) else tuple(value)

    check = _CHECKS[arch]
    defaults = {f.name: f.default for f in dataclasses.fields(ARCHS[arch])}
    checked = [p for p in inspect.signature(check).parameters if p != "data_shape"]
    check(tuple(data_shape), **{k: kwargs.get(k, defaults[k]) for k in checked})
    return arch, kwargs


def validate(model_cfg: Mapping[str, Any], data_shape: Sequence[int],
             num_classes: int | None = None) -> None:
    """Raises the ValueError :func:`from_config` would raise, without building anything.

    Args:
      model_cfg: ``config.model``.
      data_shape: shape of one example, (H, W, C) for "unet", (D,) for "mlp".
      num_classes: number of classes of the data, if known.
    """
    _module_kwargs(model_cfg, data_shape, num_classes)


def from_config(model_cfg: Mapping[str, Any], *, data_shape: Sequence[int],
                num_classes: int) -> nn.Module:
    """Builds the network described by ``config.model``.

    Args:
      model_cfg: ``config.model`` with ``arch`` and that arch's keys (see
        :func:`default_unet_config`, :func:`default_mlp_config`); keys of the other arch and the
        recipe keys ``target``, ``preconditioning``, ``sigma_data`` are ignored, any other key is
        an error.
      data_shape: shape of one example, (H, W, C) for "unet", (D,) for "mlp".
      num_classes: number of classes of the data; used only if ``model_cfg.class_conditional``.

    Returns:
      An unbound ``nn.Module`` whose output has the shape of its input.
    """
    arch, kwargs = _module_kwargs(model_cfg, data_shape, num_classes)
    return ARCHS[arch](**kwargs)


def default_unet_config() -> ml_collections.ConfigDict:
    """A U-Net small enough to train on 8x8 digits on a 2-core CPU (0.28M parameters).

    Two levels of 32 channels (8x8 and 4x4) keep the full-resolution level as wide as the
    bottleneck, where most of the digits' detail lives; attention runs at 4x4 (16 positions).

    For CIFAR-10 DDPM++ use ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4,
    attn_resolutions=(16,), dropout=0.1.
    """
    cfg = ml_collections.ConfigDict()
    cfg.arch = "unet"
    cfg.ch = 32
    cfg.ch_mult = (1, 1)
    cfg.num_res_blocks = 1
    cfg.attn_resolutions = (4,)
    cfg.dropout = 0.1
    cfg.num_heads = 1
    cfg.embedding = "sinusoidal"
    # None → the embedding's default (1000 for sinusoidal with noise_cond in [0, 1], 16 for
    # fourier); typed so that `--config.model.embedding_scale=...` can override it.
    cfg.embedding_scale = ml_collections.FieldReference(None, field_type=float)
    cfg.resblock_updown = False
    cfg.scale_shift = False
    cfg.class_conditional = False
    cfg.dtype = "float32"
    return cfg


def default_mlp_config() -> ml_collections.ConfigDict:
    """A residual MLP for 2-D toy data (0.17M parameters)."""
    cfg = ml_collections.ConfigDict()
    cfg.arch = "mlp"
    cfg.hidden = 128
    cfg.depth = 3
    cfg.embedding = "sinusoidal"
    cfg.embedding_scale = ml_collections.FieldReference(None, field_type=float)
    cfg.dropout = 0.0
    cfg.class_conditional = False
    cfg.dtype = "float32"
    return cfg


def count_params(variables: Any) -> int:
    """Number of scalars in ``variables["params"]`` (or in the whole tree if it has no "params")."""
    if isinstance(variables, Mapping) and "params" in variables:
        variables = variables["params"]
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(variables))
