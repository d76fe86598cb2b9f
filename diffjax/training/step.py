"""The one train step, generic over the task: ``train_step(state, batch, frozen)``.

Every random draw of step ``s`` comes from ``fold_in(state.key, s)`` and is made for the
global batch, so the numbers do not depend on how many devices, hosts or micro-batches
share it (:class:`diffjax.training.tasks.Rows`). With ``optim.grad_accum_steps = k`` the
rows are split into ``k`` micro-batches whose gradients are averaged (a ``lax.scan`` with one
micro-batch in memory at a time, or unrolled on CPU: ``optim.grad_accum_loop``): the update
equals one step on the whole batch.

Non-finite values skip the whole update (optimizer, EMA) with a ``lax.cond``. This is
``optax.apply_if_finite``'s idea, written out because that wrapper selects leaf by leaf
with ``jnp.where`` (which makes every output depend on one global predicate; XLA's CPU
compile time then grows many-fold on big U-Nets), leaves the EMA to move, and applies
updates again after its error budget, where we stop.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from diffjax import parallel
from diffjax.training import power_ema
from diffjax.training import tasks as tasks_lib
from diffjax.training.setup import Setup
from diffjax.training.state import TrainState

Array = jax.Array
StepFn = Callable[..., tuple[TrainState, dict]]


def ema_decay(setup: Setup, step: Array) -> Array:
    """``min(ema_decay, (1 + s) / (10 + s))`` with warm-up, else ``ema_decay``."""
    decay = jnp.asarray(setup.ema_decay, jnp.float32)
    if setup.ema_warmup:
        s = step.astype(jnp.float32)
        decay = jnp.minimum(decay, (1.0 + s) / (10.0 + s))
    return decay


def _ema(ema: Any, params: Any, decay: Array) -> Any:
    return jax.tree_util.tree_map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)


def apply_gradients(setup: Setup, state: TrainState, loss: Array, grads: Any,
                    aux: Optional[dict] = None) -> tuple[TrainState, dict]:
    """Optimizer and EMA update, skipped (``lax.cond``) when anything is non-finite.

    ``metrics["lr"]`` is the rate of this step's update: the schedule at the number of
    updates applied before it (``step - nonfinite_count``, which is optax's count).
    """
    grad_finite = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
    ok = jnp.isfinite(loss) & jnp.all(grad_finite)
    decay = ema_decay(setup, state.step)

    # Applied updates including this one: the power EMAs' step count (skipped steps excluded).
    count = state.step - state.nonfinite_count + 1

    def update(operands):
        params, ema_params, opt_state, power = operands
        updates, opt_state = setup.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if power is not None:
            power = power_ema.update(power, params, setup.power_gammas, count)
        return params, _ema(ema_params, params, decay), opt_state, power

    params, ema_params, opt_state, power = lax.cond(
        ok, update, lambda operands: operands,
        (state.params, state.ema_params, state.opt_state, state.power_ema))
    new_state = state.replace(
        step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state,
        nonfinite_count=state.nonfinite_count + (~ok).astype(jnp.int32), power_ema=power)
    metrics = {"loss": loss, **(aux or {}), "grad_norm": optax.tree.norm(grads),
               "lr": setup.lr_schedule(state.step - state.nonfinite_count),
               "skipped": (~ok).astype(jnp.float32), "nonfinite_count": new_state.nonfinite_count,
               "finite": jnp.concatenate([jnp.isfinite(loss)[None], grad_finite])}
    return new_state, metrics


def unrolls_micro_batches(loop: str) -> bool:
    """Whether gradient accumulation unrolls its micro-batches (``optim.grad_accum_loop``).

    ``auto`` unrolls on CPU: XLA:CPU leaves the gradient convolutions of a loop body in
    layouts its convolution library does not take (``b01f_01oi->b01f``,
    ``f01b_i01o->01bf``; outside a loop it rewrites them to ``b01f_01io->b01f``) and runs
    them as naive loops, ~20x slower (experiments/benchmarks/grad_accum_cpu.py). Unrolled,
    the step is as fast as without accumulation (faster at large batches), but XLA's
    buffer assignment then keeps most micro-batches' activations: the memory saving is the
    loop's. GPUs keep the loop.
    """
    return loop == "unroll" or (loop == "auto" and jax.default_backend() == "cpu")


def _loss_and_grads(task: tasks_lib.Task, k: int, axis_name: Optional[str],
                    loop: str = "auto"):
    """``f(params, batch, key, frozen) -> ((loss, aux), grads)`` over this call's rows,
    averaged over ``k`` micro-batches (a ``lax.scan``, or unrolled:
    :func:`unrolls_micro_batches`)."""
    unroll = unrolls_micro_batches(loop)
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)

    def loss_and_grads(params, batch, key, frozen):
        if k == 1 and axis_name is None:
            return grad_fn(params, batch, key, frozen)
        b = jax.tree_util.tree_leaves(batch)[0].shape[0]
        if b % k:
            raise ValueError(f"optim.grad_accum_steps={k} does not divide the {b} rows each "
                             "device sees; choose data.batch_size divisible by "
                             "grad_accum_steps x the device count")
        device = 0 if axis_name is None else lax.axis_index(axis_name)
        total = b if axis_name is None else b * lax.axis_size(axis_name)

        def device_rows(a):
            return a if axis_name is None else lax.dynamic_slice_in_dim(a, device * b, b)

        if k == 1:
            rows = tasks_lib.Rows(total, device_rows, jnp.asarray(device, jnp.int32))
            return grad_fn(params, batch, key, frozen, rows)

        # Micro-batch j holds rows j, j + k, j + 2k, ... of each device's block, spread over
        # all devices (no communication).
        def micro(a):
            return parallel.interleaved_chunks(a, k)

        def body(total_so_far, xs):
            j, micro_batch = xs
            rows = tasks_lib.Rows(total, lambda a: micro(device_rows(a))[j], device * k + j)
            out = grad_fn(params, micro_batch, key, frozen, rows)
            return jax.tree_util.tree_map(jnp.add, total_so_far, out), None

        shapes = jax.eval_shape(lambda: grad_fn(
            params, jax.tree_util.tree_map(lambda a: micro(a)[0], batch), key, frozen,
            tasks_lib.Rows(total, lambda a: micro(device_rows(a))[0], jnp.int32(0))))
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        micro_batches = jax.tree_util.tree_map(micro, batch)
        if not unroll:
            summed, _ = lax.scan(body, zeros, (jnp.arange(k), micro_batches))
        else:
            summed = zeros
            for j in range(k):
                # The barrier orders the copies: micro-batch j starts once the gradients up
                # to j - 1 are summed.
                summed, xs = lax.optimization_barrier(
                    (summed, (jnp.int32(j), jax.tree_util.tree_map(lambda a: a[j], micro_batches))))
                summed, _ = body(summed, xs)
        return jax.tree_util.tree_map(lambda v: v / k, summed)

    return loss_and_grads


def make_train_step(setup: Setup, axis_name: Optional[str] = None,
                    task: Optional[tasks_lib.Task] = None) -> StepFn:
    """``train_step(state, batch, frozen=None) -> (state, metrics)``, for jit or pmap.

    Args:
      setup: from :func:`diffjax.training.setup.build`.
      axis_name: None when the step sees the global batch (``jax.jit``); the pmap axis
        name when it sees one device's rows, in which case loss and gradients are averaged
        over that axis. This is the only difference between the backends.
      task: the loss (:mod:`diffjax.training.tasks`); default the denoising objective.

    ``batch``: ``{"x": float32 [B, ...], "cond": {kind: [B, ...]}}``. ``frozen``: the
    parameters of other runs the task reads. ``metrics``: loss, the task's aux metrics,
    grad_norm, lr, skipped (1.0 if the update was dropped), nonfinite_count and ``finite``
    (bool ``[1 + num_param_arrays]``: the loss, then each gradient in ``tree_leaves`` order).
    """
    task = task or tasks_lib.Denoise(setup)
    loss_and_grads = _loss_and_grads(task, setup.grad_accum_steps, axis_name,
                                     setup.grad_accum_loop)

    def train_step(state: TrainState, batch: dict, frozen: Any = None):
        key = jax.random.fold_in(state.key, state.step)
        if getattr(task, "reads_step", False):  # a curriculum over training steps
            rows = jax.tree_util.tree_leaves(batch)[0].shape[0]
            batch = {**batch, "step": jnp.full((rows,), state.step, jnp.int32)}
        (loss, aux), grads = loss_and_grads(state.params, batch, key, frozen)
        if axis_name is not None:
            loss, aux, grads = lax.pmean((loss, aux, grads), axis_name)
        return apply_gradients(setup, state, loss, grads, aux)

    return train_step


def describe_nonfinite(finite: np.ndarray, params: Any) -> str:
    """Names the first non-finite quantity of a step from its ``metrics["finite"]``."""
    names = ["loss"] + ["gradient of params/" + jax.tree_util.keystr(p, simple=True, separator="/")
                        for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    bad = [n for n, ok in zip(names, np.asarray(finite)) if not ok]
    return bad[0] if bad else "none"
