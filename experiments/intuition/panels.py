"""The page's process panels: forward noising, one reverse DDIM run, and step budgets.

Each ``*_panel(out_dir, *, fast, seed) -> dict`` writes its PNG frames under ``out_dir`` and
returns a panel record (:mod:`.frames`). The model is the exact 64-d digits mixture
(``GaussianMixture.digits()``, 2 full-covariance components per class, fitted to the train
split), so no training is needed and every error on the page is the sampler's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import analytic, paths
from diffjax.evaluate.frechet import frechet_distance
from experiments.intuition import common, frames

FORWARD_PATHS = ("vp_linear", "vp_cosine", "edm")
REVERSE_PATH = "vp_linear"
REVERSE_STEPS = 50
STEPS_PATH = "ddpm"
# (sampler, NFE, options): Ho et al.'s 1000 ancestral steps against the ODE samplers.
STEP_BUDGETS = (("ddpm", 1000, {}), ("ddim", 50, {}), ("ddim", 20, {}),
                ("dpm_solver++", 10, {"order": 2}))
SHOWN = 16
EXACT_MODEL = ("the exact digits mixture (diffjax.analytic.GaussianMixture.digits(): 2 "
               "full-covariance Gaussians per class fitted to the train split); no training")


def command(fast: bool, seed: int) -> str:
    return ("python -m experiments.intuition --html=DIR" + (" --fast" if fast else "")
            + ("" if seed == 0 else f" --seed={seed}"))


def schedule_values(name: str, t: np.ndarray) -> dict:
    """``alpha``, ``sigma`` and SNR in dB (float64) at ``t`` clipped to the path's range."""
    path = paths.get(name)
    t_eval = np.clip(np.asarray(t, np.float64), path.t_min, path.t_max)
    with jax.enable_x64(True):
        alpha = np.asarray(path.alpha(jnp.asarray(t_eval)))
        sigma = np.asarray(path.sigma(jnp.asarray(t_eval)))
    return {"t": t_eval, "alpha": alpha, "sigma": sigma,
            "snr_db": 20.0 * np.log10(alpha / sigma)}


def forward_times(fast: bool) -> np.ndarray:
    return np.linspace(0.0, 1.0, 6 if fast else 21)


def shapes_image(seed: int = 0) -> np.ndarray:
    """A two-object `shapes` test scene in [-1, 1] (generated directly: no data set build)."""
    from diffjax.data import shapes
    chunk = shapes.generate_chunk("test", 0, 32)
    two = np.flatnonzero(chunk["count"] == 2)
    index = int(np.random.default_rng(seed).choice(two))
    return chunk["image"][index].astype(np.float32) / 127.5 - 1.0


def forward_panel(out_dir: str, *, fast: bool = False, seed: int = 0, digit: int = 3) -> dict:
    """One test digit and one `shapes` scene mixed with noise on each path at every slider
    time (the same ``t``, alpha, sigma for both: columns 4-6 repeat the paths of 1-3)."""
    x, labels = common.digits("test")
    rng = np.random.default_rng(seed)
    x0 = x[int(rng.choice(np.flatnonzero(labels == digit)))]
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    scene = shapes_image(seed)
    eps_scene = rng.standard_normal(scene.shape).astype(np.float32)
    t = forward_times(fast)
    panel = frames.new_panel(
        "forward", "Forward noising: x_t = alpha(t) x0 + sigma(t) eps",
        "The same digit (and the same shapes scene) and the same noise on three paths. "
        "Frames show x_t / sqrt(alpha^2 + sigma^2) (EDM's x_t has variance up to 80^2) from "
        "-1.6 to 1.6 per channel; t is clipped to each path's [t_min, t_max]. The shapes "
        "scene's colours go first and its outlines last: at the same SNR a 32x32 scene keeps "
        "more of its layout than an 8x8 digit keeps of its stroke.",
        "no model: diffjax.paths.get(name).marginal on a test digit and a shapes test scene",
        command(fast, seed), "t", [f"{v:.2f}" for v in t],
        list(FORWARD_PATHS) + [f"{name}, shapes" for name in FORWARD_PATHS])
    sched = {name: schedule_values(name, t) for name in FORWARD_PATHS}
    for i in range(len(t)):
        files, values = [], []
        for image, noise, kind in ((x0, eps, "digit"), (scene, eps_scene, "shapes")):
            for name in FORWARD_PATHS:
                s = sched[name]
                x_t = np.asarray(paths.get(name).marginal(
                    image[None], noise[None], np.asarray([s["t"][i]], np.float32)))[0]
                scale = np.hypot(s["alpha"][i], s["sigma"][i])
                stem = f"forward/{name}_{i:02d}" + ("" if kind == "digit" else "_shapes")
                save = frames.save_grey if kind == "digit" else frames.save_rgb
                files.append(save(out_dir, stem, x_t / scale, -1.6, 1.6))
                values.append({"t": s["t"][i], "alpha": s["alpha"][i], "sigma": s["sigma"][i],
                               "SNR dB": s["snr_db"][i]})
        frames.add_position(panel, files, values)
    return panel


def class_posterior(mix: analytic.GaussianMixture, path, x: jax.Array, t: jax.Array) -> np.ndarray:
    """Exact ``p_t(c | x)`` of the mixture: ``x [B, ...]``, ``t [B]`` -> ``[B, num_classes]``.

    ``log_prob_t(..., label)`` sums the class's components with their weights in the whole
    mixture (not renormalised within the class), so it is ``log p_t(x, c)``: Bayes' rule is
    a softmax over classes of it.
    """
    log_joint = jnp.stack([mix.log_prob_t(path, x, t, jnp.full(x.shape[:1], c, jnp.int32))
                           for c in range(mix.num_classes)], axis=-1)
    return np.asarray(jax.nn.softmax(log_joint, -1))


def reverse_run(mix: analytic.GaussianMixture, seed: int) -> dict:
    """One DDIM run (``REVERSE_STEPS`` NFE, float64) with ``x_t`` and ``x0_hat`` at every grid
    time and the exact class posterior of ``x_t``."""
    path = paths.get(REVERSE_PATH)
    with jax.enable_x64(True):
        x, info = diffjax.sample(mix.model_fn(path, "x0"), path, (1,) + mix.event_shape,
                                 jax.random.PRNGKey(seed), target="x0", sampler="ddim",
                                 num_steps=REVERSE_STEPS, return_trajectory=True)
        traj, ts = info.trajectory[:, 0], info.ts
        x0_hat = mix.x0_hat(path, traj, ts)
        post = class_posterior(mix, path, traj, ts)
        out = {"x": np.asarray(x)[0], "trajectory": np.asarray(traj), "ts": np.asarray(ts),
               "x0_hat": np.asarray(x0_hat), "posterior": post, "nfe": int(info.nfe)}
    out["class"] = int(np.argmax(out["posterior"][-1]))
    return out


def reverse_panel(out_dir: str, *, fast: bool = False, seed: int = 0) -> dict:
    mix = common.digits_mixture()
    run = reverse_run(mix, seed)
    sched = schedule_values(REVERSE_PATH, run["ts"])
    c = run["class"]
    panel = frames.new_panel(
        "reverse", f"Reverse sampling: one DDIM run, {REVERSE_STEPS} steps, one noise",
        f"Left: x_t at each grid time of DDIM (eta = 0) on {REVERSE_PATH} (shown as x_t / "
        "sqrt(alpha^2 + sigma^2)). Right: the model's x0_hat(x_t, t) there, the image the step "
        f"moves toward. p(c={c} | x_t) is the exact mixture's posterior of the class the run "
        f"ends in. The last step returns x0_hat itself ({run['nfe']} model evaluations).",
        EXACT_MODEL, command(fast, seed), "step", range(len(run["ts"])), ["x_t", "x0_hat"])
    for i, t in enumerate(run["ts"]):
        scale = np.hypot(sched["alpha"][i], sched["sigma"][i])
        files = [frames.save_grey(out_dir, f"reverse/xt_{i:02d}", run["trajectory"][i] / scale,
                                  -1.6, 1.6),
                 frames.save_grey(out_dir, f"reverse/x0_{i:02d}", run["x0_hat"][i])]
        frames.add_position(panel, files, [
            {"t": t, "SNR dB": sched["snr_db"][i]},
            {f"p(c={c} | x_t)": run["posterior"][i, c]}])
    return panel


