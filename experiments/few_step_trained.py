"""few_step on a trained digits teacher (issue 16): students of a configs/digits.py run.

    python experiments/few_step_trained.py --workdir=runs/experiments/few_step_trained \
        [--teacher_steps=1300] [--student_steps=1000] [--methods=reflow,meanflow]
        [--couplings=4096] [--teacher=DIR] [--reflow=DIR] [--distill_steps=1000]
        [--distill_ks=1,2,4] [--distill_lr=...] [--seeds=1,2,3,4] [--set=model.ch=64 ...]

Everything goes through the command line of DESIGN §3, so each step can be re-run by hand:

1. the teacher: ``python -m diffjax.main --config=configs/digits.py:flow`` (rectified flow,
   velocity target; the README's main job with the flow recipe), evaluated at 30 NFE with its
   own sampler (Heun) and at 1, 2, 4 NFE with Euler;
2. each student: ``--config=configs/digits_distill.py:<method>`` with
   ``--config.distill.teacher=<teacher workdir>`` (reflow: couplings from the teacher's ODE;
   meanflow: the teacher's velocity as MeanFlow's ``v``), evaluated at 1, 2, 4 NFE with its
   sampler (``euler``, ``mean_flow``). ``reflow`` starts as the teacher (Liu et al.'s
   k-rectified flows; ``config.distill.init_from_teacher``), ``reflow_scratch`` from the seed;
   ``reflow_distill`` is Liu et al.'s k-step distillation of the reflowed student (``--reflow``,
   default this workdir's ``reflow``): one student per k in 1, 2, 4, started from it
   (``config.distill.init_from``) and trained on the same couplings at the k-step Euler
   times only (``config.distill.reflow_steps=k``), scored at its own k.

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

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from diffjax import config_loading  # noqa: E402
from diffjax.config_validation import ConfigError  # noqa: E402

NFES = (1, 2, 4)
# method -> (recipe of configs/digits_distill.py, few-step sampler, extra flags)
METHODS = {"reflow": ("reflow", "euler", ()),      # starts as the teacher (Liu et al.)
           "reflow_scratch": ("reflow", "euler", ("--config.distill.init_from_teacher=False",)),
           "reflow_distill": ("reflow", "euler", ()),   # one student per k, from --reflow
           "meanflow": ("meanflow", "mean_flow", ())}


def main_cli(*flags: str) -> float:
    """Runs ``python -m diffjax.main`` with ``flags``; returns its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffjax.main", *flags], cwd=REPO, check=True)
    return time.perf_counter() - t0


