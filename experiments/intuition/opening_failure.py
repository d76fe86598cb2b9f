"""The opening failure: optimising an image against a classifier does not make a digit.

Start from noise and climb the in-project digits classifier's ``log p(c | x)`` by gradient
ascent (normalised steps, pixels kept in [-1, 1]): the classifier becomes certain while the
image stays noise with a faint pattern on it, an adversarial example (Szegedy et al. 2014).
Beside it the same class from a diffusion model, here the exact class-conditional digits
mixture (``GaussianMixture.digits()``, sampled by DDIM with ``label``; for this mixture the
conditional model is what a perfectly trained class-conditional network would be). Both are
scored by the classifier's confidence, by ``fd_classifier`` (Fréchet distance of the
classifier's penultimate features to those of the test split, the formula of
``diffjax.evaluate.metrics``' ``fd_classifier``) and by the exact mixture's ``log p_0(x)``,
the log-density of real digits.

Why: ``grad_x log p(c | x)`` only points to where the classifier's decision changes fastest,
in any direction, most of which no digit ever takes; the denoiser's score ``grad_x log
p_t(x | c)`` points toward where the data are.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import paths
from diffjax.evaluate import frechet
from diffjax.evaluate.classifier import Classifier, load_or_train
from experiments.intuition import common, frames, panels

CLASS = 3
PATH = "vp_linear"
NUM_STEPS = 50
STEP_SIZE = 0.05     # RMS change per pixel of one ascent step
NOISE_STD = 0.5      # the starting noise, clipped to [-1, 1]
SHOWN = 8


def confidence(classifier: Classifier, x: np.ndarray, label: int) -> np.ndarray:
    """The classifier's ``p(label | x)``: ``[N, H, W, C] -> [N]``."""
    logits, _ = classifier.module.apply({"params": classifier.params}, jnp.asarray(x))
    return np.asarray(jax.nn.softmax(logits, -1))[:, label]


@functools.partial(jax.jit, static_argnames=("module", "label"))
def _ascent_step(module, params, x, label: int):
    def log_p(xi):
        logits, _ = module.apply({"params": params}, xi)
        return jax.nn.log_softmax(logits, -1)[:, label].sum()

    g = jax.grad(log_p)(x)
    rms = jnp.sqrt(jnp.mean(g * g, axis=(1, 2, 3), keepdims=True))
    return jnp.clip(x + STEP_SIZE * g / jnp.maximum(rms, 1e-12), -1.0, 1.0)


