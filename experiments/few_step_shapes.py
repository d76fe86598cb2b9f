"""few_step on the text-to-image `shapes` model (issue 16): students of a configs/shapes_t2i.py
run, scored by prompt adherence and image statistics at 1, 2, 4 and 8 NFE.

    python experiments/few_step_shapes.py --workdir=runs/experiments/few_step_shapes \
        [--teacher=DIR] [--student_steps=1000] [--couplings=2048] [--distill_ks=1,2]
        [--distill_steps=500] [--methods=reflow,reflow_distill] [--seed=1]

Everything goes through the command line of DESIGN §3:

1. the teacher: ``python -m diffjax.main --config=configs/shapes_t2i.py`` (the main
   text-to-image job; ``--teacher`` reuses a finished one), scored with Euler at 1, 2, 4, 8
   NFE and with its own Heun at 32, under its own guidance (scale 3 on ``sigma/alpha <= 2``;
   a guided evaluation is one batched call, one NFE);
2. ``reflow``: ``--config=configs/shapes_distill.py:reflow`` with the teacher: couplings of
   the teacher's guided ODE, each from a training caption, then the student (started as the
   teacher) trained on them, sampled by Euler without guidance at 1, 2, 4, 8 NFE;
   ``reflow_distill``: Liu et al.'s k-step distillation of that student, one per k
   (``config.distill.reflow_steps=k``, from the reflowed run), scored at its own k;
   ``meanflow``: MeanFlow from scratch with the teacher's guided velocity as its ``v``.

Scores: ``shapes_eval`` (GenEval-style adherence, exact on this world; chance about 0.05,
real images' value next to it) and ``fd_shapes`` with its real-data floor, on the main job's
500 test captions, from ``--mode=eval`` records in each run's ``metrics.jsonl``. Writes
``workdir/results.md``; finished runs and evaluations are reused when re-run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments.few_step_trained import main_cli  # noqa: E402

NFES = (1, 2, 4, 8)
TEACHER = "configs/shapes_t2i.py"
# method -> (recipe of configs/shapes_distill.py, its few-step sampler)
METHODS = {"reflow": ("reflow", "euler"),
           "reflow_distill": ("reflow", "euler"),
           "meanflow": ("meanflow", "mean_flow")}
KEYS = ("shapes_eval", "shapes_eval_real", "fd_shapes", "fd_shapes_floor")


def evaluate(config: str, workdir: str, sampler: str, nfe: int, cache: dict, seed: int) -> dict:
    """``KEYS`` of ``workdir``'s newest checkpoint sampled by ``sampler`` at ``nfe``."""
    key = f"{workdir}|{sampler}|{nfe}|{seed}"
    if key not in cache:
        main_cli(f"--config={config}", f"--workdir={workdir}", "--mode=eval",
                 f"--config.sampling.sampler={sampler}", f"--config.sampling.num_steps={nfe}",
                 f"--config.sampling.seed={seed}")
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            record = [json.loads(line) for line in f if '"eval"' in line][-1]
        cache[key] = {k.split("/")[-1]: v for k, v in record.items()
                      if k.split("/")[-1] in KEYS}
    return cache[key]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--teacher", default=None,
                        help="a finished configs/shapes_t2i.py run (default: train one in "
                             "WORKDIR/teacher)")
    parser.add_argument("--methods", default="reflow,reflow_distill")
    parser.add_argument("--student_steps", type=int, default=1000)
    parser.add_argument("--couplings", type=int, default=2048)
    parser.add_argument("--distill_ks", default="1,2")
    parser.add_argument("--distill_steps", type=int, default=500)
    parser.add_argument("--distill_lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=1, help="config.sampling.seed")
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else []
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid choices: {', '.join(METHODS)}")
    ks = [int(k) for k in args.distill_ks.split(",")] if args.distill_ks else []
    if not set(ks) <= set(NFES):
        parser.error(f"--distill_ks={args.distill_ks}: each k one of {NFES}")
    if "reflow_distill" in methods and "reflow" not in methods:
        parser.error("--methods: reflow_distill starts from the reflow student; list reflow")
    os.makedirs(args.workdir, exist_ok=True)
    out = os.path.join(args.workdir, "results.json")
    results = json.load(open(out)) if os.path.exists(out) else {"evals": {}, "wall_s": {}}
    save = lambda: json.dump(results, open(out, "w"), indent=2)  # noqa: E731
    teacher = os.path.abspath(args.teacher or os.path.join(args.workdir, "teacher"))
    if args.teacher:
        results["wall_s"].setdefault("teacher", float("nan"))    # trained elsewhere
    if "teacher" not in results["wall_s"]:
        results["wall_s"]["teacher"] = main_cli(
            f"--config={TEACHER}", f"--workdir={teacher}", "--config.training.eval_every=0",
            "--config.training.progress_bar=False")
        save()
    ev = results["evals"]
    rows = {"teacher (Heun, guided)": {32: evaluate(TEACHER, teacher, "heun", 32, ev, args.seed)}}
    rows["teacher (Euler, guided)"] = {k: evaluate(TEACHER, teacher, "euler", k, ev, args.seed)
                                       for k in NFES}
    save()
    with open(os.path.join(teacher, "config.json")) as f:   # what the run itself trained
        steps_of = {"teacher": json.load(f)["training"]["num_steps"]}
    runs = []   # (row, method, workdir, flags, steps, NFEs)
    for method in methods:
        wd = os.path.abspath(os.path.join(args.workdir, method))
        if method != "reflow_distill":
            runs.append((method, method, wd, (), args.student_steps, NFES))
            continue
        start = os.path.abspath(os.path.join(args.workdir, "reflow"))
        for k in ks:
            runs.append((f"reflow_distill k={k}", method, f"{wd}_k{k}",
                         (f"--config.distill.init_from={start}",
                          f"--config.distill.reflow_steps={k}", f"--config.optim.lr="
                          f"{args.distill_lr}", "--config.optim.warmup_steps=0"),
                         args.distill_steps, (k,)))
    for name, method, wd, extra, steps, nfes in runs:
        recipe, sampler = METHODS[method]
        config = f"configs/shapes_distill.py:{recipe}"
        steps_of[name] = steps
        if name not in results["wall_s"]:
            results["wall_s"][name] = main_cli(
                f"--config={config}", f"--workdir={wd}", f"--config.distill.teacher={teacher}",
                f"--config.training.num_steps={steps}",
                f"--config.training.checkpoint_every={steps}",
                f"--config.distill.num_couplings={args.couplings}",
                "--config.training.progress_bar=False", *extra)
            save()
        rows[name] = {k: evaluate(config, wd, sampler, k, ev, args.seed) for k in nfes}
        save()
    ref = rows["teacher (Heun, guided)"][32]
    lines = [f"shapes_eval (500 test captions; real images {ref['shapes_eval_real']:.3f}) / "
             f"fd_shapes (floor {ref['fd_shapes_floor']:.2f}); sampling seed {args.seed}. "
             "Teacher rows guided (scale 3 on sigma/alpha <= 2), students unguided.", "",
             "| model | NFE 1 | NFE 2 | NFE 4 | NFE 8 | NFE 32 | train steps | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, by_nfe in rows.items():
        cells = [f"{by_nfe[k]['shapes_eval']:.3f} / {by_nfe[k]['fd_shapes']:.1f}"
                 if k in by_nfe else "-" for k in NFES + (32,)]
        run = "teacher" if name.startswith("teacher") else name
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {steps_of[run]} | {results['wall_s'][run]:.0f} |")
    text = "\n".join(lines) + "\n"
    open(os.path.join(args.workdir, "results.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