def evaluate(config: str, workdir: str, sampler: str, nfe: int, cache: dict,
             seeds=(1,), extra=()) -> dict:
    """fd_classifier of ``workdir``'s newest checkpoint sampled by ``sampler`` at ``nfe``: the
    mean over sampling noise ``seeds`` (``config.sampling.seed``), and each seed's value."""
    values = []
    for seed in seeds:
        key = f"{workdir}|{sampler}|{nfe}" + (f"|{seed}" if seed != 1 else "")
        if key not in cache:
            main_cli(f"--config={config}", f"--workdir={workdir}", "--mode=eval",
                     f"--config.sampling.sampler={sampler}", f"--config.sampling.num_steps={nfe}",
                     f"--config.sampling.seed={seed}", *extra)
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                record = [json.loads(line) for line in f if '"eval"' in line][-1]
            cache[key] = {k.split("/")[-1]: v for k, v in record.items()
                          if k.split("/")[-1].startswith("fd_classifier")}
        values.append(cache[key])
    return {"fd_classifier": float(np.mean([v["fd_classifier"] for v in values])),
            "fd_classifier_floor": values[0]["fd_classifier_floor"],
            "per_seed": [v["fd_classifier"] for v in values]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--teacher_steps", type=int, default=1300)
    parser.add_argument("--student_steps", type=int, default=1000)
    parser.add_argument("--methods", default="reflow")
    parser.add_argument("--couplings", type=int, default=4096,
                        help="reflow: couplings of the teacher's ODE (config.distill.num_couplings)")
    parser.add_argument("--reflow", default=None,
                        help="reflow_distill: the reflowed run it starts from (default: "
                             "WORKDIR/reflow)")
    parser.add_argument("--distill_steps", type=int, default=1000,
                        help="reflow_distill: training steps of each k-step student")
    parser.add_argument("--distill_ks", default="1,2,4",
                        help="reflow_distill: the step counts k, one student each")
    parser.add_argument("--distill_lr", type=float, default=5e-4,
                        help="reflow_distill: peak learning rate (0: the recipe's)")
    parser.add_argument("--seeds", default="1",
                        help="sampling seeds (config.sampling.seed) of the teacher's 30-NFE and "
                             "the students' cells; a cell is their mean (default: 1)")
    parser.add_argument("--teacher", default=None,
                        help="an existing configs/digits.py:flow run to distil (default: "
                             "train one in WORKDIR/teacher)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override of the teacher trained here and of every "
                             "student, in training and evaluation (model.ch=64); repeatable")
    args = parser.parse_args()
    sets = tuple(f"--config.{kv}" for kv in args.set)
    for name in ("configs/digits.py:flow", "configs/digits_distill.py:reflow"):
        try:  # a bad --set key or value fails here, before any compute
            config_loading.load(os.path.join(REPO, name), list(args.set), lock=False)
        except ConfigError as e:
            parser.error(f"--set: {e}")
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid choices: {', '.join(METHODS)}")
    if not set(args.distill_ks.split(",")) <= {str(k) for k in NFES}:
        parser.error(f"--distill_ks={args.distill_ks}: each k one of {NFES}")
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
            "--config.training.progress_bar=False", *sets)
        save()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    tsets = () if args.teacher else sets    # a teacher trained elsewhere keeps its config
    rows = {"teacher (flow, Heun)": {30: evaluate(tconfig, teacher, "heun", 30,
                                                  results["evals"], seeds, tsets)}}
    rows["teacher (flow, Euler)"] = {k: evaluate(tconfig, teacher, "euler", k, results["evals"],
                                                 seeds, tsets) for k in NFES}
    save()
    runs = []   # (row name, method, workdir, extra flags, train steps, NFEs scored)
    for method in args.methods.split(","):
        wd = os.path.abspath(os.path.join(args.workdir, method))
        if method != "reflow_distill":
            runs.append((method, method, wd, METHODS[method][2], args.student_steps, NFES))
            continue
        start = os.path.abspath(args.reflow or os.path.join(args.workdir, "reflow"))
        for k in (int(k) for k in args.distill_ks.split(",")):
            runs.append((f"reflow_distill k={k}", method, f"{wd}_k{k}",
                         (f"--config.distill.init_from={start}",
                          f"--config.distill.reflow_steps={k}",
                          *([f"--config.optim.lr={args.distill_lr}"] if args.distill_lr else [])),
                         args.distill_steps, (k,)))
    steps_of = {"teacher": args.teacher_steps}
    for name, method, wd, extra, steps, nfes in runs:
        recipe, sampler, _ = METHODS[method]
        sconfig = f"configs/digits_distill.py:{recipe}"
        steps_of[name] = steps
        if name not in results["wall_s"]:
            results["wall_s"][name] = main_cli(
                f"--config={sconfig}", f"--workdir={wd}", f"--config.distill.teacher={teacher}",
                f"--config.training.num_steps={steps}",
                f"--config.training.checkpoint_every={steps}",
                "--config.training.progress_bar=False", *extra, *sets,
                *([f"--config.distill.num_couplings={args.couplings}"]
                  if recipe == "reflow" else []))
            save()
        rows[name] = {k: evaluate(sconfig, wd, sampler, k, results["evals"], seeds, sets)
                      for k in nfes}
        save()
    floor = rows["teacher (flow, Heun)"][30]["fd_classifier_floor"]
    ref = rows["teacher (flow, Heun)"][30]["fd_classifier"]
    lines = [f"fd_classifier (500 samples; mean over sampling seeds {args.seeds}); real-data "
             f"floor {floor:.3f}; teacher at 30 NFE {ref:.3f}. Cells: value (value / teacher's "
             "30-NFE value)", "",
             "| model | NFE 1 | NFE 2 | NFE 4 | NFE 30 | train steps | wall s |",
             "|---|---|---|---|---|---|---|"]
    for name, by_nfe in rows.items():
        cells = [f"{by_nfe[k]['fd_classifier']:.3f} ({by_nfe[k]['fd_classifier'] / ref:.2f}x)"
                 if k in by_nfe else "-" for k in NFES + (30,)]
        run = "teacher" if name.startswith("teacher") else name
        steps = steps_of[run]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {steps} | {results['wall_s'][run]:.0f} |")
    ref_seeds = rows["teacher (flow, Heun)"][30]["per_seed"]
    if len(seeds) > 1:   # each seed's ratio to the teacher's 30-NFE value on the same seed
        lines.append("")
        for name, by_nfe in rows.items():
            for k, cell in by_nfe.items():
                if len(cell.get("per_seed", ())) == len(seeds) and k != 30:
                    lines.append(f"* {name}, NFE {k}, per seed: " + ", ".join(
                        f"{v / r:.2f}x" for v, r in zip(cell["per_seed"], ref_seeds)))
    text = "\n".join(lines) + "\n"
    open(os.path.join(args.workdir, "results.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
