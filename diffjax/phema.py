"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", EDM2, Sec. 3 and App. C).

A *power-function* EMA with exponent ``gamma`` averages the parameters of steps ``1..T`` with
weights proportional to ``tau^gamma``. Tracked by the update
``ema <- beta ema + (1 - beta) theta_t`` with ``beta_t = (1 - 1/t)^(gamma + 1)`` (``t`` = the
number of the update, from 1), the EMA after step ``T`` is exactly

    ema_T = sum_tau w_T(tau) theta_tau,   w_T(tau) = (tau^(gamma+1) - (tau-1)^(gamma+1)) / T^(gamma+1)

(the product of the betas telescopes). Its length is given as ``sigma_rel``, the standard
deviation of the averaging kernel relative to ``T``:
``sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))``.

Training keeps two such EMAs and saves snapshots of both every so many steps. Any other
EMA — another ``sigma_rel``, another end step — is then reconstructed as the linear
combination of snapshots whose weights ``w`` best match the target's in least squares over the
steps, solved here exactly in the discrete steps (EDM2 solves the continuous-time version). A
target that is itself a snapshot is recovered exactly.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import numpy as np

#: EDM2's two tracked lengths.
DEFAULT_SIGMA_RELS = (0.05, 0.10)
#: sigma_rel at its largest (gamma near -0.42): longer kernels do not exist.
_G = np.linspace(-0.99, 1.0, 200001)
MAX_SIGMA_REL = float(np.max(np.sqrt((_G + 1) / ((_G + 2) ** 2 * (_G + 3)))))


def gamma_to_sigma_rel(gamma: float) -> float:
    """``sigma_rel`` of the power-function EMA with exponent ``gamma > -1``."""
    if not gamma > -1:
        raise ValueError(f"gamma must be > -1, got {gamma}")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent ``gamma`` with the given ``sigma_rel`` (the largest root, EDM2's choice):
    the real root of ``gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0``."""
    if not 0 < sigma_rel <= MAX_SIGMA_REL:
        raise ValueError(f"sigma_rel must be in (0, {MAX_SIGMA_REL:.4f}], got {sigma_rel}")
    inv = 1.0 / sigma_rel**2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    real = [float(r.real) for r in roots if abs(r.imag) < 1e-9 and r.real > -1]
    return max(real)


def beta(step: Any, gamma: float) -> Any:
    """The decay of update number ``step`` (1-based; 0 at the first update)."""
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def weights(gamma: float, end: int, length: int | None = None) -> np.ndarray:
    """``w_end(tau)`` for ``tau = 1..length`` (zero past ``end``), float64."""
    tau = np.arange(1, (length or end) + 1, dtype=np.float64)
    w = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / float(end) ** (gamma + 1)
    return np.where(tau <= end, w, 0.0)


def solve(snapshots: Sequence[tuple[float, int]], target: tuple[float, int]) -> np.ndarray:
    """Coefficients ``x`` with ``sum_i x_i w_i ~ w_target`` in least squares over the steps.

    snapshots: ``(gamma_i, end_step_i)`` of each stored snapshot; target: ``(gamma, end_step)``
    with ``end_step`` at most the last snapshot's.
    """
    if not snapshots:
        raise ValueError("no EMA snapshots to reconstruct from")
    length = max(end for _, end in snapshots)
    if not 1 <= target[1] <= length:
        raise ValueError(f"target step {target[1]} is outside the snapshots' range [1, {length}]")
    basis = np.stack([weights(g, end, length) for g, end in snapshots], axis=1)  # [T, n]
    goal = weights(target[0], target[1], length)
    # Scale columns to unit norm so lstsq's cut-off treats long and short kernels alike.
    norms = np.linalg.norm(basis, axis=0)
    x, *_ = np.linalg.lstsq(basis / norms, goal, rcond=1e-12)
    return x / norms


def combine(params: Sequence[Any], coefficients: np.ndarray) -> Any:
    """``sum_i coefficients[i] * params[i]`` over pytrees of one structure (float64 sums)."""
    if len(params) != len(coefficients):
        raise ValueError(f"{len(params)} snapshots but {len(coefficients)} coefficients")
    return jax.tree_util.tree_map(
        lambda *leaves: sum(float(c) * np.asarray(leaf, np.float64)
                            for c, leaf in zip(coefficients, leaves)).astype(
                                np.asarray(leaves[0]).dtype), *params)


def parse_spec(spec: str) -> Optional[float]:
    """``config.sampling.ema``: ``""`` (the run's own EMA: None) or ``"sigma_rel:<s>"``.

    Raises:
      ValueError: another form, or ``s`` outside ``(0, MAX_SIGMA_REL]``.
    """
    if not spec:
        return None
    kind, _, value = str(spec).partition(":")
    try:
        sigma_rel = float(value) if kind == "sigma_rel" else None
    except ValueError:
        sigma_rel = None
    if sigma_rel is None or not 0 < sigma_rel <= MAX_SIGMA_REL:
        raise ValueError(f"config.sampling.ema={spec!r} is not valid; valid choices: '' (the "
                         f"run's EMA) or 'sigma_rel:<s>' with s in (0, "
                         f"{MAX_SIGMA_REL:.4f}]")
    return sigma_rel


__all__ = ["DEFAULT_SIGMA_RELS", "MAX_SIGMA_REL", "beta", "combine", "gamma_to_sigma_rel",
           "parse_spec", "sigma_rel_to_gamma", "solve", "weights"]
