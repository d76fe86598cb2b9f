"""The one registry of networks, keyed by ``config.model.arch``, and everything derived from it.

Each architecture registers its module class, its config check and its default config. The
valid ``config.model`` keys of an arch are derived from its module's fields (less the ones the
data decides: ``num_classes``, ``out_channels``), plus ``arch`` and ``class_conditional``; so a
new field is a new config key with no second list to update.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from diffjax.autoencoder.model import AutoencoderKL, check_autoencoder
from diffjax.models.dit import DiT, check_dit
from diffjax.models.mlp import MLP, check_mlp
from diffjax.models.mmdit import MMDiT, check_mmdit
from diffjax.models.unet import UNet, check_unet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Keys of config.model read by others than the network: the recipe (objective,
# preconditioning) and the text encoder.
RECIPE_KEYS = ("target", "preconditioning", "sigma_data", "text_encoder")

# Module fields the data or the framework sets, never the config.
_NOT_CONFIG = ("parent", "name", "num_classes", "out_channels", "out_dim", "param_dtype")


def _typed_none(kind: type) -> ml_collections.FieldReference:
    """A None default that ``--config.model.key=...`` can still override with a ``kind``."""
    return ml_collections.FieldReference(None, field_type=kind)


def default_unet_config() -> ml_collections.ConfigDict:
    """A U-Net small enough to train on 8x8 digits on a 2-core CPU (0.28M parameters).

    Two levels of 32 channels (8x8 and 4x4) keep the full-resolution level as wide as the
    bottleneck, where most of the digits' detail lives; attention runs at 4x4 (16 positions).

    For CIFAR-10 DDPM++ use ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4,
    attn_resolutions=(16,), dropout=0.1. For text, set cross_attn_resolutions (and context_dim).
    """
    return ml_collections.ConfigDict({
        "arch": "unet", "ch": 32, "ch_mult": (1, 1), "num_res_blocks": 1,
        "attn_resolutions": (4,), "cross_attn_resolutions": (), "context_dim": _typed_none(int),
        "dropout": 0.1, "num_heads": 1, "embedding": "sinusoidal",
        # None → the embedding's default (1000 for sinusoidal with noise_cond in [0, 1], 16 for
        # fourier).
        "embedding_scale": _typed_none(float), "resblock_updown": False, "scale_shift": False,
        "remat": False, "position_embedding": "none", "attn_implementation": _typed_none(str),
        "class_conditional": False, "dtype": "float32"})


def default_mlp_config() -> ml_collections.ConfigDict:
    """A residual MLP for 2-D toy data (0.17M parameters)."""
    return ml_collections.ConfigDict({
        "arch": "mlp", "hidden": 128, "depth": 3, "embedding": "sinusoidal",
        "embedding_scale": _typed_none(float), "dropout": 0.0, "class_conditional": False,
        "dtype": "float32"})


def default_dit_config() -> ml_collections.ConfigDict:
    """DiT-S/2 (Peebles & Xie 2023); ``depth``/``hidden``/``num_heads``/``patch_size`` override
    the size's row of the table when set."""
    return ml_collections.ConfigDict({
        "arch": "dit", "size": "S/2", "depth": _typed_none(int), "hidden": _typed_none(int),
        "num_heads": _typed_none(int), "patch_size": _typed_none(int), "mlp_ratio": 4.0,
        "cross_attn": False, "context_dim": _typed_none(int), "embedding": "sinusoidal",
        "embedding_scale": _typed_none(float), "remat": False,
        "attn_implementation": _typed_none(str), "class_conditional": False,
        "dtype": "float32"})


def default_mmdit_config() -> ml_collections.ConfigDict:
    """A depth-12 MMDiT (Esser et al. 2024): width 64 * depth and depth heads unless set."""
    return ml_collections.ConfigDict({
        "arch": "mmdit", "depth": 12, "hidden": _typed_none(int), "num_heads": _typed_none(int),
        "patch_size": 2, "mlp_ratio": 4.0, "context_dim": _typed_none(int),
        "embedding": "sinusoidal", "embedding_scale": _typed_none(float), "remat": False,
        "attn_implementation": _typed_none(str), "class_conditional": False,
        "dtype": "float32"})


