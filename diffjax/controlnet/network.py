"""The ControlNet network: a trainable copy of the base's encoder beside the frozen base.

Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion Models".
The copy reads ``x + zero_conv(control)`` (its own copy of the noise embedding, down path and
middle, initialised from the base's parameters); one zero-initialised 1x1 convolution per skip
connection (and one for the middle) maps its activations to residuals that the base adds to
its own before the up path (:class:`diffjax.models.unet.UNet`'s ``skip_residuals``). A DiT
base's copy is its first ``blocks`` transformer blocks, whose tokens are added through zero
linear layers after the base's same blocks (:class:`diffjax.models.dit.DiT`'s
``block_residuals``). Every
zero convolution starts at exactly 0, so at initialisation the model *is* the base, bit for bit.

Parameters: ``params["base"]`` is the frozen base (another run's, supplied by reference and
never trained or saved here); everything else (``control_in``, ``encoder``, ``zero_<i>``) is
the ControlNet's own. :class:`Controlled` is what a run's setup holds: its ``init`` returns the
ControlNet's own parameters only, its ``apply`` wants the whole tree
(:func:`with_base`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.dit import DiT
from diffjax.models.unet import UNet

BASE = "base"


def _unet_copy(blocks: int) -> dict:
    del blocks  # the whole down path and the middle
    return {"encoder_only": True}


# base class -> (kwargs that make the copy return its features, the base's residual argument)
HOOKS = {UNet: (_unet_copy, "skip_residuals"),
         DiT: (lambda blocks: {"encoder_blocks": blocks}, "block_residuals")}


def _copy_of(module: nn.Module, name: str) -> nn.Module:
    """A new, unbound module with ``module``'s hyper-parameters, named ``name``."""
    fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
              if f.init and f.name not in ("parent", "name")}
    return type(module)(**fields, name=name)


class ControlNet(nn.Module):
    """Base network + trainable encoder copy + zero convolutions (1x1, i.e. per-pixel or
    per-token linear maps).

    Call: ``apply({"params": {"base": ..., ...}}, x, noise_cond, cond, train=False)``;
    ``cond["control"]`` [B, H, W, control_channels] in [-1, 1] (absent: zeros, the null
    control); every other condition goes to both the base and the copy.

    Attributes:
      base: the base network (a :class:`UNet` or :class:`DiT`, :data:`HOOKS`).
      control_channels: channels of the control map.
      blocks: a DiT base: how many of its blocks the copy holds.
      control_scale: multiplies the residuals (Zhang et al.'s control strength); 0 = the base.
    """
    base: Any
    control_channels: int = 1
    control_scale: float = 1.0
    blocks: int = 0

    @nn.compact
    def __call__(self, x, noise_cond, cond: Optional[Mapping] = None, train: bool = False):
        cond = dict(cond or {})
        control = cond.pop("control", None)
        if control is None:
            control = jnp.zeros(x.shape[:3] + (self.control_channels,), x.dtype)
        if control.shape[:3] != x.shape[:3]:
            raise ValueError(f"cond['control'] of shape {control.shape} does not match the "
                             f"images {x.shape}: a control map is [B, H, W, C] at their size")
        zeros = nn.initializers.zeros
        copy_kwargs, residual_arg = HOOKS[type(self.base)]
        hint = nn.Dense(x.shape[-1], kernel_init=zeros, name="control_in")(
            control.astype(x.dtype))
        features = _copy_of(self.base, "encoder")(x + hint, noise_cond, cond, train=train,
                                                  **copy_kwargs(self.blocks))
        residuals = [self.control_scale * nn.Dense(f.shape[-1], kernel_init=zeros,
                                                   name=f"zero_{i}")(f)
                     for i, f in enumerate(features)]
        return self.base(x, noise_cond, cond, train=train, **{residual_arg: residuals})


@dataclasses.dataclass(frozen=True)
class Controlled:
    """A :class:`ControlNet` whose ``init`` leaves out the base (it belongs to another run).

    ``apply(variables, ...)`` needs ``variables["params"]`` with the base under ``"base"``
    (:func:`with_base`).
    """
    module: ControlNet
    # Condition kinds beyond the base's (Setup.cond_kinds adds them).
    extra_cond_kinds = ("control",)

    def init(self, rngs, *args, **kwargs) -> dict:
        variables = dict(self.module.init(rngs, *args, **kwargs))
        variables["params"] = own(variables["params"])
        return variables

    def apply(self, variables, *args, **kwargs):
        if BASE not in variables["params"]:
            raise ValueError("a ControlNet is applied with its base's parameters under "
                             "params['base'] (diffjax.controlnet.network.with_base)")
        return self.module.apply(variables, *args, **kwargs)

    def with_scale(self, control_scale: float) -> "Controlled":
        return Controlled(self.module.clone(control_scale=float(control_scale)))


def own(params: Mapping) -> dict:
    """The ControlNet's own parameters (all but the base's)."""
    return {k: v for k, v in params.items() if k != BASE}


def with_base(params: Mapping, base_params: Any) -> dict:
    """The whole tree :meth:`Controlled.apply` reads: ``params`` plus ``{"base": ...}``."""
    return {**own(params), BASE: base_params}


def initial_params(params: Mapping, base_params: Mapping) -> dict:
    """``params`` with the encoder copy set to the base's own values (Zhang et al.: the
    trainable copy starts as the locked one).

    Raises:
      ValueError: the base lacks a parameter of the copy or has it in another shape.
    """
    encoder = params["encoder"]
    copied = {}
    for name, sub in encoder.items():
        if name not in base_params:
            raise ValueError(f"the base has no {name!r}: not the network this ControlNet copies")
        shapes = jax.tree_util.tree_map(jnp.shape, (sub, base_params[name]))
        if jax.tree_util.tree_structure(sub) != jax.tree_util.tree_structure(
                base_params[name]) or shapes[0] != shapes[1]:
            raise ValueError(f"the base's {name!r} differs in shape from the ControlNet's copy")
        copied[name] = jax.tree_util.tree_map(jnp.array, base_params[name])
    return {**dict(params), "encoder": copied}


def wrap(net: Any, control_channels: int, blocks: int = 0) -> Controlled:
    """A run's network ``net`` (the base's architecture) as a ControlNet; ``blocks``: how many
    of a DiT's blocks the copy holds (0: half of them).

    Raises:
      ValueError: ``net`` is neither a U-Net nor a DiT (e.g. a learned-text-encoder wrapper).
    """
    if type(net) not in HOOKS:
        raise ValueError(f"config.task='controlnet' needs a U-Net or DiT base (config.model."
                         f"arch 'unet' or 'dit', with a frozen text encoder); got "
                         f"{type(net).__name__}")
    if isinstance(net, DiT) and not blocks:
        from diffjax.models.dit import dit_dims
        blocks = dit_dims(net.size, net.depth, net.hidden, net.num_heads,
                          net.patch_size)["depth"] // 2
    return Controlled(ControlNet(net, int(control_channels), blocks=int(blocks)))


__all__ = ["BASE", "ControlNet", "Controlled", "initial_params", "own", "with_base", "wrap"]
