"""Autoguidance vs classifier-free guidance on an exact 2-D mixture (EDM2's toy idea).

Karras et al. 2024 ("Guiding a diffusion model with a bad version of itself", Sec. 3 and
Fig. 2, NVlabs/edm2 ``toy_example.py``) show on a 2-D class-conditional distribution of thin
branching "trees" that classifier-free guidance (CFG) pushes samples towards the outskirts of
the class, while guiding a model with a *weaker version of itself* (autoguidance)
concentrates them on the data. Here every model is an exact Gaussian mixture (no training,
so every effect is the guidance's):

* data: two classes of trees growing from the origin in opposite directions, 6 levels of
  branches, each branch 8 elongated Gaussians (1008 components; :func:`tree`);
* main model D_c: the exact class-conditional denoiser of that mixture;
* ``cfg``: D_u + w (D_c - D_u), D_u the exact unconditional (both classes) denoiser;
* ``cfg_weak``: the same with a *weakened* unconditional model (EDM2's own CFG demo guides
  with a smaller, less-trained unconditional network);
* ``auto`` (autoguidance): D_g + w (D_c - D_g), D_g the class-conditional denoiser of the
  same mixture with every component ``--broaden`` times wider (a "weaker" model: limited
  capacity or training blurs the thin branches);

all sampled with Heun's probability-flow ODE on the EDM path (``--steps`` evaluations, Karras
grid) from the same noise. Reported per scale ``w``: the fraction of samples *outside the
data support* (below the log-density that 99% of exact samples of their class exceed,
i.e. outside the 99% highest-density region), and the sliced Wasserstein-2 distance to exact
samples of the same classes (next to its floor: exact vs exact). Writes ``results.md``,
``results.csv`` and ``autoguidance_toy.png`` (samples at each scale) under ``--out``.

    python experiments/autoguidance_toy.py [--out runs/experiments/autoguidance_toy] [--quick]
"""
from __future__ import annotations

import argparse
import csv
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import paths
from diffjax.analytic import GaussianMixture
from diffjax.evaluate.distances import sliced_wasserstein

SCALES = (1.0, 2.0, 3.0, 4.0, 6.0, 10.0)
CLASSES = 2
INSIDE = 0.99   # the support: the highest-density region holding 99% of a class's mass


def tree(std_scale: float = 1.0, depth: int = 6, seed: int = 2) -> GaussianMixture:
    """Two classes of thin branching "trees" growing from the origin in opposite directions
    (EDM2's toy distribution in spirit): each branch is 8 elongated Gaussians along it,
    splitting in two at its end, thinner and shorter at each level. ``std_scale``
    broadens every component (the guide)."""
    rng = np.random.default_rng(seed)
    weights, means, covs, labels = [], [], [], []

    def grow(cls, level, pos, angle):
        if level >= depth:
            return
        direction = np.array([np.cos(angle), np.sin(angle)])
        length = 0.3 * 0.8**level * (1 + 0.2 * rng.normal())
        along, across = 0.06 * length, 0.2 * 0.8**level * 0.06
        normal = np.array([-direction[1], direction[0]])
        cov = along**2 * np.outer(direction, direction) + across**2 * np.outer(normal, normal)
        for s in np.linspace(0.07, 0.93, 8):
            weights.append(length * 0.5**level)
            means.append(pos + direction * length * s)
            covs.append(cov * std_scale**2)
            labels.append(cls)
        for sign in (1, -1):
            grow(cls, level + 1, pos + direction * length,
                 angle + sign * 0.7**level * (1 + 0.2 * rng.normal()))

    grow(0, 0, np.zeros(2), np.pi / 4)
    grow(1, 0, np.zeros(2), 5 * np.pi / 4)
    return GaussianMixture(np.asarray(weights), np.asarray(means), np.asarray(covs),
                           labels=np.asarray(labels))


def mixture(std_scale: float = 1.0) -> GaussianMixture:
    return tree(std_scale)


def log_density(x: np.ndarray, labels: np.ndarray, data: GaussianMixture) -> np.ndarray:
    """``log p_0(x | label)`` of each sample (t = 0 on the EDM path: the data density)."""
    path = paths.get("edm")
    t = jnp.full((len(x),), path.t_min)
    return np.asarray(data.log_prob_t(path, jnp.asarray(x), t, jnp.asarray(labels)))


def support_threshold(data: GaussianMixture, n: int) -> np.ndarray:
    """Per class, the log-density above which ``INSIDE`` of exact samples lie."""
    x, labels = exact(n, seed=3)
    logp = log_density(x, labels, data)
    return np.array([np.quantile(logp[labels == c], 1 - INSIDE) for c in range(CLASSES)])


def outside(x: np.ndarray, labels: np.ndarray, data: GaussianMixture,
            threshold: np.ndarray) -> np.ndarray:
    """Whether each sample lies outside its class's 99% highest-density region."""
    return log_density(x, labels, data) < threshold[labels]


