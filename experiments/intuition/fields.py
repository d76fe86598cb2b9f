"""Figure 5: DDPM, score models and flow matching regress one field.

On a Gaussian path, at fixed ``(x, t)``, the three targets are linear in one another
(Song et al. 2021, eq. 13; Lipman et al. 2022):

    eps_hat  = -sigma(t) score,
    velocity = f(t) x - g(t)^2 / 2 score,        f = alpha'/alpha,  g^2 = -sigma^2 lambda',

so an eps network (DDPM), a score network (NCSN, score SDE) and a velocity network (flow
matching) trained to optimality learn the same thing in different units. The figure draws
the exact fields of a 2-D ring mixture (``GaussianMixture.model_fn`` in each target) at
several ``t``, then the paths that the same score produces under three samplers of
:func:`diffjax.sample`: the probability-flow ODE (deterministic), the reverse SDE, and
Langevin dynamics.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import analytic, paths
from experiments.intuition import common

PATH = "vp_linear"
FIELD_TIMES = (0.05, 0.2, 0.4, 0.7)
# Arrows point the way a sample moves when t decreases (toward the data).
TARGETS = {
    "eps": ("−ε̂  (DDPM)", -1.0),
    "score": ("score ∇log p_t  (NCSN / score SDE)", 1.0),
    "velocity": ("−dx/dt  (flow matching, reverse time)", -1.0),
}
LIMIT = 2.4
LANGEVIN_T = 0.05
LANGEVIN_WINDOW = 1e-3


def grid_points(n: int, limit: float = LIMIT) -> np.ndarray:
    """``[n * n, 2]`` points of a square grid over ``[-limit, limit]^2``."""
    g = np.linspace(-limit, limit, n)
    xx, yy = np.meshgrid(g, g)
    return np.stack([xx.ravel(), yy.ravel()], -1)


def field_numbers(mix: analytic.GaussianMixture, path, points: np.ndarray, t: float) -> dict:
    """The exact model in every target of :data:`TARGETS`, and ``log p_t``, at ``points``."""
    # float64: at large t the velocity is a small difference of two large terms.
    with jax.enable_x64(True):
        x = jnp.asarray(points, jnp.float64)
        out = _exact_fields(mix, path)(x, jnp.full((x.shape[0],), t, x.dtype))
        return jax.tree_util.tree_map(np.asarray, out)


@functools.lru_cache(maxsize=None)
def _exact_fields(mix: analytic.GaussianMixture, path):
    """One jitted function for all targets (cached: one compile per grid size, not per t)."""
    models = {name: mix.model_fn(path, name) for name in TARGETS}

    @jax.jit
    def compute(x, t):
        out = {name: fn(x, t) for name, fn in models.items()}
        out["log_p"] = mix.log_prob_t(path, x, t)
        return out

    return compute


def one_field_residuals(path, points: np.ndarray, fields: dict, t: float) -> dict:
    """Largest departure from ``eps = -sigma score`` and ``v = f x - g^2/2 score``, relative."""
    with jax.enable_x64(True):
        t64 = jnp.asarray(t, jnp.float64)
        sigma = float(path.sigma(t64))
        f, g2 = float(path.drift_coef(t64)), float(path.diffusion_sq(t64))
    score = fields["score"]
    eps_res = np.abs(fields["eps"] + sigma * score).max() / np.abs(fields["eps"]).max()
    vel_pred = f * points - 0.5 * g2 * score
    vel_res = np.abs(fields["velocity"] - vel_pred).max() / np.abs(fields["velocity"]).max()
    return {"eps_vs_score": float(eps_res), "velocity_vs_score": float(vel_res)}


# -- trajectories of three samplers with the same score ------------------------------------
def trajectories(mix: analytic.GaussianMixture, path, num: int, steps: dict, key: jax.Array) -> dict:
    """Paths of the probability-flow ODE, the reverse SDE and Langevin dynamics.

    All three start from the same prior draw (same key). Langevin dynamics is the ``pc``
    sampler on the short window ``[LANGEVIN_T, LANGEVIN_T + LANGEVIN_WINDOW]``: there its
    predictor barely moves (its total variance ``int g^2 dt`` is ~1e-3) and the corrector's
    Langevin steps on ``p_t``, with the score at ``t ~ LANGEVIN_T``, do the work.
    """
    runs = {
        "probability-flow ODE (heun)": dict(sampler="heun", num_steps=steps["ode"]),
        "reverse SDE (euler_maruyama)": dict(sampler="euler_maruyama", num_steps=steps["sde"]),
        f"Langevin on p_t, t≈{LANGEVIN_T}": dict(
            sampler="pc", num_steps=2 * steps["langevin"], corrector_steps=1,
            t_min=LANGEVIN_T, t_max=LANGEVIN_T + LANGEVIN_WINDOW, denoise_to_zero=False),
    }
    model = mix.model_fn(path, "score")
    out = {}
    for name, kwargs in runs.items():
        x, info = diffjax.sample(model, path, (num, 2), key, target="score",
                                 return_trajectory=True, **kwargs)
        out[name] = {"x": np.asarray(x), "trajectory": np.asarray(info.trajectory),
                     "ts": np.asarray(info.ts), "nfe": int(info.nfe),
                     **endpoint_stats(mix, np.asarray(x))}
    return out


def endpoint_stats(mix: analytic.GaussianMixture, x: np.ndarray) -> dict:
    """Distance to the nearest mode and the share of samples per mode, ``[K]``."""
    d = np.linalg.norm(x[:, None, :] - mix.means[None], axis=-1)
    nearest = d.argmin(axis=1)
    share = np.bincount(nearest, minlength=mix.num_components) / len(x)
    return {"mode_distance": float(d.min(axis=1).mean()), "mode_share": share}


# -- drawing -------------------------------------------------------------------------------
def _density(ax, log_p: np.ndarray, n: int) -> None:
    common.density(ax, log_p, n, LIMIT)


def _draw_fields(fig, grid, fields: dict, dens: dict, arrows: np.ndarray, n_arrow: int,
                 n_dens: int) -> None:
    for r, (name, (title, sign)) in enumerate(TARGETS.items()):
        for c, t in enumerate(FIELD_TIMES):
            ax = fig.add_subplot(grid[r, c])
            _density(ax, dens[t]["log_p"], n_dens)
            u = sign * fields[t][name]
            # Lengths are normalised per panel: the score grows like 1/sigma^2 as t -> 0.
            ax.quiver(arrows[:, 0], arrows[:, 1], u[:, 0], u[:, 1], color=f"C{r}", width=0.004)
            if r == 0:
                ax.set_title(f"t = {t}", fontsize=9)
            if c == 0:
                ax.set_ylabel(title, fontsize=8)


def _draw_trajectories(fig, grid, trajs: dict, log_p0: np.ndarray, n_dens: int,
                       shown: int) -> None:
    for c, (name, run) in enumerate(trajs.items()):
        ax = fig.add_subplot(grid[3, c])
        _density(ax, log_p0, n_dens)
        ax.plot(run["x"][:, 0], run["x"][:, 1], ".", color="0.3", ms=1.5)
        # At most ~100 points per path: the jitter still shows, the PNG stays small.
        every = max(1, len(run["trajectory"]) // 100)
        for k in range(shown):
            path_k = run["trajectory"][::every, k]
            line, = ax.plot(path_k[:, 0], path_k[:, 1], lw=0.8)
            ax.plot(*run["trajectory"][0, k], "o", color=line.get_color(), ms=4, mfc="none")
            ax.plot(*run["x"][k], "o", color=line.get_color(), ms=4)
        ax.set_title(f"{name}\nNFE {run['nfe']}, mean distance to a mode "
                     f"{run['mode_distance']:.3f}", fontsize=8)
    ax = fig.add_subplot(grid[3, 3])
    ax.axis("off")
    ax.text(0.0, 0.5, "Rows 1-3: one exact field in three units\n"
            "(ε̂ = −σ·score,  dx/dt = f·x − g²/2·score);\n"
            "arrows normalised per panel.\n\nRow 4: the same score moved three ways,\n"
            f"{shown} paths each from the same prior draws\n"
            "(open circle: start, filled: end);\n"
            "grey dots: all end points.", fontsize=8, va="center")


def make(out_dir: str, *, fast: bool = False, seed: int = 0) -> dict:
    """Draws ``fields.png``; returns the exact fields, the one-field residuals and the paths."""
    mix, path = analytic.GaussianMixture.ring(), paths.get(PATH)
    n_arrow, n_dens = (11, 48) if fast else (13, 120)
    arrows, dense = grid_points(n_arrow), grid_points(n_dens)
    fields = {t: field_numbers(mix, path, arrows, t) for t in FIELD_TIMES}
    dens = {t: {"log_p": field_numbers(mix, path, dense, t)["log_p"]} for t in FIELD_TIMES}
    residuals = {t: one_field_residuals(path, arrows, fields[t], t) for t in FIELD_TIMES}
    steps = ({"ode": 30, "sde": 100, "langevin": 100} if fast else
             {"ode": 60, "sde": 500, "langevin": 500})
    trajs = trajectories(mix, path, 256 if fast else 1024, steps, jax.random.PRNGKey(seed))
    log_p0 = field_numbers(mix, path, dense, path.t_min)["log_p"]
    fig = common.new_figure(11, 11.5)
    grid = fig.add_gridspec(4, 4)
    _draw_fields(fig, grid, fields, dens, arrows, n_arrow, n_dens)
    _draw_trajectories(fig, grid, trajs, log_p0, n_dens, 6)
    fig.suptitle(f"One recipe, one field: the exact fields of an 8-mode ring on {PATH}",
                 fontsize=10)
    png = common.save(fig, out_dir, "fields")
    return {"png": png, "path": PATH, "points": arrows, "fields": fields,
            "residuals": residuals, "trajectories": trajs, "ring_means": mix.means}
