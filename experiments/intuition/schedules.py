"""Figure 2: every path's ``alpha``, ``sigma`` and log-SNR, and the log-SNRs training visits.

Top row: the coefficients of every path in :data:`diffjax.paths.PATHS` on the range the
path is used on. Bottom row: histograms of ``lambda(t)`` for ``t`` drawn by
:meth:`diffjax.objectives.Objective.sample_t`, (d) uniform ``t`` on every path, (e) each
time-sampling rule on the path it is paired with in the recipe table, (f) every rule on one
path, so the differences in (f) come from the rule alone.
"""
from __future__ import annotations

import jax
import numpy as np

from diffjax import objectives, paths
from experiments.intuition import common

# Each rule on the path the README's recipe table pairs it with.
HOME_PATH = {
    "uniform": "vp_cosine",
    "stratified": "vp_linear",
    "discrete": "ddpm",
    "lognormal": "edm",
    "logit_normal": "rectified_flow",
}
COMMON_PATH = "vp_cosine"
# Paths whose ends have alpha = 0 or sigma = 0 are drawn on [T_EDGE, 1 - T_EDGE].
T_EDGE = 1e-3
LOGSNR_BINS = np.linspace(-20.0, 20.0, 81)
# ddpm lies on vp_linear (the same betas, discretised) and subvp shares its alpha: dashes
# keep the coinciding curves visible.
LINESTYLE = {"ddpm": "--", "subvp": ":"}


def coefficients(name: str, num: int = 400) -> dict:
    """``alpha, sigma, logsnr`` (float64) of path ``name`` on its range, kept off exact 0 and 1."""
    path = paths.get(name)
    lo, hi = max(path.t_min, T_EDGE), min(path.t_max, 1.0 - T_EDGE)
    with jax.enable_x64(True):
        t = np.linspace(lo, hi, num)
        out = {"t": t, "alpha": np.asarray(path.alpha(t)), "sigma": np.asarray(path.sigma(t)),
               "logsnr": np.asarray(path.logsnr(t))}
    return out


def training_logsnr(path_name: str, rule: str, key: jax.Array, n: int) -> np.ndarray:
    """``lambda(t)`` for ``n`` training times drawn by ``rule`` on ``path_name``."""
    path = paths.get(path_name)
    objective = objectives.Objective(path, "eps", time_sampling=rule)
    t = objective.sample_t(key, n)
    return np.asarray(path.logsnr(t), np.float64)


def _summary(logsnr: np.ndarray) -> dict:
    return {"mean": float(np.mean(logsnr)), "std": float(np.std(logsnr)),
            "quantiles": np.quantile(logsnr, [0.05, 0.5, 0.95]), "samples": logsnr}


def _hist(ax, logsnr: np.ndarray, label: str) -> None:
    ax.hist(np.clip(logsnr, LOGSNR_BINS[0], LOGSNR_BINS[-1]), bins=LOGSNR_BINS, density=True,
            histtype="step", lw=1.3, label=label)


def _draw_coefficients(fig, grid, coefs: dict) -> None:
    axes = [fig.add_subplot(grid[0, j]) for j in range(3)]
    for name, c in coefs.items():
        style = dict(label=name, ls=LINESTYLE.get(name, "-"), lw=1.4)
        axes[0].plot(c["t"], c["alpha"], **style)
        axes[1].plot(c["t"], c["sigma"], **style)
        axes[2].plot(c["t"], c["logsnr"], **style)
    axes[1].set_yscale("log")
    axes[2].set_ylim(-25, 25)
    for ax, title in zip(axes, ["(a) alpha(t)", "(b) sigma(t)  (log scale)",
                                "(c) log-SNR λ(t) = log α²/σ²"]):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("t")
    axes[2].axhline(0.0, color="k", lw=0.5, ls=":")
    axes[0].legend(fontsize=7)


def _draw_histograms(fig, grid, uniform: dict, home: dict, common_path: dict) -> None:
    panels = [(uniform, "(d) uniform t on every path"),
              (home, "(e) each rule on its home path"),
              (common_path, f"(f) each rule on {COMMON_PATH}")]
    for j, (groups, title) in enumerate(panels):
        ax = fig.add_subplot(grid[1, j])
        for label, summary in groups.items():
            _hist(ax, summary["samples"], label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training log-SNR λ")
        ax.legend(fontsize=6.5)


def make(out_dir: str, *, fast: bool = False, seed: int = 0) -> dict:
    """Draws ``schedules.png``; returns the coefficients and log-SNR summaries per rule."""
    n = 4_000 if fast else 100_000
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 3 * len(paths.PATHS) + 10))
    coefs = {name: coefficients(name, 100 if fast else 400) for name in paths.PATHS}
    uniform = {name: _summary(training_logsnr(name, "uniform", next(keys), n))
               for name in paths.PATHS}
    home = {f"{rule} @ {p}": _summary(training_logsnr(p, rule, next(keys), n))
            for rule, p in HOME_PATH.items()}
    on_common = {rule: _summary(training_logsnr(COMMON_PATH, rule, next(keys), n))
                 for rule in objectives.TIME_SAMPLINGS}
    fig = common.new_figure(14, 8)
    grid = fig.add_gridspec(2, 3)
    _draw_coefficients(fig, grid, coefs)
    _draw_histograms(fig, grid, uniform, home, on_common)
    fig.suptitle("Schedules: where each path spends its time, and which noise levels training visits",
                 fontsize=10)
    png = common.save(fig, out_dir, "schedules")
    return {"png": png, "coefficients": coefs, "uniform": uniform, "home": home,
            "common": on_common, "home_paths": dict(HOME_PATH), "common_path": COMMON_PATH}
