"""The train state (a pytree) and its creation, shapes and shardings."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from diffjax import parallel
from diffjax.training.setup import Setup, example_cond
from diffjax.errors import NonFiniteError  # noqa: F401  (one class: main.py catches it)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a step reads and writes. Frozen parts of other runs are not in it: the
    step takes them as an argument (:mod:`diffjax.training.frozen`).

    Attributes:
      step: int32 [], number of steps taken (skipped non-finite steps included).
      params: the network's parameters.
      ema_params: their exponential moving average (what is sampled from).
      opt_state: the optax state; its count is ``step - nonfinite_count`` (applied updates).
      key: uint32 [2], the run's key; step ``s`` uses ``fold_in(key, s)``.
      nonfinite_count: int32 [], steps whose update was skipped for non-finite values.
      power_ema: with ``training.ema = "power"``, a tuple of power-function EMAs of the
        parameters, one per ``training.ema_sigma_rels`` (:mod:`diffjax.training.power_ema`);
        None otherwise. A None field is left out of the pytree, so a classic run's
        checkpoints have the layout they had before the field existed.
    """

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any
    key: Array
    nonfinite_count: Array
    power_ema: Optional[tuple] = None

    replace = dataclasses.replace


_FIELDS = ("step", "params", "ema_params", "opt_state", "key", "nonfinite_count")


def _flatten(state: TrainState):
    names = _FIELDS + (("power_ema",) if state.power_ema is not None else ())
    return [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in names], \
        state.power_ema is not None


def _unflatten(has_power: bool, children) -> TrainState:
    children = list(children)
    return TrainState(*children[:len(_FIELDS)],
                      power_ema=children[len(_FIELDS)] if has_power else None)


jax.tree_util.register_pytree_with_keys(TrainState, _flatten, _unflatten)


def init_state(setup: Setup, seed: int) -> TrainState:
    """A fresh state (jit-friendly: wrap in ``jax.jit(..., out_shardings=...)`` to create it
    directly in its sharded layout)."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    x = jnp.zeros((1, *setup.data_info.shape), jnp.float32)
    params = setup.net.init({"params": init_key}, x, jnp.zeros((1,)), example_cond(setup))["params"]
    copy = lambda: jax.tree_util.tree_map(jnp.copy, params)  # noqa: E731
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=copy(),
                      opt_state=setup.optimizer.init(params), key=train_key,
                      nonfinite_count=jnp.zeros((), jnp.int32),
                      power_ema=tuple(copy() for _ in setup.power_gammas) or None)


def setup_state(setup: Setup, config: ml_collections.ConfigDict,
                mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
    """``(abstract_state, shardings)``: shapes with their shardings, nothing computed."""
    abstract = jax.eval_shape(lambda: init_state(setup, config.seed))
    shardings = parallel.state_shardings(abstract, mesh, config.parallel.param_sharding,
                                         config.parallel.fsdp_min_size)
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings
