"""How a prompt bends the field: one prompt, a trained text-to-image model, a few noise levels.

For a real test image whose caption is the prompt, ``x_t = alpha(t) x0 + sigma(t) eps`` at
each noise level; the model's clean-image estimate ``x0_hat`` without text (the empty prompt),
with the prompt, and guided at scale ``w`` (``x0_null + w (x0_text - x0_null)``, classifier-free
guidance in x0 space, Ho & Salimans 2022), and the difference ``x0_text - x0_null``: what the
prompt changes, as a signed map per pixel (summed over colour channels). At high noise the
difference is the whole layout; at low noise the image already decides and the prompt adds
little.

    python experiments/t2i_field.py --workdir=runs/shapes_t2i \
        [--prompt="a red circle above a blue square"] [--guidance=3]
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffjax import checkpoint, config_loading, targets, train  # noqa: E402
from diffjax.text import conditioning  # noqa: E402

LEVELS = (0.9, 0.7, 0.5, 0.3)  # times of the path (rectified flow: sigma = t)
FIGURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures",
                      "t2i_prompt_field.png")


def fields(setup, params, x0: np.ndarray, prompt: str, w: float, seed: int = 0) -> dict:
    """``x_t`` and the three ``x0_hat`` per level, for one image ``x0 [H, W, C]``."""
    path, target = setup.denoiser.path, setup.denoiser.target
    text = setup.text.encode([prompt])
    null = setup.text.example(1)
    eps = jax.random.normal(jax.random.PRNGKey(seed), (1, *x0.shape))
    out = {"x_t": [], "null": [], "text": [], "guided": []}
    for level in LEVELS:
        t = jnp.full((1,), level)
        x_t = path.marginal(jnp.asarray(x0)[None], eps, t)
        est = {}
        for name, cond in (("null", null), ("text", text)):
            f = setup.denoiser.fn(params, x_t, t, {k: jnp.asarray(v) for k, v in cond.items()})
            est[name] = targets.to_x0_eps(target, path, f, x_t, t)[0]
        est["guided"] = est["null"] + w * (est["text"] - est["null"])
        out["x_t"].append(np.asarray(x_t[0]))
        for name in ("null", "text", "guided"):
            out[name].append(np.asarray(est[name][0]))
    return out


def draw(out: dict, prompt: str, w: float, path: str) -> None:
    from matplotlib.figure import Figure

    rows = ("x_t", "null", "text", "guided", "difference")
    titles = {"x_t": "x_t", "null": "x0_hat, empty prompt", "text": "x0_hat, prompt",
              "guided": f"x0_hat, guided w={w:g}", "difference": "prompt - empty (sum RGB)"}
    fig = Figure(figsize=(2.0 * len(LEVELS), 2.0 * len(rows) + 0.5), dpi=100,
                 layout="constrained")
    axes = fig.subplots(len(rows), len(LEVELS), squeeze=False)
    for j, level in enumerate(LEVELS):
        for i, row in enumerate(rows):
            ax = axes[i, j]
            if row == "difference":
                diff = (out["text"][j] - out["null"][j]).sum(-1)
                lim = max(np.abs(diff).max(), 1e-6)
                ax.imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            else:
                ax.imshow(np.clip((out[row][j] + 1) / 2, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(titles[row], fontsize=8)
            if i == 0:
                ax.set_title(f"t = {level:g}", fontsize=9)
    fig.suptitle(f"how a prompt bends the field: \"{prompt}\"", fontsize=10)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--config", default=None,
                        help="default: the run's own config (workdir/config.json)")
    parser.add_argument("--prompt", default=None,
                        help="default: the first two-object test caption with a relation")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--out", default=FIGURE)
    args = parser.parse_args()
    config = (config_loading.load(args.config, []) if args.config
              else checkpoint.load_config(args.workdir))
    if config is None:
        raise SystemExit(f"{args.workdir} holds no config.json; pass --config")
    setup, state, step = train.restore_for_inference(config, args.workdir)
    captions = conditioning.captions(config.data.dataset, "test", config.data.get("data_dir"))
    from diffjax.data import shapes_builder
    images = shapes_builder.load_records(config.data.dataset, "test",
                                         config.data.get("data_dir"))["image"]
    if args.prompt is None:
        index = next(i for i, c in enumerate(captions) if " above " in c)
    else:
        matches = [i for i, c in enumerate(captions) if c == args.prompt]
        index = matches[0] if matches else 0
    prompt = args.prompt or str(captions[index])
    x0 = images[index].astype(np.float32) / 127.5 - 1.0
    out = fields(setup, state.ema_params, x0, prompt, args.guidance)
    draw(out, prompt, args.guidance, args.out)
    print(f"wrote {args.out} (step {step} of {args.workdir}; prompt {prompt!r})")


if __name__ == "__main__":
    main()
