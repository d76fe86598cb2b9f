"""The few_step figure (issue 16): quality against NFE for every method, from the results of
experiments/few_step.py (the exact digits mixture), experiments/few_step_trained.py (the
trained digits teachers) and, when given, experiments/few_step_shapes.py (the text-to-image
teacher).

    python experiments/few_step_plot.py --exact runs/experiments/few_step_all \
        --trained runs/experiments/few_step_trained_all \
        --shapes runs/experiments/few_step_shapes --out experiments/figures/few_step.png

Left: Fréchet distance to the exact mixture over its floor (500 exact samples), each
student at the NFEs its sampler was scored at, the exact teacher's best deterministic sampler
per NFE beside them. Right: ``fd_classifier`` over the row's reference (its teacher's value
at 30 steps of its own sampler; the flow teacher's for the methods trained from data alone),
the teachers' own few-step samplers beside the students. Both axes logarithmic; the dotted
line is 1 (the floor, or the teacher). Third panel (``--shapes``): prompt adherence
(``shapes_eval``, exact on this world) of the guided teacher's best few-step sampler and of
each student (sampled unguided), the dotted line the teacher's own 32-NFE Heun.
"""
from __future__ import annotations

import argparse
import json
import os

NFES = (1, 2, 4, 8)


def exact_curves(results: dict) -> dict:
    """``{label: [(nfe, FD / floor), ...]}`` of a few_step.py ``results.json``."""
    floor = results["floor"]["fd"]
    curves = {"exact teacher, best of 30 samplers": [
        (k, results[f"teacher_best_{k}"]["fd"] / floor) for k in NFES
        if f"teacher_best_{k}" in results]}
    for method, r in results.items():
        if isinstance(r, dict) and "fd_by_nfe" in r:
            curves[method] = sorted((int(k), v / floor) for k, v in r["fd_by_nfe"].items())
    return {k: v for k, v in curves.items() if v}


def trained_curves(results: dict) -> dict:
    """``{label: [(nfe, value / reference), ...]}`` of a few_step_trained.py ``results.json``:
    progressive's rounds and reflow_distill's students (one NFE each) joined into one curve
    each; each teacher's few-step samplers joined into its best per NFE; the teachers'
    30-step reference rows left out (they are 1 by definition)."""
    if "table" not in results:
        raise ValueError("no 'table' in the few_step_trained results: re-run "
                         "experiments/few_step_trained.py with the same flags to write it")
    curves: dict = {}
    for name, row in results["table"]["rows"].items():
        points = [(int(k), v / row["reference"]) for k, v in row["fd_classifier"].items()
                  if int(k) in NFES]
        if name.startswith("teacher ("):   # "teacher (<kind>, <sampler>)"
            label = f"{name.split('(')[1].split(',')[0]} teacher, best few-step sampler"
        elif name.startswith("progressive"):
            label = "progressive"
        elif name.startswith("reflow_distill"):
            label = "reflow + k-step distillation"
        else:
            label = name
        curves.setdefault(label, []).extend(points)
    return {label: sorted({k: min(v for j, v in pts if j == k) for k, _ in pts}.items())
            for label, pts in curves.items() if pts}


def shapes_curves(results: dict) -> tuple[dict, float]:
    """``({label: [(nfe, shapes_eval), ...]}, the teacher's 32-NFE value)`` of a
    few_step_shapes.py ``results.json``: rows joined as in :func:`trained_curves`."""
    if "table" not in results:
        raise ValueError("no 'table' in the few_step_shapes results: re-run "
                         "experiments/few_step_shapes.py with the same flags to write it")
    curves: dict = {}
    reference = None
    for name, row in results["table"]["rows"].items():
        if name.startswith("teacher (Heun"):
            reference = row["32"]["shapes_eval"]
            continue
        if name.startswith("teacher") and not name.startswith("teacher ("):
            continue   # another teacher kind (edm): its students' own reference
        label = ("flow teacher, best few-step sampler" if name.startswith("teacher")
                 else "progressive" if name.startswith("progressive")
                 else "reflow + k-step distillation" if name.startswith("reflow_distill")
                 else name)
        curves.setdefault(label, []).extend(
            (int(k), v["shapes_eval"]) for k, v in row.items() if int(k) in NFES)
    if reference is None:
        raise ValueError("no 'teacher (Heun, guided)' row in the few_step_shapes results")
    # adherence: higher is better, so a label's best per NFE is its largest
    return ({label: sorted({k: max(v for j, v in pts if j == k) for k, _ in pts}.items())
             for label, pts in curves.items() if pts}, reference)


# one colour per method in both panels; the teachers in black and greys
COLOURS = {m: f"C{i}" for i, m in enumerate(
    ("progressive", "consistency_distillation", "consistency_training", "reflow", "shortcut",
     "meanflow", "reflow + k-step distillation"))}
TEACHER_STYLE = {"exact": ("black", "o"), "flow": ("black", "o"), "vp_cosine": ("0.45", "s"),
                 "edm": ("0.7", "^")}


def draw(ax, curves: dict, title: str, ylabel: str, log_y: bool = True,
         reference: float = 1.0) -> None:
    for label, points in curves.items():
        if "teacher" in label:
            colour, marker = TEACHER_STYLE[label.split()[0]]
            ax.plot(*zip(*points), "--", marker=marker, ms=4, lw=1.2, color=colour,
                    label=label)
        else:
            ax.plot(*zip(*points), "-", marker="o", ms=4, lw=1.8, color=COLOURS.get(label),
                    label=label)
    ax.axhline(reference, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    if log_y:
        ax.set_yscale("log")
    ax.set_xticks(NFES, [str(k) for k in NFES])
    ax.set_xlabel("NFE")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--exact", required=True, help="a workdir of experiments/few_step.py")
    parser.add_argument("--trained", required=True,
                        help="a workdir of experiments/few_step_trained.py")
    parser.add_argument("--shapes", default=None,
                        help="a workdir of experiments/few_step_shapes.py (a third panel)")
    parser.add_argument("--out", default="experiments/figures/few_step.png")
    args = parser.parse_args()
    loaded = {}
    for flag, path in (("--exact", args.exact), ("--trained", args.trained),
                       ("--shapes", args.shapes)):
        if path is None:
            continue
        file = os.path.join(path, "results.json")
        if not os.path.isfile(file):
            parser.error(f"{flag}={path}: no results.json there (run the experiment first)")
        loaded[flag] = json.load(open(file))
    try:
        exact, trained = exact_curves(loaded["--exact"]), trained_curves(loaded["--trained"])
        shapes = shapes_curves(loaded["--shapes"]) if args.shapes else None
    except (KeyError, ValueError) as e:
        parser.error(f"unexpected results: {e}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3 if shapes else 2, figsize=(18 if shapes else 12, 4.6))
    draw(axes[0], exact, "exact 64-d digits mixture (teacher = the exact model)",
         "FD / floor")
    draw(axes[1], trained, "trained digits teachers (configs/digits.py)",
         "fd_classifier / teacher at 30 steps")
    if shapes:
        draw(axes[2], shapes[0], "text-to-image shapes (configs/shapes_t2i.py teacher, guided)",
             "shapes_eval (prompt adherence)", log_y=False, reference=shapes[1])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
