"""The page's guidance panel: the 2-D field and one digit class as the guidance scale moves.

Left: the arcs mixture of the gallery's guidance figure (:mod:`.guidance`), its unguided
(grey) and guided (blue) score for class 0 at ``t = 0.3`` over the density the guided field
is the gradient of, and DDIM samples of class 0 at that scale. Right: samples of one class
of the exact class-conditional digits mixture at the same scale, from the same noise, judged
by the in-project digits classifier. Guidance is :func:`experiments.intuition.guidance.guided_model`
(``f_u + w (f_c - f_u)``; ``w = 0`` unconditional, ``w = 1`` conditional).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import paths
from diffjax.evaluate.classifier import Classifier
from experiments.intuition import common, frames, guidance, panels

SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 7.5, 12.0)
DIGIT_CLASS = 3
DIGITS_PATH = "vp_linear"
NUM_STEPS = 50


def field_values(points: np.ndarray, w: float) -> dict:
    """Guided and unguided ``score`` of the arcs mixture for class ``guidance.FIELD_CLASS``
    at ``guidance.FIELD_T`` (float64): ``points [P, 2]`` -> ``[P, 2]`` each, and the mean
    angle between them in degrees."""
    mix, path = guidance.arcs_mixture(), paths.get(guidance.PATH)
    cond = mix.conditional_model_fn(path, "score")
    with jax.enable_x64(True):
        x = jnp.asarray(points, jnp.float64)
        t = jnp.full((x.shape[0],), guidance.FIELD_T, x.dtype)
        labels = jnp.full((x.shape[0],), guidance.FIELD_CLASS, jnp.int32)
        guided = np.asarray(guidance.guided_model(cond, labels, w, guidance.NUM_CLASSES)(x, t))
        unguided = np.asarray(cond(x, t, None))
    cos = np.sum(guided * unguided, -1) / (np.linalg.norm(guided, axis=-1)
                                           * np.linalg.norm(unguided, axis=-1))
    return {"guided": guided, "unguided": unguided,
            "angle": float(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean())}


def field_points(fast: bool) -> np.ndarray:
    """The arrows' grid ``[P, 2]``. An even count per side leaves out the origin, where the
    unguided score of the symmetric mixture vanishes and its direction is rounding noise."""
    g = np.linspace(-guidance.LIMIT, guidance.LIMIT, 10 if fast else 14)
    return np.stack([a.ravel() for a in np.meshgrid(g, g)], -1)


def arc_samples(w: float, n: int, seed: int) -> np.ndarray:
    """``n`` DDIM samples of class ``FIELD_CLASS`` of the arcs mixture at scale ``w``."""
    mix, path = guidance.arcs_mixture(), paths.get(guidance.PATH)
    labels = jnp.full((n,), guidance.FIELD_CLASS, jnp.int32)
    return np.asarray(diffjax.sample(_arc_model(), path, (n, 2), jax.random.PRNGKey(seed),
                                     target="eps", sampler="ddim", num_steps=NUM_STEPS,
                                     label=labels, guidance_scale=w,
                                     num_classes=mix.num_classes))


def digit_samples(w: float, n: int, seed: int) -> np.ndarray:
    """``n`` DDIM samples of ``DIGIT_CLASS`` of the exact digits mixture at scale ``w``."""
    mix = common.digits_mixture()
    labels = jnp.full((n,), DIGIT_CLASS, jnp.int32)
    return np.asarray(diffjax.sample(_digits_model(), paths.get(DIGITS_PATH),
                                     (n,) + mix.event_shape, jax.random.PRNGKey(seed),
                                     target="x0", sampler="ddim", num_steps=NUM_STEPS,
                                     label=labels, guidance_scale=w,
                                     num_classes=mix.num_classes))


_CACHE: dict = {}


def _arc_model():
    if "arc" not in _CACHE:
        _CACHE["arc"] = guidance.arcs_mixture().conditional_model_fn(
            paths.get(guidance.PATH), "eps")
    return _CACHE["arc"]


def _digits_model():
    if "digits" not in _CACHE:
        _CACHE["digits"] = common.digits_mixture().conditional_model_fn(
            paths.get(DIGITS_PATH), "x0")
    return _CACHE["digits"]


def digit_values(classifier: Classifier, x: np.ndarray) -> dict:
    """What the page prints under the digits: the classifier's mean ``p(c | x)`` of the class,
    the RMS per-pixel spread across samples and the share of pixels outside [-1, 1]."""
    logits, _ = classifier.module.apply({"params": classifier.params}, jnp.asarray(x))
    p = np.asarray(jax.nn.softmax(logits, -1))[:, DIGIT_CLASS]
    return {f"classifier p(c={DIGIT_CLASS} | x)": float(p.mean()),
            "pixel spread": float(np.sqrt(np.var(x, axis=0).mean())),
            "% pixels outside [-1, 1]": 100.0 * float(np.mean(np.abs(x) > 1.0))}


def _draw_field(out_dir: str, i: int, w: float, points, f: dict, dense: dict, n_dense: int,
                samples: np.ndarray) -> str:
    fig = common.new_figure(6.4, 3.2)
    ax_field, ax_samples = fig.subplots(1, 2)
    # ``dense`` covers [-SAMPLE_LIMIT, SAMPLE_LIMIT]^2; the arrows sit inside [-LIMIT, LIMIT].
    common.density(ax_field, guidance.tilted_log_density(dense, w), n_dense,
                   guidance.SAMPLE_LIMIT)
    for field, color in ((f["unguided"], "0.55"), (f["guided"], "C0")):
        norm = np.linalg.norm(field, axis=-1, keepdims=True)
        u = field / np.maximum(norm, 1e-12)
        ax_field.quiver(points[:, 0], points[:, 1], u[:, 0], u[:, 1], color=color,
                        width=0.005, scale=28)
    ax_field.set_title(f"score, w = {w:g} (blue) vs w = 0 (grey)", fontsize=8)
    mix = guidance.arcs_mixture()
    common.density(ax_samples, np.asarray(dense["log_p_class"]), n_dense, guidance.SAMPLE_LIMIT)
    ax_samples.plot(samples[:, 0], samples[:, 1], ".", ms=2, color="C1", alpha=0.6)
    for m, c in zip(mix.means, mix.labels):
        ax_samples.plot(*m, "+", color=f"C{c + 1}", ms=7, mew=1.5)
    ax_samples.set_xlim(-guidance.SAMPLE_LIMIT, guidance.SAMPLE_LIMIT)
    ax_samples.set_ylim(-guidance.SAMPLE_LIMIT, guidance.SAMPLE_LIMIT)
    ax_samples.set_title(f"class {guidance.FIELD_CLASS} samples, w = {w:g}", fontsize=8)
    common.save(fig, os.path.join(out_dir, "guidance"), f"field_{i:02d}")
    return f"guidance/field_{i:02d}.png"


def guidance_panel(out_dir: str, *, classifier: Classifier, fast: bool = False,
                   seed: int = 0) -> dict:
    n_arc, n_digits = (200, 16) if fast else (1000, 16)
    points = field_points(fast)
    n_dense = 48 if fast else 96
    gd = np.linspace(-guidance.SAMPLE_LIMIT, guidance.SAMPLE_LIMIT, n_dense)
    dense = guidance.guided_fields(guidance.arcs_mixture(), paths.get(guidance.PATH),
                                   np.stack([a.ravel() for a in np.meshgrid(gd, gd)], -1),
                                   guidance.FIELD_T, guidance.FIELD_CLASS)
    panel = frames.new_panel(
        "guidance", "Guidance: the guided field and one class as the scale w moves",
        f"Left: 2-D mixture of nine Gaussians on a circle, three per class (the gallery's "
        f"guidance figure); arrows are unit score directions at t = {guidance.FIELD_T} on "
        f"{guidance.PATH} over p_t(x) p_t(c|x)^w, and {n_arc} DDIM samples ({NUM_STEPS} steps) "
        f"of class {guidance.FIELD_CLASS}. Right: {n_digits} samples of digit {DIGIT_CLASS} "
        f"from the same noise at each w (DDIM, {NUM_STEPS} steps, {DIGITS_PATH}), judged by "
        "the in-project digits classifier.",
        "exact mixtures (2-D arcs; digits: " + panels.EXACT_MODEL + ")",
        panels.command(fast, seed), "w", [f"{w:g}" for w in SCALES],
        ["2-D field and samples", f"digit {DIGIT_CLASS}"])
    for i, w in enumerate(SCALES):
        f = field_values(points, w)
        arcs = arc_samples(w, n_arc, seed)
        digits = digit_samples(w, n_digits, seed)
        files = [_draw_field(out_dir, i, w, points, f, dense, n_dense, arcs),
                 frames.save_grey(out_dir, f"guidance/digits_{i:02d}", digits, cols=4)]
        spread = float(np.sqrt(np.trace(np.cov(arcs.T))))  # the gallery's diversity
        frames.add_position(panel, files, [
            {"mean angle guided vs unguided (deg)": f["angle"], "sample spread": spread},
            digit_values(classifier, digits)])
    return panel
