"""Exact log-likelihoods through the probability-flow ODE, and bits per dimension.

Along the probability-flow ODE ``dx/dt = v(x, t) = alpha' x0_hat + sigma' eps_hat`` the
log-density obeys ``d log p_t(x_t) / dt = -div v(x_t, t)`` (Chen et al. 2018; Song et al. 2021,
App. D.2), so for data ``x`` placed at ``t_min``

    log p(x) = log p_prior(x_{t_max}) + int_{t_min}^{t_max} div v(x_t, t) dt,

with ``p_prior`` the path's prior (:meth:`Path.prior_logp`) at ``t_max = path.t_max``. Both
``x`` and the integral are solved together by diffrax's adaptive Dormand-Prince solver with
a PID controller (:mod:`diffjax.samplers.adaptive`; differentiable in reverse mode through
its checkpointed adjoint). The divergence is

* ``"exact"``: ``sum_j (J e_j)_j`` by ``D`` forward-mode JVPs (one per basis vector; for small
  ``D``: the cost is ``D`` times a model call per evaluation);
* ``"hutchinson"``: ``z^T J z`` with ``num_probes`` fixed probes per example (Rademacher or
  Gaussian; Hutchinson 1989, Grathwohl et al. 2019), unbiased. Each probe's integral is kept, so
  the result comes with its Monte Carlo standard error.

The model is assumed to act on each example independently (no batch statistics).

Bits per dimension of 8-bit data (:func:`bits_per_dim`). The pipeline maps an integer
``k in {0..255}`` to ``y = k / 127.5 - 1``. Uniform dequantisation adds ``u ~ U(0, 1)`` to ``k``
before that map, ``y = (k + u) / 127.5 - 1``: the bins ``[y_k, y_k + 1/127.5)`` tile space and
``P(k) >= exp(E_u log p(y))`` (Jensen; Theis et al. 2016, Ho et al. 2019), so

    bpd = ( -log p(y) / D + log(127.5) ) / log(2)

is an upper bound on the discrete model's code length. The ``log(127.5)`` per dimension is the
change of variables from the bin (width 1/127.5 in ``y``) to unit width; leaving it out is the
"negative bits/dim" mistake (a density on [-1, 1] can exceed 1). A model that is uniform over
all 256 bins scores exactly 8.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from diffjax import conditions, xla_options
from diffjax import targets as targets_lib
from diffjax.paths import Path
from diffjax.samplers import guidance
from diffjax.samplers.adaptive import check_finished, solve

Array = jax.Array

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


class LikelihoodInfo(NamedTuple):
    """Extras of :func:`log_likelihood`.

    nfe: ODE right-hand-side evaluations (each is one model call plus its JVPs).
    stderr: ``[B]`` Monte Carlo standard error of the Hutchinson estimate (NaN for ``exact``
      or a single probe).
    prior_logp: ``[B]`` ``log p_prior(x_{t_max})``.
    x_t_max: the data mapped to ``t_max`` (the flow's latent), ``[B, ...]``.
    finished: bool scalar, whether the solve reached ``t_max`` within ``max_evals`` (always
      True outside a trace: :func:`log_likelihood` raises otherwise).
    """

    nfe: Array
    stderr: Array
    prior_logp: Array
    x_t_max: Array
    finished: Array


@dataclasses.dataclass(frozen=True)
class _Static:
    model_fn: Callable
    has_params: bool
    path: Path
    target: str
    divergence: str
    num_probes: int
    probe: str
    t_min: float
    rtol: float
    atol: float
    max_evals: int


def _probes(key: Array, kind: str, shape: tuple, dtype) -> Array:
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    return jax.random.normal(key, shape, dtype)


@functools.partial(xla_options.jit, static_argnums=0)
def _run(static: _Static, x: Array, key: Array, params, cond):
    path = static.path
    model = guidance.bind(static.model_fn, static.has_params, params, cond)

    def velocity(x, t):
        tb = jnp.full(x.shape[:1], t, x.dtype)
        x0, eps = targets_lib.to_x0_eps(static.target, path, model(x, tb, cond), x, tb)
        return path.d_alpha(t) * x0 + path.d_sigma(t) * eps

    batch, dim = x.shape[0], math.prod(x.shape[1:])
    if static.divergence == "exact":
        # One tangent per coordinate, the same for every example: [D, B, ...].
        tangents = jnp.broadcast_to(jnp.eye(dim, dtype=x.dtype)[:, None, :], (dim, batch, dim))
        tangents = tangents.reshape((dim,) + x.shape)
    else:
        tangents = _probes(key, static.probe, (static.num_probes,) + x.shape, x.dtype)

    def rhs(t, state):
        y, _ = state
        v, jv = jax.vmap(lambda u: jax.jvp(lambda z: velocity(z, t), (y,), (u,)))(tangents)
        quad = jnp.sum(jnp.reshape(tangents * jv, tangents.shape[:2] + (-1,)), axis=-1)  # [P, B]
        div = jnp.sum(quad, axis=0, keepdims=True) if static.divergence == "exact" else quad
        return v[0], div.T

    num = 1 if static.divergence == "exact" else static.num_probes
    state0 = (x, jnp.zeros((batch, num), x.dtype))
    result = solve(rhs, state0, static.t_min, path.t_max, rtol=static.rtol, atol=static.atol,
                   max_evals=static.max_evals)
    x_end, delta = result.y                              # NaN unless result.success
    with jax.ensure_compile_time_eval():  # Path.prior_std() reads its constant with float()
        prior = path.prior_logp(x_end)
    estimates = prior[:, None] + delta                                   # [B, P]
    logp = jnp.mean(estimates, axis=-1)
    stderr = jnp.std(estimates, axis=-1, ddof=1) / math.sqrt(num) if num > 1 else \
        jnp.full((batch,), jnp.nan, x.dtype)
    return logp, LikelihoodInfo(result.nfe, stderr, prior, x_end, result.success)


def log_likelihood(model_fn: Callable, path: Path, x: Array, key: Optional[Array] = None, *,
                   target: str, params: Any = None, cond: Optional[dict] = None,
                   divergence: str = "exact", num_probes: int = 1,
                   probe: str = "rademacher", t_min: Optional[float] = None,
                   rtol: float = 1e-5, atol: float = 1e-5,
                   max_evals: int = 10_000) -> tuple[Array, LikelihoodInfo]:
    """``log p(x)`` in nats under the model's probability-flow ODE, ``[B]``.

    Args:
      model_fn: ``f(params, x, t, cond)`` with ``params``, else ``f(x, t)`` (``f(x, t, cond)``
        with ``cond``) -> prediction of target, as for :func:`diffjax.sample`.
      x: ``[B, ...]`` data, placed at ``t_min`` (default ``path.t_min``; ``0`` where the
        path and target allow it, e.g. rectified flow with a velocity model).
      key: PRNG key for the Hutchinson probes (required for ``"hutchinson"``).
      params: the model's parameters (traced: new weights do not recompile).
      cond: the condition pytree, leaves ``[B, ...]`` (``log p(x | cond)``).
      divergence: ``"exact"`` or ``"hutchinson"``; num_probes, probe: Hutchinson's.
      rtol, atol, max_evals: the Dormand-Prince solver's tolerances and evaluation budget
        (``max_evals`` becomes diffrax's ``max_steps = (max_evals - 1) // 6``).
        Running out of ``max_evals`` raises ``ValueError`` naming them (under the caller's own
        ``jit`` it cannot: ``logp`` is then NaN and ``info.finished`` False).

    Returns:
      ``(logp [B], LikelihoodInfo)``.
    """
    targets_lib.check_target(target)
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; valid choices: "
                         f"{', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"Unknown probe {probe!r}; valid choices: {', '.join(PROBES)}")
    if divergence == "hutchinson":
        if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
            raise ValueError(f"num_probes must be an int >= 1, got {num_probes!r}")
        if key is None:
            raise ValueError("divergence='hutchinson' needs a PRNG key for its probes")
    t_min = float(path.t_min if t_min is None else t_min)
    if not 0.0 <= t_min < path.t_max:
        raise ValueError(f"need 0 <= t_min < path.t_max = {path.t_max}, got t_min={t_min}")
    if target in ("eps", "score") and not float(path.alpha(jnp.asarray(path.t_max))) > 0:
        raise ValueError(f"target {target!r} cannot give x0_hat where alpha(t_max) = 0 on "
                         f"{path.name}; build the path with t_max < 1")
    if target == "x0" and not float(path.sigma(jnp.asarray(t_min))) > 0:
        raise ValueError(f"target 'x0' cannot give eps_hat where sigma(t_min) = 0 on {path.name}; "
                         "pass t_min > 0")
    x = jnp.asarray(x)
    cond = None if cond is None else conditions.check(cond, x.shape[0])
    static = _Static(model_fn, params is not None, path, target, divergence,
                     num_probes if divergence == "hutchinson" else 1, probe, t_min,
                     float(rtol), float(atol), int(max_evals))
    key = jax.random.PRNGKey(0) if key is None else key
    logp, info = _run(static, x, key, params, cond)
    check_finished(info.finished, "log_likelihood's ODE solve",
                   f"max_evals={static.max_evals}", static.rtol, static.atol)
    return logp, info


def dequantize(x_uint8: Array, key: Array, dtype=None) -> Array:
    """``y = (k + u) / 127.5 - 1``, ``u ~ U(0, 1)``: 8-bit integers to data in [-1, 1 + 1/127.5)."""
    dtype = dtype or jnp.result_type(float)
    u = jax.random.uniform(key, jnp.shape(x_uint8), dtype)
    return (jnp.asarray(x_uint8, dtype) + u) / 127.5 - 1.0


def bits_per_dim_from_logp(logp: Array, dim: int) -> Array:
    """``(-logp / D + log 127.5) / log 2`` for densities of dequantised 8-bit data in [-1, 1]."""
    return (-logp / dim + math.log(127.5)) / math.log(2.0)


def bits_per_dim(model_fn: Callable, path: Path, x_uint8: Array, key: Array, *, target: str,
                 **likelihood_options) -> tuple[Array, LikelihoodInfo]:
    """Bits per dimension of 8-bit data ``x_uint8: [B, ...]`` (see the module docstring), ``[B]``.

    One dequantisation draw per example; average over several keys to reduce its variance.
    """
    k_deq, k_probe = jax.random.split(key)
    y = dequantize(x_uint8, k_deq)
    logp, info = log_likelihood(model_fn, path, y, k_probe, target=target, **likelihood_options)
    return bits_per_dim_from_logp(logp, math.prod(y.shape[1:])), info


__all__ = ["log_likelihood", "bits_per_dim", "bits_per_dim_from_logp", "dequantize",
           "LikelihoodInfo", "DIVERGENCES", "PROBES"]
