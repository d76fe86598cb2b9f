"""Data parallelism: the device mesh, shardings, multi-host start-up and the two backends.

One mesh axis, ``"data"``, spans every device of every process. The batch is split along it;
parameters (and the EMA and optimizer moments, which share their shapes) are replicated or,
with ``param_sharding="fsdp"``, split along their largest axis divisible by the device count
(ZeRO-3 / FSDP style; XLA inserts the all-gathers and reduce-scatters). Under ``jax.jit``
the step sees the global batch and XLA derives the gradient all-reduce from the shardings;
under the ``pmap`` backend the *same* step function sees one device's rows and averages its
gradients with ``lax.pmean`` over :data:`DATA_AXIS` (see :func:`diffjax.train.make_train_step`).

Multi-host: one process per host, started with :func:`initialize`; each process reads its own
share of the global batch and :func:`global_batch` assembles the global array.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from diffjax import xla_options
from diffjax.choices import BACKENDS, PARAM_SHARDINGS

DATA_AXIS = "data"
# Resource-manager variables under which jax.distributed can find its peers by itself.
_CLUSTER_ENV_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")

StepFn = Callable[[Any, Any], tuple[Any, Any]]


# --------------------------------------------------------------------------- start-up
def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
    """Joins a multi-process run, if this is one; call before any other JAX call.

    Explicit arguments win; then ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` from the environment; then a SLURM or Open MPI job with more than one
    task, whose peers JAX finds itself. ``coordinator_address="auto"`` asks JAX to detect the
    cluster (Cloud TPU pods, Kubernetes, ...). With none of these the run is single-process.
    On CPU the processes talk through gloo collectives.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    in_cluster = any(int(env.get(var, "1")) > 1 for var in _CLUSTER_ENV_VARS)
    if coordinator_address is None and not in_cluster:
        return
    # Needed for cross-process collectives on CPU; GPU/TPU backends ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address == "auto" or coordinator_address is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main_process() -> bool:
    return jax.process_index() == 0


# --------------------------------------------------------------------------- mesh
def make_mesh(devices: Optional[list] = None) -> Mesh:
    """A 1-D mesh over all devices (of all processes), axis :data:`DATA_AXIS`.

    Devices are ordered by process, so each process's devices hold a contiguous block of
    the global batch: the block :func:`global_batch` fills from that process's rows.
    """
    devices = jax.devices() if devices is None else devices
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def interleaved_chunks(a: jax.Array, k: int) -> jax.Array:
    """``[B, ...] -> [k, B // k, ...]``, chunk ``j`` holding rows ``j, j + k, j + 2k, ...``:
    a reshape that keeps every chunk spread over all devices holding the batch (no
    communication). Gradient accumulation's micro-batches and the sampler's chunks."""
    return jnp.swapaxes(jnp.reshape(a, (a.shape[0] // k, k) + a.shape[1:]), 0, 1)


def join_interleaved(chunks: jax.Array) -> jax.Array:
    """The inverse of :func:`interleaved_chunks`: ``[k, n, ...] -> [k * n, ...]``."""
    return jnp.reshape(jnp.swapaxes(chunks, 0, 1),
                       (chunks.shape[0] * chunks.shape[1],) + chunks.shape[2:])


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int) -> P:
    """Splits the largest axis of ``shape`` divisible by ``num_shards``; small arrays replicate."""
    if num_shards == 1 or math.prod(shape) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[axis] % num_shards == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA_AXIS
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, param_sharding: str = "replicated",
                    min_size: int = 2**18) -> Any:
    """A ``NamedSharding`` for every leaf of the train state (given as shapes).

    The rule looks only at shapes, so a parameter, its EMA and its Adam moments get the
    same layout and the optimizer update needs no communication beyond the gradient's.
    """
    if param_sharding not in PARAM_SHARDINGS:
        raise ValueError(f"Unknown parallel.param_sharding {param_sharding!r}; valid choices: "
                         f"{', '.join(PARAM_SHARDINGS)}")
    n = mesh.shape[DATA_AXIS]

    def leaf_sharding(leaf):
        if param_sharding == "replicated":
            return replicated(mesh)
        return NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), n, min_size))

    return jax.tree_util.tree_map(leaf_sharding, abstract_state)


# --------------------------------------------------------------------------- data
def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows ``[b, ...]`` → the global batch ``[b * process_count, ...]``.

    Process ``p`` contributes rows ``p*b .. (p+1)*b - 1`` of the global batch.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def check_batch_size(global_batch_size: int) -> None:
    """Raises ValueError unless the global batch splits evenly over devices and processes."""
    devices = jax.device_count()
    if global_batch_size % devices:
        raise ValueError(
            f"config.data.batch_size={global_batch_size} (the global batch) is not divisible "
            f"by the {devices} devices ({jax.process_count()} process(es) x "
            f"{jax.local_device_count()} local devices); choose a multiple of {devices}")


def to_host(tree: Any) -> Any:
    """Fetches (possibly sharded, multi-process) arrays to numpy on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def sync(name: str) -> None:
    """Barrier across processes (a no-op in single-process runs)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True if ``flag`` is set on any process (every process gets the same answer)."""
    if jax.process_count() == 1:
        return flag
    flags = multihost_utils.process_allgather(np.asarray([flag], np.int32), tiled=True)
    return bool(np.any(flags))


def gather_ints(values: list[int]) -> list[list[int]]:
    """Every process's ``values`` (lists of any length), in process order, on every process."""
    if jax.process_count() == 1:
        return [list(values)]
    lengths = multihost_utils.process_allgather(np.asarray([len(values)], np.int64), tiled=True)
    if int(np.max(lengths)) == 0:  # nothing anywhere (a fresh run): no empty all-gather
        return [[] for _ in range(jax.process_count())]
    padded = np.full((int(np.max(lengths)),), -1, np.int64)
    padded[:len(values)] = values
    table = np.asarray(multihost_utils.process_allgather(padded[None], tiled=True))
    return [list(map(int, row[:n])) for row, n in zip(table, np.asarray(lengths))]


def common_values(per_process: list[list[int]]) -> list[int]:
    """The values every process has, sorted (e.g. the checkpoint steps all of them see)."""
    common = set(per_process[0])
    for values in per_process[1:]:
        common &= set(values)
    return sorted(common)


# --------------------------------------------------------------------------- backends
def _with_global_state(pmapped: StepFn, mesh: Mesh) -> StepFn:
    """Multi-host pmap takes and returns host-local arrays; the loop and orbax keep global
    ones, so the (replicated) state and metrics are converted at the boundary."""
    spec = P()

    def step(state, batch):
        local = multihost_utils.global_array_to_host_local_array(state, mesh, spec)
        state, metrics = pmapped(local, batch)
        return (multihost_utils.host_local_array_to_global_array(state, mesh, spec),
                multihost_utils.host_local_array_to_global_array(metrics, mesh, spec))

    return step


def compile_step(make_step: Callable[[Optional[str]], StepFn], *, backend: str, mesh: Mesh,
                 state_sharding: Any) -> tuple[StepFn, Callable[[dict], Any]]:
    """Compiles the train step for ``backend``; returns ``(step, put_batch)``.

    ``make_step(axis_name)`` builds the step; ``axis_name`` is None for ``jit`` (the step
    sees the global batch) and :data:`DATA_AXIS` for ``pmap`` (it sees one device's rows and
    must ``pmean`` over that axis). ``put_batch`` turns this process's batch (numpy,
    ``[b, ...]``) into the step's batch argument. Both backends take and return the train
    state as global, replicated ``jax.Array``s, so checkpointing does not depend on them.
    """
    if backend == "jit":
        step = xla_options.jit(make_step(None),
                               in_shardings=(state_sharding, batch_sharding(mesh)),
                               out_shardings=(state_sharding, replicated(mesh)),
                               donate_argnums=0)
        return step, lambda local: global_batch(local, mesh)
    if backend == "pmap":
        # in_axes=None broadcasts the state; out_axes=None returns the (pmean'd, hence
        # identical) state once instead of one copy per device.
        step = jax.pmap(make_step(DATA_AXIS), axis_name=DATA_AXIS, in_axes=(None, 0),
                        out_axes=None, donate_argnums=0)
        n = jax.local_device_count()

        def put_batch(local):
            return {k: np.reshape(v, (n, v.shape[0] // n) + v.shape[1:]) for k, v in local.items()}

        if jax.process_count() > 1:
            step = _with_global_state(step, mesh)
        return step, put_batch
    raise ValueError(f"Unknown parallel.backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
