"""The adaptive probability-flow ODE solve: diffrax's Dormand-Prince 5(4) with a PID controller.

Dormand & Prince 1980 (the tableau); Söderlind 2003 (the PI step-size controller,
``pcoeff = 0.2, icoeff = 0.4``); diffrax (Kidger 2021) runs both inside one compiled loop,
and its ``RecursiveCheckpointAdjoint`` makes the solve differentiable in reverse mode (so
``jax.grad`` of a loss of samples or log-likelihoods through the model's parameters works).
Used by the ``adaptive`` sampler and by :mod:`diffjax.likelihood`.

The state is a pytree whose leaves are batched ``[B, ...]``. All examples share one step
size; the error norm is the RMS of ``err / (atol + rtol max(|y|, |y_new|))`` per example and
the *largest* over the batch, so every example meets the tolerance (a shared RMS would let
outliers through).

Cost. Dormand-Prince evaluates ``f`` 6 times per attempted step (first-same-as-last: the
7th stage of a step is the 1st of the next) plus once at the start: ``nfe = 1 + 6 * steps``
from diffrax's step count. Not counted (diffrax does not report them): while no step has
been accepted yet, each rejected attempt evaluates the first stage again (0-4 evaluations
in the runs we measured).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem

Array = jax.Array

_FIRST_EVALS = 1
_EVALS_PER_STEP = 6
MIN_EVALS = _FIRST_EVALS + _EVALS_PER_STEP


class ODEResult(NamedTuple):
    y: Any            # the state at t (t1 when success, else where the budget ran out)
    t: Array          # the time reached, scalar
    nfe: Array        # evaluations of f, int32 scalar
    num_steps: Array  # attempted steps
    success: Array    # bool scalar: t1 reached within max_evals


def _max_rms_per_example(tree) -> Array:
    """The error norm diffrax's controller sees: per-example RMS over all leaves, max over B."""
    leaves = jax.tree.leaves(tree)
    sq = sum(jnp.sum(jnp.reshape(e**2, (e.shape[0], -1)), axis=-1) for e in leaves)
    count = sum(leaf[0].size for leaf in leaves)
    return jnp.max(jnp.sqrt(sq / count))


def max_steps_for(max_evals: int) -> int:
    """Attempted steps that fit into ``max_evals`` evaluations (see the cost note above)."""
    return max((max_evals - _FIRST_EVALS) // _EVALS_PER_STEP, 0)


def solve(f: Callable[[Array, Any], Any], y0: Any, t0: float, t1: float, *, rtol: float,
          atol: float, max_evals: int) -> ODEResult:
    """Integrates ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` (either direction).

    Stops when ``t1`` is reached or ``max_evals`` evaluations would be exceeded; then
    ``success`` is False and ``y`` is NaN (callers must not hand it out: see
    :func:`check_finished`).
    """
    dtype = jax.tree.leaves(y0)[0].dtype
    steps = max_steps_for(max_evals)
    controller = diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.2, icoeff=0.4,
                                       norm=_max_rms_per_example)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: f(t, y)), diffrax.Dopri5(),
        jnp.asarray(t0, dtype), jnp.asarray(t1, dtype), None, y0,
        stepsize_controller=controller, max_steps=max(steps, 1),
        saveat=diffrax.SaveAt(t1=True), throw=False)
    success = (sol.result == diffrax.RESULTS.successful) & (steps > 0)
    y = jax.tree.map(lambda a: jnp.where(success, a[-1], jnp.nan), sol.ys)
    num_steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
    # diffrax does not report where it stopped; the end time is reached or it is not.
    t = jnp.where(success, jnp.asarray(t1, dtype), jnp.asarray(t0, dtype))
    return ODEResult(y, t, _FIRST_EVALS + _EVALS_PER_STEP * num_steps, num_steps, success)


def check_finished(success: Array, what: str, budget: str, rtol: float, atol: float) -> None:
    """Raises ``ValueError`` if a solve ran out of its budget before its end time.

    Under a trace (the caller is itself jitted) nothing can be raised; callers then return
    NaN where ``success`` is False, so an unfinished solve is never mistaken for a result.
    """
    if isinstance(success, jax.core.Tracer) or bool(success):
        return
    raise ValueError(
        f"{what} ran out of its budget of {budget} model evaluations before reaching the end "
        f"time with rtol={rtol:g}, atol={atol:g}: raise the budget or loosen rtol/atol")


def adaptive(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, rtol: float,
             atol: float) -> tuple[Array, ODEResult]:
    """Probability-flow ODE from ``ts[0]`` to ``ts[-1]`` with Dormand-Prince 5(4).

    Returns ``(x, result)``: the NFE is chosen by the solver (at most ``plan.evals``); ``x``
    is NaN unless ``result.success`` (the solve reached ``ts[-1]`` within the budget).
    """
    result = solve(lambda t, y: problem.velocity(y, t), x, ts[0], ts[-1], rtol=rtol,
                   atol=atol, max_evals=plan.evals)
    return result.y, result