def default_autoencoder_config() -> ml_collections.ConfigDict:
    """The KL autoencoder of ``task = "autoencoder"`` (SD's AutoencoderKL design), f = 4 on
    32x32 shapes: 8x8x4 latents (:mod:`diffjax.autoencoder.model`)."""
    return ml_collections.ConfigDict({
        "arch": "autoencoder", "block_out_channels": (32, 64, 64), "layers_per_block": 1,
        "latent_channels": 4, "norm_num_groups": 16, "mid_attention": True,
        "use_quant_conv": True, "use_post_quant_conv": True, "image_channels": 3,
        "disc_channels": 0, "disc_layers": 3, "class_conditional": False, "dtype": "float32"})


@dataclasses.dataclass(frozen=True)
class Arch:
    """A registered network: its module, its check ``check(data_shape, **fields)`` (raises
    ValueError naming ``model.<key>``), its default config and the data it takes."""
    module: type[nn.Module]
    check: Callable[..., None]
    default_config: Callable[[], ml_collections.ConfigDict]
    data: str

    def fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.module) if f.name not in _NOT_CONFIG)

    def config_keys(self) -> tuple[str, ...]:
        return ("arch", "class_conditional") + self.fields()


ARCHS: dict[str, Arch] = {
    "unet": Arch(UNet, check_unet, default_unet_config, "images (H, W, C)"),
    "mlp": Arch(MLP, check_mlp, default_mlp_config, "vectors (D,)"),
    "dit": Arch(DiT, check_dit, default_dit_config, "images or latents (H, W, C)"),
    "mmdit": Arch(MMDiT, check_mmdit, default_mmdit_config, "images or latents (H, W, C)"),
    "autoencoder": Arch(AutoencoderKL, check_autoencoder, default_autoencoder_config,
                        "images (H, W, C)"),
}


def check_arch(arch: str) -> Arch:
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r} is unknown; valid choices: {', '.join(ARCHS)}")
    return ARCHS[arch]


def default_config(arch: str) -> ml_collections.ConfigDict:
    """The default ``config.model`` network keys of ``arch``."""
    return check_arch(arch).default_config()


def get(arch: str, **kwargs: Any) -> nn.Module:
    """Builds architecture ``arch`` with the given module fields."""
    cls = check_arch(arch).module
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    for key in kwargs:
        if key not in fields:
            raise ValueError(f"{key!r} is not a field of {cls.__name__}; valid fields: "
                             f"{', '.join(fields)}")
    return cls(**kwargs)


def _hashable(value: Any) -> Any:
    """Lists from YAML/CLI overrides as tuples: Flax module fields must be hashable."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def module_kwargs(model_cfg: Mapping[str, Any], data_shape: Sequence[int],
                  num_classes: int | None) -> tuple[str, dict[str, Any]]:
    """Checks ``model_cfg`` and returns ``(arch, module fields)``; raises ValueError naming the key.

    ``num_classes=None`` skips the check that ``class_conditional`` has classes to condition on.
    """
    cfg = dict(model_cfg)
    if "arch" not in cfg:
        raise ValueError(f"model.arch is missing; valid choices: {', '.join(ARCHS)}")
    arch = cfg["arch"]
    entry = check_arch(arch)
    keys = entry.config_keys()
    other = {k for a in ARCHS.values() for k in a.config_keys()}
    for key in cfg:
        if key not in other and key not in RECIPE_KEYS:
            raise ValueError(f"model.{key} is not a setting of arch {arch!r}; valid keys: "
                             f"{', '.join(keys)}")

    kwargs = {k: _hashable(cfg[k]) for k in entry.fields() if k in cfg}
    dtype = kwargs.pop("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is unknown; valid choices: {', '.join(DTYPES)}")
    kwargs["dtype"] = DTYPES[dtype]
    conditional = bool(cfg.get("class_conditional", False))
    if conditional and num_classes is not None and num_classes < 1:
        raise ValueError(f"model.class_conditional=True but the data has num_classes="
                         f"{num_classes}; set model.class_conditional=False")
    kwargs["num_classes"] = (num_classes or 0) if conditional else 0

    defaults = {f.name: f.default for f in dataclasses.fields(entry.module)}
    checked = [p for p in inspect.signature(entry.check).parameters if p != "data_shape"]
    entry.check(tuple(data_shape), **{k: kwargs.get(k, defaults[k]) for k in checked})
    return arch, kwargs
