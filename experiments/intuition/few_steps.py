"""Figure 7: why 20 steps can match 1000.

Ancestral DDPM (Ho et al. 2020) adds fresh noise at every step; each step's Gaussian is only
right for small steps, so it needs ~1000 of them. DDIM (Song et al. 2021) and DPM-Solver++
(Lu et al. 2022) integrate the probability-flow ODE instead, whose paths from noise to data
are smooth and nearly straight in the right variables (DDIM is Euler's method in
``x / alpha`` against ``sigma / alpha``; DPM-Solver++ integrates the linear part exactly in
log-SNR and extrapolates ``x0_hat`` with a second-order multistep rule), so 10-20 large steps
follow them closely.

All samplers run through :func:`diffjax.sample` on the 8-mode ring with its exact model, on
the discrete ``ddpm`` path, from the same prior draws, and end with the same ``x0_hat``
step to ``t = 0`` (``denoise_to_zero=True``, counted in the NFE). Two errors:

* ODE error: RMS distance of each deterministic sampler's end point from the reference
  solution of the same ODE from the same start (``heun`` at every one of the path's 1000
  training times: the ddpm path is sampled only there). It measures
  discretisation error only; DDPM has no such reference (it is stochastic).
* spread error: the RMS distance of samples to their nearest mode, against its exact value
  ``std * sqrt(2)`` for this ring (its modes are ~10 std apart). Too much noise left in
  (DDPM with too few steps) makes it large; this applies to every sampler.
"""
from __future__ import annotations

import jax
import numpy as np

import diffjax
from diffjax import analytic, paths
from experiments.intuition import common

PATH = "ddpm"
REFERENCE = dict(sampler="heun", num_steps=1999)  # 999 intervals + the final x0_hat
COLORS = {"ddpm": "C0", "ddim": "C1", "dpm_solver++": "C2"}
LIMIT = 2.4


def run(mix, path, sampler: str, num_steps: int, num: int, key: jax.Array, **options) -> dict:
    """One :func:`diffjax.sample` call in float64, with its trajectory and grid."""
    x, info = diffjax.sample(mix.model_fn(path, "eps"), path, (num, 2), key, target="eps",
                             sampler=sampler, num_steps=num_steps, denoise_to_zero=True,
                             return_trajectory=True, **options)
    return {"x": np.asarray(x), "trajectory": np.asarray(info.trajectory),
            "ts": np.asarray(info.ts), "nfe": int(info.nfe)}


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=-1))))


def mode_spread(mix: analytic.GaussianMixture, x: np.ndarray) -> float:
    """RMS distance of samples ``[N, 2]`` to their nearest component mean."""
    d2 = np.sum((x[:, None, :] - mix.means[None]) ** 2, axis=-1)
    return float(np.sqrt(d2.min(axis=1).mean()))


def compare(mix: analytic.GaussianMixture, num: int, budgets: dict, key: jax.Array) -> dict:
    """Every (sampler, NFE) in ``budgets``, the reference ODE solution and both errors."""
    path = paths.get(PATH)
    with jax.enable_x64(True):
        reference = run(mix, path, num=num, key=key, **REFERENCE)
        runs = {(s, n): run(mix, path, s, n, num, key) for s, ns in budgets.items() for n in ns}
    # Every component of the ring has the same isotropic covariance.
    exact_spread = float(np.sqrt(np.trace(mix.covs[0])))
    for (sampler, _), r in [*runs.items(), (("reference", 0), reference)]:
        r["ode_error"] = None if sampler == "ddpm" else rms(r["x"], reference["x"])
        r["spread"] = mode_spread(mix, r["x"])
        r["spread_error"] = abs(r["spread"] / exact_spread - 1.0)
    return {"reference": reference, "runs": runs, "exact_spread": exact_spread}


# -- drawing -------------------------------------------------------------------------------
def _density(ax, mix) -> None:
    n = 120
    g = np.linspace(-LIMIT, LIMIT, n)
    pts = np.stack([a.ravel() for a in np.meshgrid(g, g)], -1)
    with jax.enable_x64(True):
        log_p = np.asarray(mix.log_prob(pts))
    common.density(ax, log_p, n, LIMIT)


