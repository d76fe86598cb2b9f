"""UniPC (Zhao et al. 2023, "UniPC: A unified predictor-corrector framework ..."), data prediction.

A multistep exponential integrator in ``lambda = log(alpha/sigma)`` like DPM-Solver++, with
a corrector (UniC) that costs no evaluation: after predicting ``x_s``, the model is evaluated
there anyway for the next step, and that ``m_s = x0_hat(x_s)`` also corrects ``x_s`` itself.
For a step ``t -> s`` with ``h = lambda_s - lambda_t``, previous predictions ``m_k`` at
``lambda_k`` (``r_k = (lambda_k - lambda_t) / h < 0``) and ``D_k = (m_k - m0) / r_k``:

    x_s = (sigma_s/sigma_t) x_t - alpha_s expm1(-h) m0 - alpha_s B(h) sum_k rho_k D_k,

where UniP uses the ``p - 1`` previous points and UniC adds ``D_s = m_s - m0`` (``r = 1``);
``rho`` solves ``sum_k rho_k r_k^(n-1) = n! phi_n(h) / B(h)``, ``n = 1..`` (their eq. 8),
``phi_{n+1} = phi_n / (-h) - 1/n!`` from ``phi_1 = expm1(-h)/(-h) - 1``, and
``B(h) = -h`` ("bh1") or ``expm1(-h)`` ("bh2"). Warm-up with orders 1, 2, ...; with
``lower_order_final`` the last steps drop to order ``K - i`` as in the reference code
(``convention="reference"``, stopping at ``t_min``), or to ``N - i`` with ``N = K + 1`` steps
the last of which goes to ``sigma = 0`` (``convention="diffusers"``, diffusers'
``UniPCMultistepScheduler``: its final step is the ``denoise_to_zero`` evaluation).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Plan, Problem, half_logsnr, run_grid

Array = jax.Array


def _solve2(a, c, b1, b2):
    """``[[1, 1], [a, c]] rho = [b1, b2]``."""
    rho1 = (b2 - c * b1) / (a - c)
    return rho1, b1 - rho1


def _rhos(h, r1, r2, k, variant):
    """Weights of ``(D_1, D_2)`` for UniP and of ``(D_1, D_2, D_s)`` for UniC at order ``k``."""
    hh = -h
    b_h = hh if variant == "bh1" else jnp.expm1(hh)
    phi1 = jnp.expm1(hh) / hh - 1.0
    phi2 = phi1 / hh - 0.5
    phi3 = phi2 / hh - 1.0 / 6.0
    b1, b2, b3 = phi1 / b_h, 2.0 * phi2 / b_h, 6.0 * phi3 / b_h
    p3 = _solve2(r1, r2, b1, b2)
    pred = (jnp.where(k == 2, 0.5, jnp.where(k == 3, p3[0], 0.0)),
            jnp.where(k == 3, p3[1], 0.0))
    c2 = _solve2(r1, 1.0, b1, b2)
    matrix = jnp.stack([jnp.stack([1.0, 1.0, 1.0]), jnp.stack([r1, r2, 1.0]),
                        jnp.stack([r1**2, r2**2, 1.0])])
    c3 = jnp.linalg.solve(matrix, jnp.stack([b1, b2, b3]))
    corr = (jnp.where(k == 2, c2[0], jnp.where(k == 3, c3[0], 0.0)),
            jnp.where(k == 3, c3[1], 0.0),
            jnp.where(k == 1, 0.5, jnp.where(k == 2, c2[1], c3[2])))
    return pred, corr, b_h


def unipc(problem: Problem, x: Array, ts: Array, keys, plan: Plan, *, order: int,
          variant: str, lower_order_final: bool, convention: str):
    """UniPC-``order`` (UniP-p with UniC). NFE: 1 per interval. Needs a finite log-SNR."""
    path = problem.path
    num = ts.shape[0] - 1
    lam = half_logsnr(path, ts)

    # Both conventions lower the order at any K; diffusers counts its final step to sigma = 0.
    steps = num + (plan.denoise if convention == "diffusers" else 0)

    def order_at(i):
        k = jnp.minimum(order, i + 1)
        return jnp.minimum(k, steps - i) if lower_order_final else k

    def update(x_t, j, ms, m_s):
        """The step ``ts[j] -> ts[j + 1]`` from ``x_t`` with ``ms = (m0, m1, m2)``; UniC if
        ``m_s`` (the prediction at the new point) is given, else UniP."""
        k = order_at(j)
        h = lam[j + 1] - lam[j]
        r1 = jnp.where(k >= 2, (lam[jnp.maximum(j - 1, 0)] - lam[j]) / h, -1.0)
        r2 = jnp.where(k >= 3, (lam[jnp.maximum(j - 2, 0)] - lam[j]) / h, -2.0)
        pred, corr, b_h = _rhos(h, r1, r2, k, variant)
        m0, m1, m2 = ms
        d1, d2 = (m1 - m0) / r1, (m2 - m0) / r2
        t, s = ts[j], ts[j + 1]
        x_s = path.sigma(s) / path.sigma(t) * x_t - path.alpha(s) * jnp.expm1(-h) * m0
        if m_s is None:
            return x_s - path.alpha(s) * b_h * (pred[0] * d1 + pred[1] * d2)
        return x_s - path.alpha(s) * b_h * (corr[0] * d1 + corr[1] * d2 + corr[2] * (m_s - m0))

    def step(x, state, i, t, s, key):
        x_prev, m1, m2, m3 = state          # x_prev: corrected state at ts[i - 1]
        m0, _ = problem.denoise(x, t)
        corrected = update(x_prev, jnp.maximum(i - 1, 0), (m1, m2, m3), m0)
        x = jnp.where(i > 0, corrected, x)
        return update(x, i, (m0, m1, m2), None), (x, m0, m1, m2)

    zeros = jnp.zeros_like(x)
    return run_grid(problem, step, x, ts, keys, plan, state=(x, zeros, zeros, zeros))
