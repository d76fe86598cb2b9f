"""One prompt, three controls, the same noise: what a ControlNet adds to a text-to-image model.

Columns: no control (the base: the ControlNet at ``control_scale = 0``), an edge map, a
segmentation map (each taken from test record ``--record``), with the control map drawn above
its samples; rows: ``--samples`` noise draws, the same in every column. With control the
objects move to where the map puts them; the prompt still decides colours and kinds.

    python experiments/controlnet_gallery.py --edges=runs/shapes_cn \\
        --segmentation=runs/shapes_cn_seg --prompt="a red circle above a blue square" \\
        [--record=0] [--num_steps=32] [--out=experiments/figures/controlnet_gallery.png]
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffjax import checkpoint, sample, train  # noqa: E402
from diffjax.controlnet import cli, maps  # noqa: E402

FIGURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures",
                      "controlnet_gallery.png")


def column(workdir: str, prompt: str, control, n: int, seed: int, scale: float = 1.0,
           num_steps: int | None = None):
    """``n`` samples of the ControlNet run in ``workdir`` for ``prompt`` and ``control``
    (``num_steps``: the sampler's steps, None = the run's own)."""
    config = checkpoint.load_config(workdir)
    config.sampling.control_scale = scale
    if num_steps is not None:
        config.sampling.num_steps = num_steps
    recipe, state, _ = train.restore_for_inference(config, workdir)
    den, params = cli.model_and_params(config, workdir, recipe, state.ema_params)
    cond = cli.conditions(recipe, [prompt], n, control)
    cfg = config.sampling
    x = sample(den.fn, den.path, (n, *recipe.data_info.shape), jax.random.PRNGKey(seed),
               params=params, target=den.target, sampler=cfg.sampler, num_steps=cfg.num_steps,
               cond=cond, guidance_scale=cfg.guidance_scale, nulls=recipe.nulls)
    return np.asarray(x), config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", required=True, help="a ControlNet run of kind edges")
    parser.add_argument("--segmentation", required=True, help="one of kind segmentation")
    parser.add_argument("--prompt", default="a red circle above a blue square")
    parser.add_argument("--record", type=int, default=0)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_steps", type=int, default=None,
                        help="sampler steps (default: each run's own)")
    parser.add_argument("--out", default=FIGURE)
    args = parser.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = []
    none, config = column(args.edges, args.prompt, None, args.samples, args.seed, scale=0.0,
                          num_steps=args.num_steps)
    columns.append(("no control (base)", None, none))
    for kind, workdir in (("edges", args.edges), ("segmentation", args.segmentation)):
        cfg = checkpoint.load_config(workdir)
        control = maps.records_maps(kind, cfg.data.dataset, "test",
                                    cfg.data.get("data_dir"))[args.record]
        x, _ = column(workdir, args.prompt, control, args.samples, args.seed,
                      num_steps=args.num_steps)
        columns.append((kind, control, x))
    fig, axes = plt.subplots(args.samples + 1, 3, figsize=(6, 2 * (args.samples + 1)))
    for c, (title, control, x) in enumerate(columns):
        axes[0, c].set_title(title, fontsize=9)
        if control is not None:
            axes[0, c].imshow((control[..., 0] + 1) / 2, cmap="gray", vmin=0, vmax=1)
        for r in range(args.samples):
            axes[r + 1, c].imshow(np.clip((x[r] + 1) / 2, 0, 1).squeeze())
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f'"{args.prompt}" — same noise in every row', fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(args.out)


if __name__ == "__main__":
    main()