KINDS = {"cfg": "CFG, exact unconditional model",
         "cfg_weak": "CFG, weakened unconditional model",
         "auto": "autoguidance, weakened conditional model"}


def draw(kind: str, w: float, n: int, steps: int, broaden: float, seed: int = 0):
    """``n`` samples (alternating classes) guided by ``kind`` (:data:`KINDS`) at scale ``w``."""
    data, path = mixture(), paths.get("edm")
    main = data.conditional_model_fn(path, "x0")
    labels = jnp.arange(n) % CLASSES
    options = dict(target="x0", sampler="heun", num_steps=steps, grid="karras",
                   cond={"label": labels}, guidance_scale=w)
    weak = mixture(broaden).conditional_model_fn(path, "x0")
    null = {"label": jnp.full((n,), CLASSES)}   # the null label: the whole mixture
    if kind == "cfg":
        options["uncond"] = null
    elif kind == "cfg_weak":   # EDM2's CFG demo: a smaller, less-trained unconditional model
        options.update(guide_fn=lambda x, t, cond: weak(x, t, null), guide_target="x0")
    else:
        options.update(guide_fn=weak, guide_target="x0")
    x = diffjax.sample(main, path, (n, 2), jax.random.PRNGKey(seed), **options)
    return np.asarray(x), np.asarray(labels)


def exact(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    data = mixture()
    parts = [np.asarray(data.sample(jax.random.PRNGKey(seed * 10 + c), n // CLASSES, c)[0])
             for c in range(CLASSES)]
    x = np.stack(parts, 1).reshape(n, 2)          # interleaved: row i has class i % 2
    return x, np.arange(n) % CLASSES


def distance(x, labels, reference, ref_labels) -> float:
    """Mean over classes of the sliced W2 to exact samples of that class."""
    return float(np.mean([sliced_wasserstein(x[labels == c], reference[ref_labels == c])
                          for c in range(CLASSES)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/experiments/autoguidance_toy")
    parser.add_argument("--quick", action="store_true", help="2000 samples, 32 steps")
    parser.add_argument("--broaden", type=float, default=2.0,
                        help="the guide's component std / the data's")
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    n, steps = (2000, 32) if args.quick else (10000, args.steps)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    data = mixture()
    reference, ref_labels = exact(n, seed=1)
    truth, truth_labels = exact(n, seed=2)
    floor = distance(truth, truth_labels, reference, ref_labels)
    threshold = support_threshold(data, n)
    exact_outside = float(outside(truth, truth_labels, data, threshold).mean())
    rows, shown = [], {}
    for w in SCALES:
        for kind in KINDS:
            x, labels = draw(kind, w, n, steps, args.broaden)
            rows.append({"guidance": kind, "w": w,
                         "outside": float(outside(x, labels, data, threshold).mean()),
                         "sliced_w2": distance(x, labels, reference, ref_labels)})
            shown[kind, w] = (x, labels)
            print(f"{kind:8s} w={w:<4g} outside={rows[-1]['outside']:.3f} "
                  f"sliced_w2={rows[-1]['sliced_w2']:.4f}", flush=True)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"exact samples: outside {exact_outside:.3f}, sliced W2 floor {floor:.4f} "
             f"({n} samples, {steps} Heun NFE, weakened = components x{args.broaden:g} wider)",
             "", "| w | " + " | ".join(f"outside: {k}" for k in KINDS) + " | "
             + " | ".join(f"sliced W2: {k}" for k in KINDS) + " |",
             "|---" * (1 + 2 * len(KINDS)) + "|"]
    for w in SCALES:
        got = {r["guidance"]: r for r in rows if r["w"] == w}
        lines.append(f"| {w:g} | " + " | ".join(f"{got[k]['outside']:.3f}" for k in KINDS)
                     + " | " + " | ".join(f"{got[k]['sliced_w2']:.4f}" for k in KINDS) + " |")
    lines.append(f"\n{time.time() - start:.0f} s")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(shown, data, os.path.join(args.out, "autoguidance_toy.png"))


def _plot(shown, data: GaussianMixture, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(KINDS), len(SCALES), figsize=(2.6 * len(SCALES), 2.7 * len(KINDS)))
    for row, kind in enumerate(KINDS):
        for col, w in enumerate(SCALES):
            ax = axes[row, col]
            x, labels = shown[kind, w]
            for c, color in enumerate(("tab:blue", "tab:orange")):
                ax.scatter(*x[labels == c][:1500].T, s=1, color=color, alpha=0.5)
            ax.scatter(*data.means.T, s=0.2, color="k", alpha=0.3)   # the branches
            ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), xticks=[], yticks=[], aspect="equal",
                   title=f"{kind} w={w:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
