"""Does a ControlNet converge suddenly? control_f1 against training step.

Zhang et al. 2023 (§4, Fig. 21) report a "sudden convergence": the ControlNet ignores the
control until, "usually within 10K steps", it abruptly follows it. This trains a ControlNet on
``configs/shapes_controlnet.py`` beside a trained text-to-image base in segments of ``--every``
steps (each segment resumes the last), scores the newest checkpoint after each
(:func:`diffjax.controlnet.evaluate.score`: ``control_f1`` with its ``_real`` ceiling and the
base's ``_uncontrolled`` floor, ``shapes_eval`` with and without control) and reports the
first step where ``control_f1`` reaches half-way from floor to ceiling, and the largest jump
between two evaluations.

    python -m diffjax.main --config=configs/shapes_t2i.py --workdir=runs/shapes_t2i   # base
    python experiments/controlnet_convergence.py --base=runs/shapes_t2i \\
        --workdir=runs/controlnet_convergence [--variant=cpu] [--steps=4000 --every=250]
    python experiments/controlnet_convergence.py --base=... --workdir=... --quick  # smoke

Writes ``WORKDIR/convergence.csv`` and ``WORKDIR/convergence.md``. Quality bar (issue 15):
at the end ``control_f1 >= 0.8 * control_f1_real`` and ``>= 2 * control_f1_uncontrolled``,
``shapes_eval`` no more than 0.05 below the uncontrolled base.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffjax import atomic, config_loading, config_validation, train  # noqa: E402
from diffjax.controlnet import evaluate  # noqa: E402


def verdict(rows: list[dict], name: str = "control_f1") -> dict:
    """First step half-way from floor to ceiling, and the largest jump between evaluations."""
    half = None
    for r in rows:
        lo, hi = r[f"{name}_uncontrolled"], r[f"{name}_real"]
        if half is None and r[name] >= lo + 0.5 * (hi - lo):
            half = r["step"]
    jumps = [(b[name] - a[name], b["step"]) for a, b in zip(rows, rows[1:])]
    jump, at = max(jumps) if jumps else (float("nan"), None)
    return {"half_way_step": half, "largest_jump": jump, "largest_jump_at": at}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--variant", default="cpu")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--num", type=int, default=256, help="evaluation samples")
    parser.add_argument("--quick", action="store_true", help="3 segments of 5 steps, 16 samples")
    parser.add_argument("--override", action="append", default=[],
                        help="key=value config overrides (e.g. model.ch=16 to match a base)")
    args = parser.parse_args(argv)
    steps, every, num = (15, 5, 16) if args.quick else (args.steps, args.every, args.num)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "shapes_controlnet.py")
    quick = ["sampling.num_steps=4"] if args.quick else []
    config = config_loading.load(f"{path}:{args.variant}", [f"controlnet.base={args.base}",
                                                           *quick, *args.override])
    rows = []
    for end in range(every, steps + 1, every):
        config.training.update(num_steps=end, checkpoint_every=every)
        config_validation.validate(config)
        train.train(config, args.workdir)
        rows.append(evaluate.score(config, args.workdir, num=num))
        print(rows[-1], flush=True)
    os.makedirs(args.workdir, exist_ok=True)
    atomic.write_csv(os.path.join(args.workdir, "convergence.csv"), rows)
    name = "control_iou" if config.controlnet.kind == "segmentation" else "control_f1"
    summary = verdict(rows, name)
    keys = list(rows[0])
    table = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n" + "".join(
        "| " + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k])
                          for k in keys) + " |\n" for r in rows)
    atomic.write_text(os.path.join(args.workdir, "convergence.md"), f"{table}\n{summary}\n")
    print(summary)


if __name__ == "__main__":
    main()
