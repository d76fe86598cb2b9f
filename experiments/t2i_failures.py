"""Why a text-to-image run's samples miss their prompts: `shapes_eval` with one requirement
waived at a time.

For each waived requirement (the shape, the colour, the size, the count of a counting prompt,
the relation of a position prompt) the same samples are re-scored, so the row that rises most
names what the model gets wrong most. Also printed: how many objects the detector finds in the
images of single-object prompts (0 = an empty image). Same samples for every row (the first
``--num_samples`` test captions, the run's sampler and seed); a markdown table on stdout and
in ``WORKDIR/t2i_failures.md``.

    python experiments/t2i_failures.py --workdir=runs/shapes_t2i [--num_samples=500]
        [--scale=3] [--interval=run|none|lo,hi]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffjax import atomic, checkpoint, train  # noqa: E402
from diffjax.training import evaluation  # noqa: E402
from experiments.t2i_scales import parse_intervals  # noqa: E402

WAIVERS = ("none", "shape", "colour", "size", "count", "relation")


def waive(prompt: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """The parsed prompts with one requirement dropped (``none``: unchanged)."""
    from diffjax.data.shapes_vocab import CATEGORIES

    out = {k: v.copy() for k, v in prompt.items()}
    if what in ("shape", "colour", "size"):
        out[what][:] = -1  # -1: any value matches
    elif what == "count":  # a counting prompt then needs at least one matching object
        counting = out["category"] == CATEGORIES.index("counting")
        out["count"][counting] = np.minimum(out["count"][counting], 1)
        out["category"][counting] = CATEGORIES.index("single_object")
    elif what == "relation":
        out["relation"][:] = -1
    return out


def main() -> None:
    from diffjax.data import shapes_captions
    from diffjax.data.shapes_vocab import CATEGORIES
    from diffjax.evaluate import shapes_eval

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--scale", type=float, default=None,
                        help="guidance scale (default: the run's)")
    parser.add_argument("--interval", default="run", help="run | none | lo,hi")
    args = parser.parse_args()
    (interval,) = parse_intervals(args.interval)
    config = checkpoint.load_config(args.workdir)
    if config is None:
        raise SystemExit(f"{args.workdir} holds no config.json (train it first)")
    setup, state, step = train.restore_for_inference(config, args.workdir)
    sampling = copy.deepcopy(config.sampling)
    if args.scale is not None:
        sampling.guidance_scale = args.scale
    if interval != "run":
        sampling.guidance_interval = interval
    images, prompts = evaluation.generate(setup, state.ema_params, sampling, args.num_samples,
                                          config.eval.batch_size, progress=False)
    parsed = shapes_captions.parse_batch(list(prompts))
    scenes = shapes_eval.evaluator(config.eval.cache_dir).detect(np.asarray(images))
    cats = [c for c in CATEGORIES if np.any(parsed["category"] == CATEGORIES.index(c))]
    lines = [f"| waived | overall | {' | '.join(cats)} |", "|---|" + "---:|" * (len(cats) + 1)]
    for what in WAIVERS:
        ok = shapes_captions.satisfies(waive(parsed, what), scenes)
        per = shapes_captions.per_category(ok, parsed["category"])  # original categories
        lines.append(f"| {what} | {per['overall']:.3f} | "
                     + " | ".join(f"{per[c]:.3f}" for c in cats) + " |")
    single = parsed["category"] == CATEGORIES.index("single_object")
    found = np.bincount(np.minimum(scenes["count"][single], 4), minlength=5)
    own = sampling.get("guidance_interval")
    lines.append(f"\nObjects found in the {single.sum()} single-object prompts' images "
                 f"(0, 1, 2, 3, 4+): {', '.join(map(str, found))}. Step {step}, guidance "
                 f"{sampling.guidance_scale:g}, interval "
                 f"{'all' if own is None else tuple(own)}, {sampling.sampler} x "
                 f"{sampling.num_steps}, {args.num_samples} test captions.")
    text = "\n".join(lines)
    print(text)
    atomic.write_text(os.path.join(args.workdir, "t2i_failures.md"), text + "\n")


if __name__ == "__main__":
    main()