def ascend(classifier: Classifier, label: int, n: int, steps: int, seed: int,
           keep: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Gradient ascent on ``log p(label | x)`` from clipped noise; ``x [n, 8, 8, 1]`` at each
    step in ``keep``."""
    shape = (n,) + tuple(classifier.image_shape)
    x = jnp.clip(NOISE_STD * jax.random.normal(jax.random.PRNGKey(seed), shape), -1.0, 1.0)
    out = {0: np.asarray(x)} if 0 in keep else {}
    for i in range(1, steps + 1):
        x = _ascent_step(classifier.module, classifier.params, x, label)
        if i in keep:
            out[i] = np.asarray(x)
    return out


def diffusion_samples(label: int, n: int, seed: int) -> np.ndarray:
    """``n`` DDIM samples of ``label`` from the exact class-conditional digits mixture."""
    mix = common.digits_mixture()
    return np.asarray(diffjax.sample(mix.conditional_model_fn(paths.get(PATH), "x0"),
                                     paths.get(PATH), (n,) + mix.event_shape,
                                     jax.random.PRNGKey(seed), target="x0", sampler="ddim",
                                     num_steps=NUM_STEPS,
                                     label=jnp.full((n,), label, jnp.int32),
                                     num_classes=mix.num_classes))


def fd_classifier(classifier: Classifier, x: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between the classifier features of ``x`` and of ``reference``."""
    return float(frechet.frechet_distance(*frechet.gaussian_stats(classifier.features(x)),
                                          *frechet.gaussian_stats(classifier.features(reference))))


def scores(classifier: Classifier, x: np.ndarray, label: int, test_x: np.ndarray) -> dict:
    mix = common.digits_mixture()
    return {"confidence": float(confidence(classifier, x, label).mean()),
            "fd_classifier": fd_classifier(classifier, x, test_x),
            "log p0(x)": float(np.mean(np.asarray(mix.log_prob(jnp.asarray(x)))))}


def keep_steps(fast: bool) -> tuple[int, ...]:
    return (0, 1, 2, 5, 10, 20) if fast else (0, 1, 2, 5, 10, 20, 50, 100)


def run(classifier: Classifier, *, fast: bool = False, seed: int = 0) -> dict:
    """Both sides at every kept ascent step; ``n`` images each."""
    n = 64 if fast else 256
    keep = keep_steps(fast)
    # One class against the whole test split would measure the class mix, not the images:
    # the reference is the test digits of the class, the floor its train digits.
    x, y = common.digits("test")
    reference = x[y == CLASS]
    x, y = common.digits("train")
    floor_x = x[y == CLASS]
    ascent = ascend(classifier, CLASS, n, keep[-1], seed, keep)
    diffusion = diffusion_samples(CLASS, n, seed)
    return {"class": CLASS, "n": n, "steps": keep, "ascent": ascent, "diffusion": diffusion,
            "ascent_scores": {k: scores(classifier, a, CLASS, reference)
                              for k, a in ascent.items()},
            "diffusion_scores": scores(classifier, diffusion, CLASS, reference),
            "fd_floor": fd_classifier(classifier, floor_x, reference),
            "num_reference": len(reference), "num_floor": len(floor_x)}


def panel(out_dir: str, result: dict, *, fast: bool = False, seed: int = 0) -> dict:
    """The page panel: a slider over the ascent steps, the diffusion samples beside it."""
    c, n = result["class"], result["n"]
    p = frames.new_panel(
        "opening", "The opening failure: climbing a classifier's log p(c | x) from noise",
        f"Left: {n} noise images (first {SHOWN} shown) after k steps of gradient ascent on the "
        f"in-project digits classifier's log p(c={c} | x). Right: {n} samples of class {c} "
        f"from a diffusion model, the exact class-conditional digits mixture sampled by DDIM "
        f"({NUM_STEPS} steps). fd_classifier: Fréchet distance of classifier features to the "
        f"{result['num_reference']} test-split digits of class {c} (floor: its "
        f"{result['num_floor']} train digits, {frames.fmt(result['fd_floor'])}). "
        "log p0(x): the exact digits mixture's log-density.",
        "in-project digits CNN (diffjax.evaluate.classifier, cached by load_or_train) and "
        + panels.EXACT_MODEL, panels.command(fast, seed), "ascent step",
        result["steps"], ["gradient ascent", "diffusion model"])
    right = frames.save_grey(out_dir, "opening/diffusion", result["diffusion"][:SHOWN], cols=4)
    for k in result["steps"]:
        left = frames.save_grey(out_dir, f"opening/ascent_{k:03d}", result["ascent"][k][:SHOWN],
                                cols=4)
        frames.add_position(p, [left, right], [result["ascent_scores"][k],
                                               result["diffusion_scores"]])
    return p


def make_figure(out_dir: str, result: dict) -> str:
    """``opening_failure.png``: noise, optimised images, diffusion samples, confidence curve."""
    fig = common.new_figure(12, 4.2)
    grid = fig.add_gridspec(3, SHOWN + 4)
    steps = result["steps"]
    rows = [("noise (step 0)", result["ascent"][0]),
            (f"ascent step {steps[-1]}", result["ascent"][steps[-1]]),
            ("diffusion", result["diffusion"])]
    for r, (name, x) in enumerate(rows):
        for j in range(SHOWN):
            ax = fig.add_subplot(grid[r, j])
            common.show_image(ax, x[j])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    a = result["ascent_scores"]
    d = result["diffusion_scores"]
    ax = fig.add_subplot(grid[:, SHOWN:])
    x_axis = [max(k, 0.5) for k in steps]
    ax.plot(x_axis, [a[k]["confidence"] for k in steps], "o-", label="ascent: p(c | x)")
    ax.axhline(d["confidence"], color="C1", ls="--", label="diffusion: p(c | x)")
    ax2 = ax.twinx()
    ax2.plot(x_axis, [a[k]["fd_classifier"] for k in steps], "s-", color="C2",
             label="ascent: fd_classifier")
    ax2.axhline(d["fd_classifier"], color="C3", ls=":", label="diffusion: fd_classifier")
    ax2.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("ascent step (0 drawn at 0.5)")
    ax.set_ylabel("classifier confidence")
    ax2.set_ylabel("fd_classifier")
    ax.legend(fontsize=7, loc="center left")
    ax2.legend(fontsize=7, loc="lower right")
    last = a[steps[-1]]
    fig.suptitle(f"Class {result['class']}: gradient ascent reaches p(c|x) = "
                 f"{last['confidence']:.3f} with fd_classifier {last['fd_classifier']:.3g}; "
                 f"diffusion: p(c|x) = {d['confidence']:.3f}, fd_classifier "
                 f"{d['fd_classifier']:.3g} (floor {result['fd_floor']:.3g})", fontsize=10)
    return common.save(fig, out_dir, "opening_failure")


def load_classifier(cache_dir: str | None = None) -> Classifier:
    """The cached in-project digits classifier (trained on first use, ~1 min on 2 cores)."""
    return load_or_train("digits", cache_dir or os.path.expanduser("~/.cache/diffjax/eval"))


def make(out_dir: str, *, fast: bool = False, seed: int = 0,
         classifier: Classifier | None = None, cache_dir: str | None = None) -> dict:
    """The gallery entry: draws ``opening_failure.png``; returns the numbers it shows."""
    result = run(classifier or load_classifier(cache_dir), fast=fast, seed=seed)
    return {"png": make_figure(out_dir, result), **result}
