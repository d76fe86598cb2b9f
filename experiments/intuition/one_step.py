"""Figure 4: one DDPM step on a 4x4 image, with every number printed.

The model is exact: a 16-d Gaussian mixture (one full-covariance Gaussian per class) fitted
to the digits average-pooled to 4x4, so ``eps_hat`` is the true posterior mean of the noise.
The step is Ho et al. 2020, Algorithm 2, on the discrete ``ddpm`` path (``t = i / T``):

    x_{i-1} = 1/sqrt(alpha_i) (x_i - beta_i / sqrt(1 - alpha_bar_i) eps_hat) + sigma_i z,
    sigma_i^2 = beta_tilde_i = (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) beta_i,

written out by hand from ``DDPM.betas`` and ``alphas_cumprod``, then compared with
:func:`diffjax.sample` making the same single step (``sampler="ddpm"``, one interval from
``t_i`` to ``t_{i-1}``, started with ``x_init``). The same move as a DDIM step and as an
Euler step of the probability-flow ODE follows, and DDIM is checked to be exactly Euler's
method on the rectified-flow path (``x / (alpha + sigma)`` against ``sigma / (alpha + sigma)``).

Everything here runs in float64 so that the printed numbers and the comparisons are exact
to rounding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import paths
from experiments.intuition import common

STEP = 300          # i: the step from t = i/T to (i - 1)/T
DIGIT = 0


def library_draws(key: jax.Array, shape: tuple, dtype) -> tuple[jax.Array, jax.Array]:
    """The two draws :func:`diffjax.sample` makes for a one-interval ancestral run.

    ``eps0`` starts the run (``x_t = alpha x_init + sigma eps0``) and ``z`` is the step's
    fresh noise. Mirroring its key schedule lets the hand-made step use the very same
    numbers; if that schedule changes, the comparison below (and its test) fails loudly.
    """
    k_prior, k_loop, _ = jax.random.split(key, 3)
    k_step = jax.random.split(k_loop, (1, 2))[0, 0]   # interval 0: (step key, constraint key)
    return jax.random.normal(k_prior, shape, dtype), jax.random.normal(k_step, shape, dtype)


def hand_step(mix, path, x0: np.ndarray, key: jax.Array, i: int) -> dict:
    """Algorithm 2 of Ho et al. written out, plus the DDIM and Euler moves from the same x_t."""
    dtype = jnp.float64
    shape = (1,) + mix.event_shape
    eps, z = library_draws(key, shape, dtype)
    betas, abar = path.betas, path.alphas_cumprod                  # index j holds step j + 1
    beta_i, abar_i, abar_prev = betas[i - 1], abar[i - 1], abar[i - 2]
    t, s = i / path.num_timesteps, (i - 1) / path.num_timesteps
    x_t = np.sqrt(abar_i) * x0[None] + np.sqrt(1.0 - abar_i) * np.asarray(eps)
    tb = jnp.full((1,), t, dtype)
    model = jax.jit(lambda x, t: (mix.model_fn(path, "eps")(x, t), mix.x0_hat(path, x, t)))
    eps_hat, x0_hat = (np.asarray(a) for a in model(jnp.asarray(x_t), tb))
    c1, c2 = 1.0 / np.sqrt(1.0 - beta_i), beta_i / np.sqrt(1.0 - abar_i)
    sigma_i = np.sqrt((1.0 - abar_prev) / (1.0 - abar_i) * beta_i)
    mean = c1 * (x_t - c2 * eps_hat)
    out = {"i": i, "t": t, "s": s, "beta_i": beta_i, "alpha_bar_i": abar_i,
           "alpha_bar_prev": abar_prev, "c1": c1, "c2": c2, "sigma_i": sigma_i,
           "x0": x0, "eps": np.asarray(eps)[0], "x_t": x_t[0], "eps_hat": eps_hat[0],
           "x0_hat": x0_hat[0], "removed": (c2 * eps_hat)[0], "mean": mean[0],
           "z": np.asarray(z)[0], "added": (sigma_i * np.asarray(z))[0],
           "ddpm": (mean + sigma_i * np.asarray(z))[0]}
    a_s, s_s = np.sqrt(abar_prev), np.sqrt(1.0 - abar_prev)
    out["ddim"] = a_s * out["x0_hat"] + s_s * out["eps_hat"]
    velocity = float(path.d_alpha(t)) * out["x0_hat"] + float(path.d_sigma(t)) * out["eps_hat"]
    out["euler"] = out["x_t"] + (s - t) * velocity
    return out


def library_steps(mix, path, x0: np.ndarray, key: jax.Array, t: float, s: float) -> dict:
    """The same single step made by :func:`diffjax.sample`: ddpm, ddim and euler."""
    out = {}
    for sampler in ("ddpm", "ddim", "euler"):
        x, info = diffjax.sample(mix.model_fn(path, "eps"), path, (1,) + mix.event_shape, key,
                                 target="eps", sampler=sampler, num_steps=1, t_max=t, t_min=s,
                                 x_init=jnp.asarray(x0[None]), denoise_to_zero=False,
                                 return_trajectory=True,
                                 # the Euler step in t (in sigma/alpha it would be DDIM)
                                 **({"variable": "t"} if sampler == "euler" else {}))
        out[sampler] = np.asarray(x)[0]
        out[f"{sampler}_start"] = np.asarray(info.trajectory)[0, 0]
    out["ddim_as_flow_euler"] = _rectified_flow_euler(mix, path, x0, key, t, s)
    return out


def _rectified_flow_euler(mix, path, x0: np.ndarray, key: jax.Array, t: float, s: float):
    """One Euler step on the rectified-flow path between the same log-SNRs, mapped back.

    ``y = x / (alpha + sigma)`` lies on the path ``(1 - tau) x0 + tau eps`` with
    ``tau = sigma / (alpha + sigma)``; started with the same key and ``x_init`` the run
    begins at exactly ``y_t`` (Karras et al. 2022, sec. 3; Song et al. 2021, DDIM sec. 4.3).
    """
    flow = paths.get("rectified_flow")
    tau_t, tau_s = (float(flow.t_from_logsnr(path.logsnr(u))) for u in (t, s))
    y = diffjax.sample(mix.model_fn(flow, "velocity"), flow, (1,) + mix.event_shape, key,
                       target="velocity", sampler="euler", num_steps=1, t_max=tau_t, t_min=tau_s,
                       x_init=jnp.asarray(x0[None]), denoise_to_zero=False)
    scale = float(path.alpha(s) + path.sigma(s))
    return scale * np.asarray(y)[0]


# -- printing and drawing ---------------------------------------------------------------
def _fmt(a: np.ndarray) -> str:
    rows = np.asarray(a).reshape(4, 4)
    return "\n".join("    " + " ".join(f"{v:+.4f}" for v in row) for row in rows)


def report(h: dict, lib: dict) -> str:
    """The walk-through as text: each quantity of the step, then the checks."""
    lines = [
        f"One DDPM step on a 4x4 digit, i = {h['i']} -> {h['i'] - 1} (t = {h['t']:.3f} -> {h['s']:.3f})",
        f"  beta_i = {h['beta_i']:.6f}, alpha_bar_i = {h['alpha_bar_i']:.6f}, "
        f"alpha_bar_(i-1) = {h['alpha_bar_prev']:.6f}",
        f"  1/sqrt(alpha_i) = {h['c1']:.6f}, beta_i/sqrt(1-alpha_bar_i) = {h['c2']:.6f}, "
        f"sigma_i = sqrt(beta_tilde_i) = {h['sigma_i']:.6f}",
    ]
    for name, key in [("x_t", "x_t"), ("predicted noise eps_hat", "eps_hat"),
                      ("noise removed, beta_i/sqrt(1-alpha_bar_i) * eps_hat", "removed"),
                      ("mean = (x_t - removed) / sqrt(alpha_i)", "mean"),
                      ("fresh noise added, sigma_i * z", "added"),
                      ("x_(i-1) = mean + sigma_i z", "ddpm"),
                      ("same move as DDIM (eta = 0): alpha_s x0_hat + sigma_s eps_hat", "ddim"),
                      ("same move as an Euler step of dx/dt = alpha' x0_hat + sigma' eps_hat", "euler")]:
        lines += [f"  {name}:", _fmt(h[key])]
    for name in ("ddpm", "ddim", "euler"):
        lines.append(f"  |hand - diffjax.sample({name!r})|_max = {np.abs(h[name] - lib[name]).max():.2e}")
    lines.append("  |DDIM - Euler on the rectified-flow path|_max = "
                 f"{np.abs(lib['ddim'] - lib['ddim_as_flow_euler']).max():.2e}")
    return "\n".join(lines)


def _panel(ax, a: np.ndarray, title: str) -> None:
    a = np.asarray(a).reshape(4, 4)
    lim = max(float(np.abs(a).max()), 1e-12)
    ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    for (r, c), v in np.ndenumerate(a):
        ax.text(c, r, f"{v:+.3f}" if lim < 0.1 else f"{v:+.2f}", ha="center", va="center",
                fontsize=6.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(f"colour ±{lim:.2g}", fontsize=6.5)


def _draw(out_dir: str, h: dict) -> str:
    fig = common.new_figure(13.5, 5.4)
    grid = fig.add_gridspec(2, 6)
    rows = [
        [("x_t", "x_t"), ("ε̂ = model(x_t, t)", "eps_hat"), ("removed: β/√(1-ᾱ) ε̂", "removed"),
         ("mean: (x_t - removed)/√α", "mean"), ("fresh noise σ_i z", "added"),
         ("x_{t-1} (DDPM)", "ddpm")],
        [("x0 (clean 4x4 digit)", "x0"), ("true noise ε", "eps"), ("x̂0 = E[x0 | x_t]", "x0_hat"),
         ("x_{t-1} (DDIM, η=0)", "ddim"), ("x_{t-1} (Euler, PF-ODE)", "euler"),
         ("DDIM - DDPM mean", None)],
    ]
    for r, row in enumerate(rows):
        for c, (title, key) in enumerate(row):
            value = h[key] if key else h["ddim"] - h["mean"]
            _panel(fig.add_subplot(grid[r, c]), value, title)
    fig.suptitle(f"One DDPM step, t = {h['t']:.3f} → {h['s']:.3f}: β={h['beta_i']:.4g}, "
                 f"ᾱ={h['alpha_bar_i']:.4f}; the step removes a little predicted noise "
                 f"and adds a little fresh noise", fontsize=10)
    return common.save(fig, out_dir, "one_step")


def make(out_dir: str, *, fast: bool = False, seed: int = 0, verbose: bool = True) -> dict:
    """Draws ``one_step.png``, prints the walk-through; returns hand and library steps."""
    x, labels = common.digits("test")
    x4 = common.downsample(x)
    rng = np.random.default_rng(seed)
    x0 = x4[int(rng.choice(np.flatnonzero(labels == DIGIT)))].astype(np.float64)
    key = jax.random.PRNGKey(seed)
    with jax.enable_x64(True):
        mix = common.small_digits_mixture()
        path = paths.get("ddpm")
        h = hand_step(mix, path, x0, key, STEP)
        lib = library_steps(mix, path, x0, key, h["t"], h["s"])
    text = report(h, lib)
    if verbose:
        print(text)
    png = _draw(out_dir, h)
    return {"png": png, "hand": h, "library": lib, "report": text, "key_seed": seed}
