"""Figure 6: classifier-free guidance bends the field toward a class.

A class-conditional 2-D mixture: nine Gaussians on a circle, three neighbouring ones per
class, so each class is an arc that overlaps its neighbours. With the exact conditional
model ``eps(x, t, c)`` and the unconditional one ``eps(x, t, null)``, guidance at scale
``w`` (Ho & Salimans 2022, with ``w = 1`` the conditional model) is

    eps_w = eps_u + w (eps_c - eps_u)   <=>   score_w = grad log [ p_t(x) p_t(c | x)^w ],

a field pulled toward where the class is most certain. The fields come from
:func:`guided_model` (the library's guidance mix), the samples from :func:`diffjax.sample` with
``label``, ``guidance_scale`` and ``num_classes``; diversity is the spread of each class's
samples, ``sqrt(trace Cov)``, averaged over classes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import analytic, paths
from diffjax.samplers import guidance as guidance_lib
from experiments.intuition import common

PATH = "vp_cosine"
SAMPLER = "ddim"
SCALES = (0.0, 1.0, 3.0, 7.5)
FIELD_T = 0.3
FIELD_CLASS = 0
NUM_CLASSES = 3
LIMIT = 2.4
# Strong guidance pushes samples past the data's outer edge: their panels look further out.
SAMPLE_LIMIT = 3.0


def arcs_mixture(per_class: int = 3, radius: float = 1.5, std: float = 0.25) -> analytic.GaussianMixture:
    """``NUM_CLASSES * per_class`` equal Gaussians on a circle; class ``c`` owns an arc."""
    k = NUM_CLASSES * per_class
    angles = 2 * np.pi * (np.arange(k) + 0.5) / k
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    covs = np.broadcast_to(std**2 * np.eye(2), (k, 2, 2))
    return analytic.GaussianMixture(np.ones(k), means, covs, labels=np.arange(k) // per_class)


def guided_model(cond_fn, labels, w: float, num_classes: int):
    """Classifier-free guidance in the model's own target space, ``out_u + w (out_c - out_u)``
    (the library's :func:`diffjax.samplers.guidance.mix`), as ``g(x, t)`` for a conditional
    ``cond_fn(x, t, cond)``; ``num_classes`` is the null label."""
    null = jnp.full_like(labels, num_classes)

    def fn(x, t):
        out_c, out_u = cond_fn(x, t, {"label": labels}), cond_fn(x, t, {"label": null})
        return guidance_lib.mix((out_c,), (out_u,), w)[0]

    return fn


def guided_fields(mix, path, points: np.ndarray, t: float, label: int) -> dict:
    """``eps`` of the guided model at every scale, and of the conditional/unconditional ones."""
    cond = mix.conditional_model_fn(path, "eps")

    @jax.jit
    def compute(x, tb, labels):
        null = jnp.full_like(labels, NUM_CLASSES)
        return {"guided": {w: guided_model(cond, labels, w, NUM_CLASSES)(x, tb)
                           for w in SCALES},
                "conditional": cond(x, tb, {"label": labels}),
                "unconditional": cond(x, tb, {"label": null}),
                "log_p": mix.log_prob_t(path, x, tb),
                "log_p_class": mix.log_prob_t(path, x, tb, labels)}

    # float64: the test compares these fields with autodiff of the log-density at 1e-6.
    with jax.enable_x64(True):
        x = jnp.asarray(points, jnp.float64)
        out = compute(x, jnp.full((x.shape[0],), t, x.dtype),
                      jnp.full((x.shape[0],), label, jnp.int32))
        out = jax.tree_util.tree_map(np.asarray, out)
        out["sigma"] = float(path.sigma(jnp.asarray(t, jnp.float64)))
    return out


def tilted_log_density(f: dict, w: float) -> np.ndarray:
    """``(1 - w) log p_t(x) + w log p_t(x | c)``, unnormalised: the guided field's potential."""
    return (1.0 - w) * f["log_p"] + w * f["log_p_class"]


def guided_samples(mix, path, per_class: int, num_steps: int, key: jax.Array) -> dict:
    """Samples of every class at every scale (same key, so the same starting noise)."""
    labels = jnp.repeat(jnp.arange(NUM_CLASSES), per_class)
    model = mix.conditional_model_fn(path, "eps")
    out = {}
    for w in SCALES:
        x = diffjax.sample(model, path, (len(labels), 2), key, target="eps", sampler=SAMPLER,
                           num_steps=num_steps, label=labels, guidance_scale=w,
                           num_classes=NUM_CLASSES)
        x = np.asarray(x)
        out[w] = {"x": x, "labels": np.asarray(labels), **diversity(x, np.asarray(labels))}
    return out


def diversity(x: np.ndarray, labels: np.ndarray) -> dict:
    """Per class ``sqrt(trace Cov)`` of the samples, and its mean over classes."""
    spread = np.array([np.sqrt(np.trace(np.cov(x[labels == c].T))) for c in range(NUM_CLASSES)])
    return {"spread": spread, "diversity": float(spread.mean())}


# -- drawing -------------------------------------------------------------------------------
def _axes(ax, limit: float = LIMIT) -> None:
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_field(ax, points, f: dict, w: float, dense: dict, n_dense: int):
    common.density(ax, tilted_log_density(dense, w), n_dense, LIMIT)
    score = -f["guided"][w] / f["sigma"]
    ax.quiver(points[:, 0], points[:, 1], score[:, 0], score[:, 1], color="C0", width=0.004)
    name = {0.0: " = unconditional", 1.0: " = conditional"}.get(w, "")
    ax.set_title(f"w = {w:g}{name}", fontsize=9)
    _axes(ax)


def _draw_samples(ax, run: dict, means: np.ndarray, labels_of_means: np.ndarray, w: float):
    for c in range(NUM_CLASSES):
        pts = run["x"][run["labels"] == c]
        ax.plot(pts[:, 0], pts[:, 1], ".", ms=2, color=f"C{c + 1}", alpha=0.6)
    for m, c in zip(means, labels_of_means):
        ax.plot(*m, "+", color=f"C{c + 1}", ms=9, mew=2)
    ax.set_title(f"samples at w = {w:g}: diversity {run['diversity']:.3f}", fontsize=9)
    _axes(ax, SAMPLE_LIMIT)


def make(out_dir: str, *, fast: bool = False, seed: int = 0) -> dict:
    """Draws ``guidance.png``; returns guided/conditional/unconditional fields and diversities."""
    mix, path = arcs_mixture(), paths.get(PATH)
    n, n_dense = (11, 48) if fast else (17, 120)
    g = np.linspace(-LIMIT, LIMIT, n)
    points = np.stack([a.ravel() for a in np.meshgrid(g, g)], -1)
    gd = np.linspace(-LIMIT, LIMIT, n_dense)
    dense = np.stack([a.ravel() for a in np.meshgrid(gd, gd)], -1)
    fields = guided_fields(mix, path, points, FIELD_T, FIELD_CLASS)
    dense_fields = guided_fields(mix, path, dense, FIELD_T, FIELD_CLASS)
    samples = guided_samples(mix, path, 200 if fast else 1000, 25 if fast else 100,
                             jax.random.PRNGKey(seed))
    fig = common.new_figure(14, 7.6)
    grid = fig.add_gridspec(2, len(SCALES))
    for j, w in enumerate(SCALES):
        _draw_field(fig.add_subplot(grid[0, j]), points, fields, w, dense_fields, n_dense)
        _draw_samples(fig.add_subplot(grid[1, j]), samples[w], mix.means, mix.labels, w)
    fig.suptitle(f"Guidance bends the field. Top: guided score for class {FIELD_CLASS} (orange) at "
                 f"t = {FIELD_T} on {PATH}, over the density it is the gradient of, "
                 "p_t(x)·p_t(c|x)^w.\nBottom: samples of every class (+: the classes' components)",
                 fontsize=10)
    png = common.save(fig, out_dir, "guidance")
    return {"png": png, "path": PATH, "t": FIELD_T, "label": FIELD_CLASS, "points": points,
            "num_classes": NUM_CLASSES, "fields": fields, "samples": samples,
            "diversity": {w: samples[w]["diversity"] for w in SCALES}}