def pixel_fd(mix: analytic.GaussianMixture, x: np.ndarray) -> float:
    """Fréchet distance of ``x [N, ...]``'s Gaussian statistics to the mixture's exact ones."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return float(frechet_distance(x.mean(0), np.cov(x.T), mix.mean(), mix.covariance()))


def fd_floor(mix: analytic.GaussianMixture, n: int, seeds=(0, 1, 2)) -> float:
    """The same distance for ``n`` exact samples (mean over ``seeds``): finite-sample noise."""
    return float(np.mean([pixel_fd(mix, mix.sample(jax.random.PRNGKey(10_000 + s), n)[0])
                          for s in seeds]))


def steps_run(mix: analytic.GaussianMixture, sampler: str, num_steps: int, n: int, seed: int,
              **options) -> dict:
    """``n`` samples of ``sampler`` at ``num_steps`` NFE on ``STEPS_PATH`` from the key ``seed``
    (the same prior noise for every sampler) and their FD to the exact mixture."""
    path = paths.get(STEPS_PATH)
    x, info = diffjax.sample(_exact_model(mix, STEPS_PATH), path, (n,) + mix.event_shape,
                             jax.random.PRNGKey(seed), target="x0", sampler=sampler,
                             num_steps=num_steps, return_info=True, **options)
    x = np.asarray(x)
    return {"x": x, "nfe": int(info.nfe), "fd": pixel_fd(mix, x)}


_MODELS: dict = {}


def _exact_model(mix, path_name: str):
    """One ``model_fn`` object per (mixture, path): ``diffjax.sample`` caches compiled runs
    on it, so repeated calls do not recompile."""
    key = (id(mix), path_name)
    if key not in _MODELS:
        _MODELS[key] = mix.model_fn(paths.get(path_name), "x0")
    return _MODELS[key]


def steps_num_samples(fast: bool) -> int:
    return 128 if fast else 1000


def steps_panel(out_dir: str, *, fast: bool = False, seed: int = 0) -> dict:
    mix = common.digits_mixture()
    n = steps_num_samples(fast)
    floor = fd_floor(mix, n)
    labels = [f"{s} {k}" for s, k, _ in STEP_BUDGETS]
    panel = frames.new_panel(
        "steps", "Steps: 1000 ancestral steps against 50, 20 and 10 ODE steps",
        f"{n} samples per sampler from the same prior noise on the {STEPS_PATH} path (the "
        f"first {SHOWN} shown). FD: Fréchet distance of the samples' pixel mean and covariance "
        "to the exact mixture's; floor: the same for exact samples of the same size (mean of "
        "3 draws). FD / floor near 1 is as good as exact sampling.",
        EXACT_MODEL, command(fast, seed), "sampler", labels, ["samples"])
    for (sampler, k, options), label in zip(STEP_BUDGETS, labels):
        r = steps_run(mix, sampler, k, n, seed, **options)
        name = label.replace(" ", "_").replace("+", "p")
        files = [frames.save_grey(out_dir, f"steps/{name}", r["x"][:SHOWN], cols=4)]
        frames.add_position(panel, files, [{"NFE": r["nfe"], "FD": r["fd"], "floor": floor,
                                            "FD / floor": r["fd"] / floor}])
    return panel
