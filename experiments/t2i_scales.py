"""One trained text-to-image run evaluated at several guidance scales, in one process.

The ``t2i_guidance`` sweep trains its own model and evaluates it per scale; this script does
the evaluation half for a model you already have (e.g. the main job's workdir: the sweep's
training is the same config and seed). Same samples per scale (same noise, the first
``--num_samples`` test captions), ``shapes_eval`` per category and ``fd_shapes`` with its
floor; a markdown table on stdout and in ``WORKDIR/t2i_scales_<prompt_set>[_<changes>].md``
(the changes: ``_num_steps<N>``, ``_grid<NAME>``, ``_n<num_samples>`` when not 500).

    python experiments/t2i_scales.py --workdir=runs/shapes_t2i [--scales=0,1,2,3,5,7.5,12]
        [--num_samples=500] [--prompt_set=test|reordered|reworded] [--intervals="run;none;0,2"]
        [--num_steps=N] [--grid=NAME]

``--intervals``: the guidance intervals to cross with the scales (Kynkäänniemi et al. 2024,
``(lo, hi)`` in ``sigma / alpha``), ``;``-separated: ``run`` (the default) is the run's own
``sampling.guidance_interval``, ``none`` guides at every noise level, ``lo,hi`` only there.
``--num_steps`` / ``--grid`` replace the run's ``sampling.num_steps`` (NFE) and
``sampling.grid`` (a name of ``diffjax.samplers.grids.GRIDS``) for every row.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffjax import atomic, checkpoint, train  # noqa: E402
from diffjax.evaluate import metrics as metrics_lib  # noqa: E402
from diffjax.training import evaluation  # noqa: E402

COLUMNS = ("shapes_eval", "shapes_eval_single_object", "shapes_eval_two_object",
           "shapes_eval_counting", "shapes_eval_colors", "shapes_eval_position",
           "shapes_eval_color_attr", "fd_shapes")


def parse_intervals(text: str) -> list:
    """``"run;none;0,2"`` -> ``["run", None, (0.0, 2.0)]`` (SystemExit naming a bad entry)."""
    out = []
    for part in text.split(";"):
        part = part.strip()
        if part in ("run", "none"):
            out.append(None if part == "none" else "run")
            continue
        try:
            lo, hi = (float(v) for v in part.split(","))
        except ValueError:
            raise SystemExit(f"--intervals: {part!r} is not 'run', 'none' or 'lo,hi'") from None
        if not 0 <= lo < hi:
            raise SystemExit(f"--intervals: {part!r} needs 0 <= lo < hi")
        out.append((lo, hi))
    return out


def evaluate(workdir: str, scales: list[float], num_samples: int, prompt_set: str,
             intervals: list | None = None, sampling_changes: dict | None = None) -> list[dict]:
    config = checkpoint.load_config(workdir)
    if config is None:
        raise SystemExit(f"{workdir} holds no config.json (train it first)")
    config.eval.prompt_set = prompt_set
    config.sampling.update(sampling_changes or {})
    setup, state, step = train.restore_for_inference(config, workdir)
    rows = []
    own = config.sampling.get("guidance_interval")
    for interval, w in [(i, w) for i in (intervals or ["run"]) for w in scales]:
        start = time.time()
        sampling = copy.deepcopy(config.sampling)
        sampling.guidance_scale = float(w)
        interval = (tuple(own) if own is not None else None) if interval == "run" else interval
        sampling.guidance_interval = interval
        samples, prompts = evaluation.generate(setup, state.ema_params, sampling, num_samples,
                                               config.eval.batch_size, progress=False)
        result = metrics_lib.evaluate_samples(
            samples, metrics=["shapes_eval", "fd_shapes"], dataset=config.data.dataset,
            cache_dir=config.eval.cache_dir or os.path.expanduser("~/.cache/diffjax/eval"),
            prompts=list(prompts), data_dir=config.data.get("data_dir"))
        rows.append({"w": w, "interval": interval, "step": step,
                     "seconds": time.time() - start, **result})
        print(f"w={w:g} interval={_interval(interval)}: shapes_eval={result['shapes_eval']:.3f} "
              f"fd_shapes={result['fd_shapes']:.1f} ({rows[-1]['seconds']:.0f} s)", flush=True)
    return rows


def _interval(interval) -> str:
    return "all" if interval is None else f"[{interval[0]:g}, {interval[1]:g}]"  # closed


def table(rows: list[dict]) -> str:
    head = "| w | interval | " + " | ".join(c.replace("shapes_eval_", "") for c in COLUMNS) + " |"
    lines = [head, "|---:|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['w']:g} | {_interval(r['interval'])} | " + " | ".join(
            f"{r[c]:.1f}" if c == "fd_shapes" else f"{r[c]:.3f}" for c in COLUMNS) + " |")
    r = rows[0]
    lines.append(f"\nfd_shapes floor {r['fd_shapes_floor']:.2f}; real test images score "
                 f"shapes_eval {r['shapes_eval_real']:.3f}; step {r['step']}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--scales", default="0,1,2,3,5,7.5,12")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--prompt_set", default="test")
    parser.add_argument("--intervals", default="run",
                        help="';'-separated guidance intervals: run | none | lo,hi")
    parser.add_argument("--num_steps", type=int, default=None,
                        help="the sampler's NFE (default: the run's sampling.num_steps)")
    parser.add_argument("--grid", default=None,
                        help="the time grid (default: the run's sampling.grid)")
    args = parser.parse_args()
    intervals = parse_intervals(args.intervals)
    changes = {k: v for k, v in (("num_steps", args.num_steps), ("grid", args.grid))
               if v is not None}
    if changes:
        from diffjax.samplers import grids
        if args.grid is not None and args.grid not in grids.GRIDS:
            raise SystemExit(f"--grid={args.grid!r}: valid choices: {', '.join(grids.GRIDS)}")
        if args.num_steps is not None and args.num_steps < 1:
            raise SystemExit(f"--num_steps={args.num_steps}: must be >= 1")
    rows = evaluate(args.workdir, [float(s) for s in args.scales.split(",")], args.num_samples,
                    args.prompt_set, intervals, changes)
    text = table(rows)
    print(text)
    tag = "".join(f"_{k}{v}" for k, v in changes.items())
    if args.num_samples != parser.get_default("num_samples"):  # never over another size's table
        tag += f"_n{args.num_samples}"
    atomic.write_text(os.path.join(args.workdir, f"t2i_scales_{args.prompt_set}{tag}.md"),
                      text + "\n")


if __name__ == "__main__":
    main()
