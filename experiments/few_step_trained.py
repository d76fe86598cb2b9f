"""few_step on a trained digits teacher (issue 16): students of a configs/digits.py run.

    python experiments/few_step_trained.py --workdir=runs/experiments/few_step_trained \
        [--teacher_steps=1300] [--student_steps=1000] [--methods=reflow,meanflow]
        [--couplings=4096] [--teacher=DIR]

Everything goes through the command line of DESIGN §3, so each step can be re-run by hand:

1. the teacher: ``python -m diffjax.main --config=configs/digits.py:flow`` (rectified flow,
   velocity target; the README's main job with the flow recipe), evaluated at 30 NFE with its
   own sampler (Heun) and at 1, 2, 4 NFE with Euler;
2. each student: ``--config=configs/digits_distill.py:<method>`` with
   ``--config.distill.teacher=<teacher workdir>`` (reflow: couplings from the teacher's ODE;
   meanflow: the teacher's velocity as MeanFlow's ``v``), evaluated at 1, 2, 4 NFE with its
   sampler (``euler``, ``mean_flow``). ``reflow`` starts as the teacher (Liu et al.'s
   k-rectified flows; ``config.distill.init_from_teacher``), ``reflow_scratch`` from the seed.

Score: ``fd_classifier`` (500 samples, the in-project digits classifier) next to its
real-data floor, from ``--mode=eval`` records in each run's ``metrics.jsonl``. Writes
``workdir/results.md``; finished runs and evaluations are reused when re-run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NFES = (1, 2, 4)
# method -> (recipe of configs/digits_distill.py, few-step sampler, extra flags)
METHODS = {"reflow": ("reflow", "euler", ()),      # starts as the teacher (Liu et al.)
           "reflow_scratch": ("reflow", "euler", ("--config.distill.init_from_teacher=False",)),
           "meanflow": ("meanflow", "mean_flow", ())}


def main_cli(*flags: str) -> float:
    """Runs ``python -m diffjax.main`` with ``flags``; returns its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffjax.main", *flags], cwd=REPO, check=True)
    return time.perf_counter() - t0


def evaluate(config: str, workdir: str, sampler: str, nfe: int, cache: dict) -> dict:
    """fd_classifier of ``workdir``'s newest checkpoint sampled by ``sampler`` at ``nfe``."""
    key = f"{workdir}|{sampler}|{nfe}"
    if key not in cache:
        main_cli(f"--config={config}", f"--workdir={workdir}", "--mode=eval",
                 f"--config.sampling.sampler={sampler}", f"--config.sampling.num_steps={nfe}")
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            record = [json.loads(line) for line in f if '"eval"' in line][-1]
        cache[key] = {k.split("/")[-1]: v for k, v in record.items()
                      if k.split("/")[-1].startswith("fd_classifier")}
    return cache[key]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--teacher_steps", type=int, default=1300)
    parser.add_argument("--student_steps", type=int, default=1000)
    parser.add_argument("--methods", default="reflow")
    parser.add_argument("--couplings", type=int, default=4096,
                        help="reflow: couplings of the teacher's ODE (config.distill.num_couplings)")
    parser.add_argument("--teacher", default=None,
                        help="an existing configs/digits.py:flow run to distil (default: "
                             "train one in WORKDIR/teacher)")
    args = parser.parse_args()
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid choices: {', '.join(METHODS)}")
    os.makedirs(args.workdir, exist_ok=True)
    out = os.path.join(args.workdir, "results.json")
    results = json.load(open(out)) if os.path.exists(out) else {"evals": {}, "wall_s": {}}
    save = lambda: json.dump(results, open(out, "w"), indent=2)  # noqa: E731
    teacher = os.path.abspath(args.teacher or os.path.join(args.workdir, "teacher"))
    tconfig = "configs/digits.py:flow"
    if args.teacher:
        results["wall_s"].setdefault("teacher", float("nan"))    # trained elsewhere
    if "teacher" not in results["wall_s"]:
        results["wall_s"]["teacher"] = main_cli(
            f"--config={tconfig}", f"--workdir={teacher}",
            f"--config.training.num_steps={args.teacher_steps}",
            "--config.training.eval_every=0",       # evaluated below, like the students
            "--config.training.progress_bar=False")
        save()
    rows = {"teacher (flow, Heun)": {30: evaluate(tconfig, teacher, "heun", 30,
                                                  results["evals"])}}
    rows["teacher (flow, Euler)"] = {k: evaluate(tconfig, teacher, "euler", k, results["evals"])
                                     for k in NFES}
    save()
    for method in args.methods.split(","):
        recipe, sampler, extra = METHODS[method]
        sconfig = f"configs/digits_distill.py:{recipe}"
        wd = os.path.abspath(os.path.join(args.workdir, method))
        if method not in results["wall_s"]:
            results["wall_s"][method] = main_cli(
                f"--config={sconfig}", f"--workdir={wd}", f"--config.distill.teacher={teacher}",
                f"--config.training.num_steps={args.student_steps}",
                f"--config.training.checkpoint_every={args.student_steps}",
                "--config.training.progress_bar=False", *extra,
                *([f"--config.distill.num_couplings={args.couplings}"]
                  if recipe == "reflow" else []))
            save()
        rows[method] = {k: evaluate(sconfig, wd, sampler, k, results["evals"])
                        for k in NFES}
        save()
    floor = rows["teacher (flow, Heun)"][30]["fd_classifier_floor"]
    ref = rows["teacher (flow, Heun)"][30]["fd_classifier"]
    lines = [f"fd_classifier (500 samples); real-data floor {floor:.3f}; teacher at 30 NFE "
             f"{ref:.3f}. Cells: value (value / teacher's 30-NFE value)", "",
             "| model | NFE 1 | NFE 2 | NFE 4 | NFE 30 | train steps | wall s |",
             "|---|---|---|---|---|---|---|"]
    for name, by_nfe in rows.items():
        cells = [f"{by_nfe[k]['fd_classifier']:.3f} ({by_nfe[k]['fd_classifier'] / ref:.2f}x)"
                 if k in by_nfe else "-" for k in NFES + (30,)]
        run = "teacher" if name.startswith("teacher") else name
        steps = args.teacher_steps if run == "teacher" else args.student_steps
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {steps} | {results['wall_s'][run]:.0f} |")
    text = "\n".join(lines) + "\n"
    open(os.path.join(args.workdir, "results.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
