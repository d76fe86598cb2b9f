"""The ``controlnet`` task: train a ControlNet beside a frozen text-to-image base.

``config.controlnet.base`` names the base run's workdir (DESIGN §7); the trainer reads its
newest EMA parameters by reference (:mod:`diffjax.training.frozen`), passes them to the step
as ``frozen["controlnet.base"]`` and records their identity, so they are never trained,
never saved here, and a resumed run refuses a changed base. The run's ``config.model``,
``config.path`` and text encoder must be the base's (the network is the base's, with the
ControlNet beside it); :func:`check_base` refuses another architecture or resolution.

Loss: the denoising objective of the base's recipe with the control as one more condition;
text (and label) and control are dropped independently (``loss.label_dropout`` and
``controlnet.control_dropout``) so that guidance can act on either.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from diffjax import conditions
from diffjax.controlnet import maps, network
from diffjax.training import frozen, setup as setup_lib, tasks
from diffjax.training.setup import Setup

BASE_KEY = "controlnet.base"
TASK = "controlnet"


def base_key(config: ml_collections.ConfigDict) -> dict[str, str]:
    """``TaskSpec.references``: ``{"controlnet.base": workdir}``.

    Raises:
      ValueError: ``config.controlnet.base`` unset.
    """
    base = (config.get("controlnet") or {}).get("base")
    if not base:
        raise ValueError("config.task='controlnet' needs config.controlnet.base: the workdir "
                         "of a trained text-to-image (U-Net) run")
    return {BASE_KEY: str(base)}


def _plain(group) -> dict:
    return json.loads(group.to_json(sort_keys=True))  # tuples and lists alike


def check_base(setup: Setup, reference: frozen.Reference) -> None:
    """Refuses a base whose network this run cannot carry.

    Raises:
      ValueError: naming the base's workdir and what differs (architecture, resolution,
        model settings, path, target, condition kinds).
    """
    where = reference.identity["workdir"]
    base_cfg, cfg = reference.setup.config, setup.config
    checks = [("config.model.arch", base_cfg.model.arch, cfg.model.arch),
              ("data shape (resolution)", tuple(reference.setup.data_info.shape),
               tuple(setup.data_info.shape)),
              ("config.model", _plain(base_cfg.model), _plain(cfg.model)),
              ("config.path", _plain(base_cfg.path), _plain(cfg.path)),
              ("condition kinds", reference.setup.cond_kinds,
               tuple(k for k in setup.cond_kinds if k != "control"))]
    for what, theirs, ours in checks:
        if theirs != ours:
            raise ValueError(f"config.controlnet.base={where}: its {what} is {theirs!r}, this "
                             f"run's is {ours!r}; a ControlNet runs on its base's own network "
                             f"(copy model/path/text from {where}/config.json)")


def _initialize(state, references: Mapping[str, frozen.Reference]):
    """A fresh ControlNet's encoder copy starts as the base's encoder."""
    base = references[BASE_KEY].params
    params = network.initial_params(state.params, base)
    ema = network.initial_params(state.ema_params, base)
    return state.replace(params=params, ema_params=ema)


@dataclasses.dataclass(frozen=True)
class ControlNetTask:
    """The denoising loss of the ControlNet, with the base's parameters from ``frozen``."""

    setup: Setup
    control_dropout: float

    def loss(self, params, batch, key, frozen_tree, rows=None):
        draw_key, drop_key, dropout_key = jax.random.split(key, 3)
        if rows is not None:
            dropout_key = jax.random.fold_in(dropout_key, rows.index)
        objective = self.setup.objective
        x0 = batch["x"]
        cond = tasks.condition(self.setup, batch)
        total = x0.shape[0] if rows is None else rows.total
        t, eps, _ = objective.draw(draw_key, x0, None, batch=total)
        rates = {conditions._kind_of(k): objective.label_dropout for k in cond}
        rates["control"] = self.control_dropout
        masks = conditions.drop_masks(tuple(cond), drop_key, total, rates)
        if rows is not None:
            t, eps = rows.take(t), rows.take(eps)
            masks = {k: rows.take(m) for k, m in masks.items()}
        cond = objective.null_values.apply_masks(cond, masks)
        variables = {"params": network.with_base(params, frozen_tree[BASE_KEY])}

        def model(x, s, c):
            return self.setup.denoiser.apply(variables, x, s, c, train=True,
                                             rngs={"dropout": dropout_key})

        return jnp.mean(objective.per_example(model, x0, t, eps, cond)), {}


def _build(setup: Setup, references: Mapping[str, frozen.Reference]) -> ControlNetTask:
    check_base(setup, references[BASE_KEY])
    return ControlNetTask(setup, float(setup.config.controlnet.control_dropout))


def _network(net: Any, config: ml_collections.ConfigDict) -> network.Controlled:
    maps.check_kind(str(config.controlnet.kind))
    return network.wrap(net, 1, int(config.controlnet.get("dit_blocks", 0)))


setup_lib.NETWORKS[TASK] = _network
tasks.register(TASK, tasks.TaskSpec(_build, base_key, _initialize))


__all__ = ["BASE_KEY", "ControlNetTask", "base_key", "check_base"]
