"""The train step compiled for a backend, with the state kept where the backend wants it.

``jax.jit`` (the default): the state lives in its global (replicated or FSDP) layout; the
step sees the global batch. ``jax.pmap``: the state lives replicated on every local
device, put there once (:meth:`Compiled.put_state`) and handed back to the loop only to
checkpoint or evaluate (:meth:`Compiled.get_state`), never re-broadcast per step. Both
take ``frozen`` (the parameters of other runs a task reads) as an argument, put on the
devices once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from diffjax import parallel, xla_options

StepFn = Callable[..., tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class Compiled:
    """``step(state, batch, frozen) -> (state, metrics)`` on the backend's own state, and
    the conversions at its boundary (global state <-> the step's state, this process's
    numpy batch -> the step's batch, frozen tree -> the step's)."""

    step: StepFn
    put_state: Callable[[Any], Any]
    get_state: Callable[[Any], Any]
    put_batch: Callable[[Any], Any]
    put_frozen: Callable[[Any], Any]


def global_batch(local: Any, mesh: Mesh) -> Any:
    """This process's rows (a pytree of numpy ``[b, ...]``) -> the global batch, split
    over the data axis (process ``p`` contributes rows ``p*b .. (p+1)*b - 1``)."""
    sharding = parallel.batch_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), local)


def _jit(make_step, mesh: Mesh, state_sharding: Any) -> Compiled:
    step = xla_options.jit(
        make_step(None), in_shardings=(state_sharding, parallel.batch_sharding(mesh), None),
        out_shardings=(state_sharding, parallel.replicated(mesh)), donate_argnums=0)
    same = lambda tree: tree  # noqa: E731
    return Compiled(step, same, same, lambda local: global_batch(local, mesh), same)


def _pmap(make_step, mesh: Mesh) -> Compiled:
    n = jax.local_device_count()
    # The state and frozen trees are mapped (in_axes=0: one copy per device, already
    # there); metrics are pmean'd, hence identical, and returned once (out_axes=None).
    step = jax.pmap(make_step(parallel.DATA_AXIS), axis_name=parallel.DATA_AXIS,
                    in_axes=(0, 0, 0), out_axes=(0, None), donate_argnums=0)
    replicate_fn = jax.pmap(lambda tree, _: tree, in_axes=(None, 0))
    multi = jax.process_count() > 1

    def replicate(tree):
        if not jax.tree_util.tree_leaves(tree):  # e.g. no frozen parts: nothing to place
            return tree
        if multi:
            tree = multihost_utils.global_array_to_host_local_array(tree, mesh, P())
        return replicate_fn(tree, np.zeros(n))

    def get_state(state):
        # Finish the copy before the next step is dispatched (one thing in flight at a
        # time on simulated CPU devices; see simulated_devices).
        first = jax.block_until_ready(jax.tree_util.tree_map(lambda a: a[0], state))
        if multi:
            return multihost_utils.host_local_array_to_global_array(first, mesh, P())
        return first

    def put_batch(local):
        return jax.tree_util.tree_map(
            lambda v: np.reshape(v, (n, v.shape[0] // n) + v.shape[1:]), local)

    return Compiled(step, replicate, get_state, put_batch, replicate)


def compile_step(make_step: Callable[[Optional[str]], StepFn], *, backend: str, mesh: Mesh,
                 state_sharding: Any) -> Compiled:
    """Compiles ``make_step(axis_name)`` (None for jit, :data:`parallel.DATA_AXIS` for pmap)."""
    if backend == "jit":
        compiled = _jit(make_step, mesh, state_sharding)
    elif backend == "pmap":
        compiled = _pmap(make_step, mesh)
    else:
        raise ValueError(f"Unknown parallel.backend {backend!r}; valid choices: "
                         f"{', '.join(parallel.BACKENDS)}")
    if simulated_devices():
        compiled = dataclasses.replace(compiled, step=_one_at_a_time(compiled.step))
    return compiled


def simulated_devices() -> bool:
    """Several XLA:CPU devices in one process (``--xla_force_host_platform_device_count``).

    Their parts of a multi-device program run as tasks of one shared thread pool, and an
    8-device run of the test suite intermittently hung in a step's all-reduce (7 of 8 device
    threads at the rendezvous) right after an asynchronous checkpoint was queued. The
    trainer then keeps one thing in flight at a time: each step finishes before the next is
    dispatched (:func:`_one_at_a_time`) and checkpoints are written synchronously (the loop's
    ``Checkpointer(async_save=False)``). Real accelerators keep asynchronous dispatch and
    saving.
    """
    return jax.local_device_count() > 1 and jax.local_devices()[0].platform == "cpu"


def _one_at_a_time(step: StepFn) -> StepFn:
    """``step`` that returns only once its programs have finished."""
    def run(*args):
        return jax.block_until_ready(step(*args))

    return run
