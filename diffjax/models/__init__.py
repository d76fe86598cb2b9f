"""Networks (Flax Linen) and their registry.

Every architecture has the same call:
``model.apply(variables, x, noise_cond, cond=None, train=False, rngs={"dropout": key})`` →
float32 array shaped like ``x``. ``noise_cond: [B]`` is whatever number the caller chooses (t,
EDM's c_noise, ...); ``cond`` is the condition dict of :mod:`diffjax.conditions` (e.g.
``{"label": [B] ints in [0, num_classes]}`` with ``num_classes`` the null label of classifier-free
guidance; ``{"context": [B, L, D], "context_mask": [B, L]}`` for text), or None.

Architectures (``config.model.arch``, :data:`ARCHS`): ``unet`` (DDPM++/ADM, optional
cross-attention), ``mlp`` (toy data), ``dit`` (diffusion transformer), ``mmdit`` (SD3's joint
image-text transformer). Their shared pieces are in
:mod:`diffjax.models.blocks`. Build from a config with :func:`from_config`; check a config without
building with :func:`validate`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax

from diffjax.models.blocks import EMBEDDINGS
from diffjax.models.dit import DIT_SIZES, DiT
from diffjax.models.mlp import MLP
from diffjax.models.mmdit import MMDiT
from diffjax.models.registry import (ARCHS, DTYPES, RECIPE_KEYS, Arch, default_config,
                                     default_dit_config, default_mlp_config,
                                     default_mmdit_config, default_unet_config, get,
                                     module_kwargs)
from diffjax.models.unet import UNet

__all__ = ["ARCHS", "Arch", "DIT_SIZES", "DTYPES", "DiT", "EMBEDDINGS", "MLP", "MMDiT",
           "RECIPE_KEYS", "UNet", "count_params", "default_config", "default_dit_config",
           "default_mlp_config", "default_mmdit_config", "default_unet_config", "from_config",
           "get", "validate"]


def validate(model_cfg: Mapping[str, Any], data_shape: Sequence[int],
             num_classes: int | None = None) -> None:
    """Raises the ValueError :func:`from_config` would raise, without building anything.

    Args:
      model_cfg: ``config.model``.
      data_shape: shape of one example, (H, W, C) for "unet", "dit", "mmdit"; (D,) for "mlp".
      num_classes: number of classes of the data, if known.
    """
    module_kwargs(model_cfg, data_shape, num_classes)


def from_config(model_cfg: Mapping[str, Any], *, data_shape: Sequence[int],
                num_classes: int) -> nn.Module:
    """Builds the network described by ``config.model``.

    Args:
      model_cfg: ``config.model`` with ``arch`` and that arch's keys (its module's fields, see
        :func:`default_config`); keys of the other archs and :data:`RECIPE_KEYS` are ignored,
        any other key is an error.
      data_shape: shape of one example, (H, W, C) for "unet", "dit", "mmdit"; (D,) for "mlp".
      num_classes: number of classes of the data; used only if ``model_cfg.class_conditional``.

    Returns:
      An unbound ``nn.Module`` whose output has the shape of its input.
    """
    arch, kwargs = module_kwargs(model_cfg, data_shape, num_classes)
    return ARCHS[arch].module(**kwargs)


def count_params(variables: Any) -> int:
    """Number of scalars in ``variables["params"]`` (or in the whole tree if it has no "params")."""
    if isinstance(variables, Mapping) and "params" in variables:
        variables = variables["params"]
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(variables))
