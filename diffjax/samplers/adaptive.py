"""Adaptive Dormand-Prince 5(4) with a PI step-size controller, inside one ``lax.while_loop``.

Dormand & Prince 1980 (the tableau), Hairer, Norsett & Wanner, "Solving ODEs I", II.4 and
IV.2 (error norm, initial step, and the PI controller of their DOPRI5 code with
``beta = 0.04``). Used by the ``adaptive`` sampler and by :mod:`diffjax.likelihood`.

The state is a pytree whose leaves are batched ``[B, ...]``. All examples share one step
size; the error norm is the RMS of ``err / (atol + rtol max(|y|, |y_new|))`` per example and
the *largest* over the batch, so every example meets the tolerance (a shared RMS would let
outliers through).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem

Array = jax.Array

# Dormand-Prince 5(4): nodes c, stage matrix A whose last row is the 5th-order weights b
# (first same as last: the 7th stage at (t + h, y_new) starts the next step), and b - b*.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (0, 0, 0, 0, 0, 0, 0),
    (1 / 5, 0, 0, 0, 0, 0, 0),
    (3 / 40, 9 / 40, 0, 0, 0, 0, 0),
    (44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0),
    (35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0),
)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR, _BETA = 0.9, 0.2, 10.0, 0.04
_EXPO = 0.2 - 0.75 * _BETA


class ODEResult(NamedTuple):
    y: Any            # the state at t (t1 when success, else where the budget ran out)
    t: Array          # the time reached, scalar
    nfe: Array        # evaluations of f, int32 scalar
    num_steps: Array  # accepted steps
    success: Array    # bool scalar: t1 reached within max_evals


def _combine(y, h, buf, weights):
    """``y + h sum_j w_j k_j`` with the stages stacked in ``buf`` (leaves ``[7, B, ...]``)."""
    return jax.tree.map(lambda y0, k: y0 + h * jnp.tensordot(weights, k, axes=1), y, buf)


def _rms_per_example(tree, scale) -> Array:
    sq = jax.tree.leaves(jax.tree.map(
        lambda e, s: jnp.sum(jnp.reshape((e / s) ** 2, (e.shape[0], -1)), axis=-1), tree, scale))
    count = sum(leaf[0].size for leaf in jax.tree.leaves(tree))
    return jnp.sqrt(sum(sq) / count)


def solve(f: Callable[[Array, Any], Any], y0: Any, t0: float, t1: float, *, rtol: float,
          atol: float, max_evals: int) -> ODEResult:
    """Integrates ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` (either direction).

    NFE = 1 + 6 per attempted step (first-same-as-last: the 7th stage of an accepted step is
    the 1st of the next). Stops when ``t1`` is reached or the next attempt would exceed
    ``max_evals``; then ``success`` is False and ``y`` is the state at ``t``, short of ``t1``
    (callers must not hand it out as the solution: see :func:`check_finished`).
    """
    dtype = jax.tree.leaves(y0)[0].dtype
    t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    direction = jnp.sign(t1 - t0)
    k1 = f(t0, y0)
    scale0 = jax.tree.map(lambda y: atol + rtol * jnp.abs(y), y0)
    d0 = jnp.max(_rms_per_example(y0, scale0))
    d1 = jnp.max(_rms_per_example(k1, scale0))
    h0 = jnp.where((d0 > 1e-5) & (d1 > 1e-5), 0.01 * d0 / d1, 1e-6)
    h0 = direction * jnp.minimum(h0, jnp.abs(t1 - t0))

    def cond(state):
        t, _, _, _, nfe, _, _ = state
        return (direction * (t1 - t) > 0) & (nfe + 6 <= max_evals)

    a, c, e = (jnp.asarray(v, dtype) for v in (_A, _C, _E))

    def body(state):
        t, y, k1, h, nfe, steps, prev_norm = state
        remaining = t1 - t
        last = jnp.abs(h) >= jnp.abs(remaining)
        h = jnp.where(last, remaining, h)

        def stage(j, buf):
            # In a loop, not unrolled: the model is compiled once, not seven times.
            k = f(t + c[j] * h, _combine(y, h, buf, a[j]))
            return jax.tree.map(lambda b, kj: b.at[j].set(kj), buf, k)

        buf = jax.tree.map(lambda k: jnp.zeros((7,) + k.shape, k.dtype).at[0].set(k), k1)
        buf = jax.lax.fori_loop(1, 7, stage, buf)
        y_new = _combine(y, h, buf, a[6])
        err = _combine(jax.tree.map(jnp.zeros_like, y), h, buf, e)
        scale = jax.tree.map(lambda u, v: atol + rtol * jnp.maximum(jnp.abs(u), jnp.abs(v)),
                             y, y_new)
        norm = jnp.max(_rms_per_example(err, scale))
        accept = norm <= 1.0
        norm = jnp.maximum(norm, 1e-10)
        factor = jnp.where(
            accept,
            jnp.clip(_SAFETY * norm**-_EXPO * prev_norm**_BETA, _MIN_FACTOR, _MAX_FACTOR),
            jnp.maximum(_MIN_FACTOR, _SAFETY * norm**-_EXPO))
        pick = lambda new, old: jax.tree.map(lambda u, v: jnp.where(accept, u, v), new, old)
        k7 = jax.tree.map(lambda b: b[6], buf)
        t_new = jnp.where(accept, jnp.where(last, t1, t + h), t)
        return (t_new, pick(y_new, y), pick(k7, k1), h * factor, nfe + 6,
                steps + accept, jnp.where(accept, jnp.maximum(norm, 1e-4), prev_norm))

    init = (t0, y0, k1, h0, jnp.int32(1), jnp.int32(0), jnp.asarray(1e-4, dtype))
    t, y, _, _, nfe, steps, _ = jax.lax.while_loop(cond, body, init)
    return ODEResult(y, t, nfe, steps, t == t1)


def check_finished(success: Array, t: Array, what: str, budget: str, rtol: float,
                   atol: float) -> None:
    """Raises ``ValueError`` if a solve ran out of its budget before its end time.

    Under a trace (the caller is itself jitted) nothing can be raised; callers then return
    NaN where ``success`` is False, so an unfinished solve is never mistaken for a result.
    """
    if isinstance(success, jax.core.Tracer) or bool(success):
        return
    raise ValueError(
        f"{what} ran out of its budget of {budget} model evaluations before reaching the end "
        f"time (it stopped at t={float(t):.6g}) with rtol={rtol:g}, atol={atol:g}: raise the "
        "budget or loosen rtol/atol")


def adaptive(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, rtol: float,
             atol: float) -> tuple[Array, ODEResult]:
    """Probability-flow ODE from ``ts[0]`` to ``ts[-1]`` with Dormand-Prince 5(4).

    Returns ``(x, result)``: the NFE is chosen by the solver (at most ``plan.evals``); ``x``
    is NaN unless ``result.success`` (the solve reached ``ts[-1]`` within the budget).
    """
    result = solve(lambda t, y: problem.velocity(y, t), x, ts[0], ts[-1], rtol=rtol,
                   atol=atol, max_evals=plan.evals)
    return jnp.where(result.success, result.y, jnp.nan), result
