"""The opening failure on `shapes`: climbing a detector's "red circle" does not draw one.

The digits version (:mod:`.opening_failure`) climbs a classifier; here the judge is
``shapes_eval``'s own detector. From clipped noise, gradient ascent (normalised steps,
pixels in [-1, 1]) on ``log sigmoid(objectness) + log p(shape) + log p(colour)`` of one grid
cell makes the detector report the prompt's object there — ``shapes_eval`` adherence of the
prompt goes to 1 — while the image stays noise: an adversarial pattern (Szegedy et al. 2014).
Beside it, samples of the same prompt from a trained text-to-image model (``--t2i_workdir``,
optional) with their adherence. ``fd_shapes`` of both (distance of the detector's features to
real test scenes) says which of the two looks like data.

    python -m experiments.intuition.opening_shapes --out=experiments/figures \
        [--t2i_workdir=runs/shapes_t2i] [--prompt="a red circle"]
"""
from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.data import shapes as shapes_lib

STEPS = 200
STEP_SIZE = 0.03
NOISE_STD = 0.5
CELL = (4, 4)  # the grid cell (row, column) whose detection is climbed


@functools.partial(jax.jit, static_argnames=("module", "shape", "colour"))
def _ascent_step(module, params, x, shape: int, colour: int):
    from diffjax.evaluate.shapes_detector import _HEAD

    def objective(xi):
        head, _ = module.apply({"params": params}, xi)
        cell = head[:, CELL[0], CELL[1]]
        obj, shape_l, colour_l = cell[:, 0], cell[:, 1:1 + _HEAD[1]], \
            cell[:, 1 + _HEAD[1]:1 + _HEAD[1] + _HEAD[2]]
        return jnp.sum(jax.nn.log_sigmoid(obj) + jax.nn.log_softmax(shape_l)[:, shape]
                       + jax.nn.log_softmax(colour_l)[:, colour])

    g = jax.grad(objective)(x)
    rms = jnp.sqrt(jnp.mean(g * g, axis=(1, 2, 3), keepdims=True))
    return jnp.clip(x + STEP_SIZE * g / jnp.maximum(rms, 1e-12), -1.0, 1.0)


def ascend(detector, prompt_shape: str, prompt_colour: str, n: int, steps: int,
           seed: int) -> np.ndarray:
    """``n`` images climbed from noise toward the detector's ``prompt_colour prompt_shape``."""
    shape = shapes_lib.SHAPES.index(prompt_shape)
    colour = shapes_lib.COLOURS.index(prompt_colour)
    x = jnp.clip(NOISE_STD * jax.random.normal(jax.random.PRNGKey(seed), (n, 32, 32, 3)),
                 -1.0, 1.0)
    for _ in range(steps):
        x = _ascent_step(detector.module, detector.params, x, shape, colour)
    return np.asarray(x)


def run(prompt: str = "a red circle", n: int = 64, steps: int = STEPS, seed: int = 0,
        t2i_workdir: str | None = None) -> dict:
    from diffjax.data import shapes_builder
    from diffjax.evaluate import shapes_eval

    words = prompt.split()
    colour, shape = words[-2], words[-1]
    detector = shapes_eval.evaluator()
    climbed = ascend(detector, shape, colour, n, steps, seed)
    test = shapes_builder.load_records("shapes", "test")["image"].astype(np.float32)
    test = test / 127.5 - 1.0
    train = shapes_builder.load_records("shapes", "train")["image"][:n].astype(np.float32)
    train = train / 127.5 - 1.0

    def judged(x: np.ndarray) -> dict:  # fd of n samples, beside n real scenes' (floor)
        fd = shapes_eval.fd_shapes(x, train, test, detector=detector)
        out["fd_floor"] = fd["fd_shapes_floor"]
        return {"adherence": float(np.mean(shapes_eval.adherence(x, [prompt] * len(x)))),
                "fd_shapes": fd["fd_shapes"]}

    out: dict = {"prompt": prompt, "climbed": climbed}
    out["climbed_scores"] = judged(climbed)
    if t2i_workdir:
        from experiments.intuition import prompt_panel
        x, step, _ = prompt_panel.prompt_samples(t2i_workdir, prompt, 3.0, n, seed)
        out.update(diffusion=x, diffusion_scores=judged(x), step=step)
    return out


def figure(result: dict, path: str) -> None:
    from matplotlib.figure import Figure

    rows = [("climbed", "gradient ascent on the detector")]
    if "diffusion" in result:
        rows.append(("diffusion", f"text-to-image model, w = 3 (step {result['step']})"))
    fig = Figure(figsize=(8, 1.6 * len(rows) + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False)
    for ax, (key, name) in zip(axes[:, 0], rows):
        x = result[key][:8]
        ax.imshow(np.clip((np.concatenate(list(x), axis=1) + 1) / 2, 0, 1),
                  interpolation="nearest")
        s = result[f"{key}_scores"]
        ax.set_title(f"{name}: adherence {s['adherence']:.2f}, fd_shapes {s['fd_shapes']:.0f}",
                     fontsize=9)
        ax.axis("off")
    fig.suptitle(f"\"{result['prompt']}\": what the detector reports "
                 f"(fd_shapes of as many real scenes: {result['fd_floor']:.1f})", fontsize=10)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--t2i_workdir", default="")
    parser.add_argument("--prompt", default="a red circle")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(args.prompt, seed=args.seed, t2i_workdir=args.t2i_workdir or None)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "opening_failure_shapes.png")
    figure(result, path)
    for key in ("climbed", "diffusion"):
        if f"{key}_scores" in result:
            print(f"{key}: {result[f'{key}_scores']}")
    print(f"fd_shapes floor (as many real train scenes vs test): {result['fd_floor']:.2f}\n"
          f"wrote {path}")


if __name__ == "__main__":
    main()
