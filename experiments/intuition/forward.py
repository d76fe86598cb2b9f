"""Figure 1: the forward process dissolves a digit, ``x_t = alpha(t) x0 + sigma(t) eps``.

One test digit and one fixed noise image are mixed at ``t = 0 ... 1`` under the discrete
DDPM schedule (linear betas, Ho et al. 2020) and the cosine schedule (Nichol & Dhariwal
2021). Under each frame: the signal fraction ``alpha_bar = alpha^2`` and the SNR in dB.
"""
from __future__ import annotations

import jax
import numpy as np

from diffjax import paths
from experiments.intuition import common

PATHS = ("ddpm", "vp_cosine")


def frame_times(fast: bool) -> np.ndarray:
    return np.linspace(0.0, 1.0, 6 if fast else 11)


def schedule_numbers(name: str, t: np.ndarray) -> dict:
    """``alpha_bar`` and SNR at ``t`` (float64), ``t`` clipped to the path's ``t_max``.

    ``vp_cosine`` reaches ``alpha = 0`` at ``t = 1`` exactly (log-SNR ``-inf``); its last
    frame is drawn at ``t_max = 0.999``, and the clipped times are returned as ``t_eval``.
    """
    path = paths.get(name)
    t_eval = np.minimum(t, path.t_max)
    with jax.enable_x64(True):
        t64 = np.asarray(t_eval, np.float64)
        alpha, sigma = np.asarray(path.alpha(t64)), np.asarray(path.sigma(t64))
    with np.errstate(divide="ignore"):
        logsnr = 2.0 * (np.log(alpha) - np.log(sigma))
    return {"t_eval": t_eval, "alpha": alpha, "sigma": sigma, "alpha_bar": alpha**2,
            "snr_db": common.snr_db(logsnr)}


def _label(t: float, t_eval: float, alpha_bar: float, snr_db: float) -> str:
    snr = "+inf" if np.isinf(snr_db) else f"{snr_db:+.1f}"
    clipped = "" if t == t_eval else f" (t={t_eval:g})"
    return f"ᾱ={alpha_bar:.3g}{clipped}\n{snr} dB"


def _draw(out_dir: str, frames: dict, numbers: dict, t: np.ndarray) -> str:
    cols = len(t)
    fig = common.new_figure(1.15 * cols, 5.4)
    grid = fig.add_gridspec(3, cols, height_ratios=[1, 1, 1.1])
    for row, name in enumerate(PATHS):
        for j in range(cols):
            ax = fig.add_subplot(grid[row, j])
            common.show_image(ax, frames[name][j], vmin=-1.6, vmax=1.6)
            num = numbers[name]
            ax.set_xlabel(_label(t[j], num["t_eval"][j], num["alpha_bar"][j], num["snr_db"][j]),
                          fontsize=7)
            if row == 0:
                ax.set_title(f"t={t[j]:.2g}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    ax = fig.add_subplot(grid[2, :])
    dense = np.linspace(0.0, 1.0, 401)
    for name in PATHS:
        curve = schedule_numbers(name, dense)
        line, = ax.plot(dense, curve["snr_db"], label=f"{name}")
        ax.plot(numbers[name]["t_eval"], numbers[name]["snr_db"], "o", color=line.get_color(), ms=3)
    ax.axhline(0.0, color="k", lw=0.5, ls=":")
    ax.set_ylim(-50, 45)
    ax.set_xlabel("t  (0 = data, 1 = noise)")
    ax.set_ylabel("SNR = α²/σ²  [dB]")
    ax.legend(fontsize=8)
    fig.suptitle("Forward process: the digit dissolves like ink in water (same ε in every frame)",
                 fontsize=10)
    return common.save(fig, out_dir, "forward")


def make(out_dir: str, *, fast: bool = False, seed: int = 0, digit: int = 3) -> dict:
    """Draws ``forward.png``; returns per path ``alpha_bar``, ``snr_db`` at ``t``."""
    x, labels = common.digits("test")
    rng = np.random.default_rng(seed)
    index = int(rng.choice(np.flatnonzero(labels == digit)))
    x0 = x[index]
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    t = frame_times(fast)
    numbers, frames = {}, {}
    for name in PATHS:
        numbers[name] = schedule_numbers(name, t)
        n = len(t)
        x_t = paths.get(name).marginal(np.repeat(x0[None], n, 0), np.repeat(eps[None], n, 0),
                                       numbers[name]["t_eval"].astype(np.float32))
        frames[name] = np.asarray(x_t)
    png = _draw(out_dir, frames, numbers, t)
    return {"png": png, "t": t, "digit_label": int(labels[index]), "digit_index": index, **numbers}