def _draw_paths(ax, mix, r: dict, ref: dict, title: str, shown: int) -> None:
    _density(ax, mix)
    for k in range(shown):
        ax.plot(ref["trajectory"][:, k, 0], ref["trajectory"][:, k, 1], "k--", lw=0.8)
        line, = ax.plot(r["trajectory"][:, k, 0], r["trajectory"][:, k, 1], "-",
                        lw=0.9 if len(r["trajectory"]) < 40 else 0.5,
                        marker="." if len(r["trajectory"]) < 40 else None, ms=4)
        ax.plot(*r["x"][k], "o", color=line.get_color(), ms=5)
    ax.set_title(title, fontsize=9)


def _label(sampler: str) -> str:
    return {"dpm_solver++": "DPM-Solver++(2M)", "ddim": "DDIM", "ddpm": "DDPM (ancestral)",
            "euler": "Euler (PF-ODE)"}[sampler]


def _draw_errors(ax_ode, ax_sw, res: dict) -> None:
    """ODE error against NFE, and the samples' spread around the modes against NFE."""
    by_sampler: dict = {}
    for (sampler, n), r in res["runs"].items():
        by_sampler.setdefault(sampler, []).append((r["nfe"], r))
    for sampler, items in by_sampler.items():
        nfe = [n for n, _ in items]
        if sampler != "ddpm":
            ax_ode.plot(nfe, [r["ode_error"] for _, r in items], "o-", label=_label(sampler),
                        color=COLORS[sampler])
        ax_sw.plot(nfe, [r["spread"] for _, r in items], "o-", label=_label(sampler),
                   color=COLORS[sampler])
    ax_sw.axhline(res["exact_spread"], color="k", ls=":", lw=1, label="exact: std·√2")
    for ax, title in [(ax_ode, "ODE error: RMS |x - x_ref| at t = 0, same start"),
                      (ax_sw, "spread: RMS distance to the nearest mode")]:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("model evaluations (NFE)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)


def _draw_table(ax, res: dict) -> None:
    ax.axis("off")
    rows = ["sampler           NFE   ODE error  spread (error)"]
    for (sampler, n), r in sorted(res["runs"].items()):
        ode = "    —    " if r["ode_error"] is None else f"{r['ode_error']:.2e} "
        rows.append(f"{_label(sampler)[:16]:<17}{r['nfe']:>4}   {ode}  {r['spread']:.4f} "
                    f"({100 * r['spread_error']:.1f}%)")
    ref = res["reference"]
    rows.append(f"{'reference rk4':<17}{ref['nfe']:>4}       0     {ref['spread']:.4f} "
                f"({100 * ref['spread_error']:.1f}%)")
    rows.append(f"{'exact':<17}{'':>4}       —     {res['exact_spread']:.4f}")
    ax.text(0.0, 0.5, "\n".join(rows), family="monospace", fontsize=8, va="center")


def make(out_dir: str, *, fast: bool = False, seed: int = 0) -> dict:
    """Draws ``few_steps.png``; returns per (sampler, NFE) the end points and both errors."""
    mix = analytic.GaussianMixture.ring()
    budgets = ({"ddpm": [1000], "ddim": [10], "dpm_solver++": [10, 20]} if fast else
               {"ddpm": [10, 20, 100, 1000], "ddim": [5, 10, 20, 50, 100],
                "dpm_solver++": [5, 10, 20, 50, 100]})
    res = compare(mix, 512 if fast else 2000, budgets, jax.random.PRNGKey(seed))
    fig = common.new_figure(14, 9)
    grid = fig.add_gridspec(2, 3)
    # DDPM's 1000 noisy steps hide one another: fewer of its paths are drawn.
    for j, (key, shown) in enumerate([(("ddpm", 1000), 3), (("ddim", 10), 8),
                                      (("dpm_solver++", 10), 8)]):
        r = res["runs"][key]
        _draw_paths(fig.add_subplot(grid[0, j]), mix, r, res["reference"],
                    f"{_label(key[0])}, {r['nfe']} NFE (dashed: exact ODE path)", shown)
    _draw_errors(fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1]), res)
    _draw_table(fig.add_subplot(grid[1, 2]), res)
    fig.suptitle(f"Why 20 steps can match 1000: the same 8-mode ring, {PATH} path, "
                 "same starting noise", fontsize=10)
    png = common.save(fig, out_dir, "few_steps")
    return {"png": png, "path": PATH, **res}
