"""tAB-DEIS (Zhang & Chen 2022, "Fast sampling of diffusion models with exponential integrator").

In ``x~ = x / alpha`` and the VE-equivalent noise level ``s = sigma / alpha`` the
probability-flow ODE is ``dx~/ds = eps_hat`` (as in :mod:`.edm`), so for a step ``t -> t'``

    x_t' = (alpha_t' / alpha_t) x_t + alpha_t' int_{s(t)}^{s(t')} eps_hat(tau(u)) du.

tAB-DEIS replaces ``eps_hat`` by the Lagrange polynomial *in time* ``tau`` through the last
``k`` predictions ``eps_i, eps_{i-1}, ...`` (at ``t_i, t_{i-1}, ...``; Adams-Bashforth), so

    x_{i+1} = (alpha_{i+1} / alpha_i) x_i + alpha_{i+1} sum_j C_ij eps_{i-j},
    C_ij = int_{s_i}^{s_{i+1}} l_j(tau(u)) du,
    l_j(tau) = prod_{m != j} (tau - t_{i-m}) / (t_{i-j} - t_{i-m}).

``C_ij`` are computed by Gauss-Legendre quadrature in ``u = s`` (smooth there even where
``ds/dt`` is not, e.g. VP near ``t = 0``). The first steps warm up with orders 1, 2, ...
(as the reference code). Order 1 is DDIM. The authors' recommended setting is order 3 on a
grid quadratic in ``t`` (their ``ts_phase="t", ts_order=2``: :func:`.grids.quadratic`).
"""
from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem, run_grid

Array = jax.Array

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(12)


def _lagrange(tau: Array, nodes: Array, k: Array) -> Array:
    """``l_j(tau)`` for the first ``k`` of ``nodes: [3]``, zero for ``j >= k``: ``[3, Q]``."""
    valid = jnp.arange(nodes.shape[0]) < k
    rows = []
    for j in range(nodes.shape[0]):
        factor = jnp.ones_like(tau)
        for m in range(nodes.shape[0]):
            if m == j:
                continue
            use = valid[m] & valid[j]
            # Unused nodes may coincide (clamped indices): keep the division finite.
            denom = jnp.where(use, nodes[j] - nodes[m], 1.0)
            factor = factor * jnp.where(use, (tau - nodes[m]) / denom, 1.0)
        rows.append(jnp.where(valid[j], factor, 0.0))
    return jnp.stack(rows)


def _coefficients(path, t: Array, s: Array, nodes: Array, k: Array) -> Array:
    """``C_j = int_{s(t)}^{s(s)} l_j(tau(u)) du``, ``[3]``."""
    noise = lambda time: jnp.exp(-0.5 * path.logsnr(time))
    u0, u1 = noise(t), noise(s)
    x, w = (jnp.asarray(v, t.dtype) for v in (_NODES, _WEIGHTS))
    u = 0.5 * (u1 - u0) * x + 0.5 * (u1 + u0)
    tau = path.t_from_logsnr(-2.0 * jnp.log(u))
    return 0.5 * (u1 - u0) * _lagrange(tau, nodes, k) @ w


def deis(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, order: int):
    """tAB-DEIS of ``order`` 1-3. NFE: 1 per interval. Needs ``alpha > 0`` and a finite log-SNR."""
    path = problem.path

    def step(x, history, i, t, s, key):
        eps1, eps2 = history
        _, eps0 = problem.denoise(x, t)
        k = jnp.minimum(order, i + 1)
        nodes = ts[jnp.maximum(i - jnp.arange(3), 0)]
        c = _coefficients(path, t, s, nodes, k)
        x_s = path.alpha(s) * (x / path.alpha(t) + c[0] * eps0 + c[1] * eps1 + c[2] * eps2)
        return x_s, (eps0, eps1)

    zeros = jnp.zeros_like(x)
    return run_grid(problem, step, x, ts, keys, plan, state=(zeros, zeros))
