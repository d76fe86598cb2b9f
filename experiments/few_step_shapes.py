"""few_step on the text-to-image `shapes` model (issue 16): students of configs/shapes_t2i.py
runs, scored by prompt adherence and image statistics at 1, 2, 4 and 8 NFE.

    python experiments/few_step_shapes.py --workdir=runs/experiments/few_step_shapes \
        [--teacher=DIR] [--teacher_dir=edm=DIR] [--student_steps=1000] [--couplings=2048]
        [--distill_ks=1,2] [--distill_steps=500] [--round_steps=300] [--seed=1] [--set=K=V]
        [--methods=reflow,reflow_distill,meanflow,progressive,shortcut,consistency_training,
                   consistency_distillation]

Everything goes through the command line of DESIGN §3:

1. the teachers: ``flow`` = ``python -m diffjax.main --config=configs/shapes_t2i.py`` (the
   main text-to-image job; ``--teacher`` reuses a finished one), and, for consistency
   distillation only, ``edm`` = the same job with diffjax.configs' ``edm`` recipe (path,
   ``x0`` target, preconditioning, Fourier embedding, weighting and log-normal noise levels of
   Karras et al. 2022; ``--teacher_dir=edm=DIR`` reuses one); each scored with Euler and
   DPM-Solver++(2M) at 1, 2, 4, 8 NFE and with Heun at 32, under its own guidance (scale 3 on
   ``sigma/alpha <= 2``; a guided evaluation is one batched call, one NFE);
2. the students, ``--config=configs/shapes_distill.py:<method>``, each sampled without
   guidance at 1, 2, 4, 8 NFE (a teacher's guided field is what its student learns):
   ``reflow``: couplings of the flow teacher's guided ODE, each from a training caption, then
   the student (started as the teacher) trained on them, Euler; ``reflow_distill``: Liu et
   al.'s k-step distillation of that student, one per k (``config.distill.reflow_steps=k``,
   from the reflowed run), scored at its own k; ``meanflow``: MeanFlow with the teacher's
   guided velocity as its ``v``; ``progressive``: rounds 16 -> 8 -> 4 -> 2 -> 1 on the flow
   teacher's path (``--round_steps`` each, round 1 from the teacher, each later round from
   the one before and starting as it; DDIM on its own grid, scored at its own step count);
   ``shortcut`` and ``consistency_training``: from the data alone (no teacher, so no
   guidance); ``consistency_distillation``: from the ``edm`` teacher.

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
from diffjax import atomic, config_loading  # noqa: E402
from diffjax.config_validation import ConfigError  # noqa: E402
from experiments.few_step_trained import given_teachers, main_cli, results_store  # noqa: E402

NFES = (1, 2, 4, 8)
TEACHER = "configs/shapes_t2i.py"
# teacher kind -> its flags on TEACHER (each method's teacher shares the student's path):
# edm = the main job with diffjax.configs' edm recipe in place of its flow one (the path and
# target alone, without EDM's preconditioning, fed the network inputs of scale up to
# sigma_max = 80 unscaled: that teacher scored 0.08 adherence at 8 Heun NFE, 0.00 at 32)
TEACHERS = {"flow": (),
            "edm": tuple(f"--config.{k}={v}" for k, v in (
                ("path.name", "edm"), ("model.target", "x0"), ("model.preconditioning", "edm"),
                ("model.embedding", "fourier"), ("loss.weighting", "edm"),
                ("loss.time_sampling", "lognormal")))}
# method -> (recipe of configs/shapes_distill.py, its few-step sampler, teacher kind or None)
METHODS = {"reflow": ("reflow", "euler", "flow"),
           "reflow_distill": ("reflow", "euler", "flow"),
           "meanflow": ("meanflow", "mean_flow", "flow"),
           "progressive": ("progressive", "ddim", "flow"),
           "shortcut": ("shortcut", "mean_flow", None),
           "consistency_training": ("consistency_training", "consistency", None),
           "consistency_distillation": ("consistency_distillation", "consistency", "edm")}
# the teachers' second few-step sampler, as on digits: DPM-Solver++(2M), which needs a finite
# log-SNR at both ends of the rectified flow's range; there on the grid uniform in t (its
# default, uniform in log-SNR over that range, spends half of 4 steps at the two ends: 0.14
# adherence at 4 NFE against 0.37 on the uniform grid)
DPM = ("dpm_solver++", ("--config.sampling.order=2",))
FLOW_DPM_RANGE = ("--config.sampling.t_max=0.999", "--config.sampling.t_min=0.001",
                  "--config.sampling.grid=uniform")
PD_STEPS = (16, 8, 4, 2, 1)     # configs/shapes_distill.py's config.distill.steps
KEYS = ("shapes_eval", "shapes_eval_real", "fd_shapes", "fd_shapes_floor")


def evaluate(config: str, workdir: str, sampler: str, nfe: int, cache: dict, seed: int,
             extra=(), options=()) -> dict:
    """``KEYS`` of ``workdir``'s newest checkpoint sampled by ``sampler`` at ``nfe``
    (``extra``: the flags the run was trained with beyond ``config``; ``options``: sampler
    flags, part of the cache key)."""
    key = f"{workdir}|{sampler}|{nfe}|{seed}" + "".join(f"|{o}" for o in options)
    if key not in cache:
        main_cli(f"--config={config}", f"--workdir={workdir}", "--mode=eval",
                 f"--config.sampling.sampler={sampler}", f"--config.sampling.num_steps={nfe}",
                 f"--config.sampling.seed={seed}", *extra, *options)
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
    parser.add_argument("--teacher_dir", action="append", default=[], metavar="KIND=DIR",
                        help="a finished run as the teacher of kind KIND (flow, edm; default: "
                             "train one in WORKDIR/teacher_KIND, flow's in WORKDIR/teacher)")
    parser.add_argument("--methods", default="reflow,reflow_distill")
    parser.add_argument("--student_steps", type=int, default=1000)
    parser.add_argument("--round_steps", type=int, default=300,
                        help="progressive: training steps of each round")
    parser.add_argument("--couplings", type=int, default=2048)
    parser.add_argument("--distill_ks", default="1,2")
    parser.add_argument("--distill_steps", type=int, default=500)
    parser.add_argument("--distill_lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=1, help="config.sampling.seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override of the teachers trained here and of every "
                             "student, in training and evaluation (eval.num_samples=64); "
                             "repeatable")
    args = parser.parse_args()
    sets = tuple(f"--config.{kv}" for kv in args.set)
    for name in (TEACHER, "configs/shapes_distill.py:reflow"):
        try:  # a bad --set key or value fails here, before any compute
            config_loading.load(os.path.join(REPO, name), list(args.set), lock=False)
        except ConfigError as e:
            parser.error(f"--set: {e}")
    methods = args.methods.split(",") if args.methods else []
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid choices: {', '.join(METHODS)}")
    ks = [int(k) for k in args.distill_ks.split(",")] if args.distill_ks else []
    if not set(ks) <= set(NFES):
        parser.error(f"--distill_ks={args.distill_ks}: each k one of {NFES}")
    if "reflow_distill" in methods and "reflow" not in methods:
        parser.error("--methods: reflow_distill starts from the reflow student; list reflow")
    given = given_teachers(parser, args, TEACHERS)
    os.makedirs(args.workdir, exist_ok=True)
    results, save = results_store(args.workdir)
    ev, rows, tdir, steps_of, run_of = results["evals"], {}, {}, {}, {}
    for kind in ["flow"] + [k for k in TEACHERS if k != "flow" and
                            any(METHODS[m][2] == k for m in methods)]:
        key = "teacher" if kind == "flow" else f"teacher_{kind}"
        tdir[kind] = os.path.abspath(given.get(kind) or os.path.join(args.workdir, key))
        if kind in given:
            results["wall_s"].setdefault(key, float("nan"))    # trained elsewhere
        if key not in results["wall_s"]:
            results["wall_s"][key] = main_cli(
                f"--config={TEACHER}", f"--workdir={tdir[kind]}", *TEACHERS[kind],
                "--config.training.eval_every=0", "--config.training.progress_bar=False",
                *sets)
            save()
        label = "" if kind == "flow" else f" {kind}"
        dpm = DPM[1] + (FLOW_DPM_RANGE if kind == "flow" else ())
        for name, sampler, nfes, options in (
                (f"teacher{label} (Heun, guided)", "heun", (32,), ()),
                (f"teacher{label} (Euler, guided)", "euler", NFES, ()),
                (f"teacher{label} (DPM-Solver++(2M), guided)", DPM[0], NFES, dpm)):
            rows[name] = {k: evaluate(TEACHER, tdir[kind], sampler, k, ev, args.seed,
                                      TEACHERS[kind] + (() if kind in given else sets),
                                      options)
                          for k in nfes}
            run_of[name] = key
        save()
        with open(os.path.join(tdir[kind], "config.json")) as f:   # what the run trained
            steps_of[key] = json.load(f)["training"]["num_steps"]
    runs = []   # (row, method, workdir, flags, steps, NFEs, teacher workdir or None)
    for method in methods:
        wd = os.path.abspath(os.path.join(args.workdir, method))
        teacher = tdir.get(METHODS[method][2])
        if method == "reflow_distill":
            start = os.path.abspath(os.path.join(args.workdir, "reflow"))
            for k in ks:
                runs.append((f"reflow_distill k={k}", method, f"{wd}_k{k}",
                             (f"--config.distill.init_from={start}",
                              f"--config.distill.reflow_steps={k}", f"--config.optim.lr="
                              f"{args.distill_lr}", "--config.optim.warmup_steps=0"),
                             args.distill_steps, (k,), teacher))
        elif method == "progressive":
            for r in range(1, len(PD_STEPS)):
                # round 1 learns the guided teacher; later rounds read that (guided) student
                # as it is (the teacher check refuses guiding it again)
                unguided = () if r == 1 else ("--config.distill.guidance_scale=1.0",
                                              "--config.distill.guidance_interval=None")
                runs.append((f"progressive, round {r} ({PD_STEPS[r - 1]} -> {PD_STEPS[r]} steps)",
                             method, f"{wd}_round{r}", (f"--config.distill.round={r}", *unguided),
                             args.round_steps, (PD_STEPS[r],), teacher))
                teacher = f"{wd}_round{r}"
        else:
            runs.append((method, method, wd, (), args.student_steps, NFES, teacher))
    for name, method, wd, extra, steps, nfes, teacher in runs:
        recipe, sampler, _ = METHODS[method]
        config = f"configs/shapes_distill.py:{recipe}"
        steps_of[name], run_of[name] = steps, name
        if teacher is None:   # no teacher to read under guidance
            extra = extra + ("--config.distill.guidance_scale=1.0",
                             "--config.distill.guidance_interval=None")
        if name not in results["wall_s"]:
            results["wall_s"][name] = main_cli(
                f"--config={config}", f"--workdir={wd}",
                *([f"--config.distill.teacher={teacher}"] if teacher else []),
                f"--config.training.num_steps={steps}",
                f"--config.training.checkpoint_every={steps}",
                f"--config.distill.num_couplings={args.couplings}",
                "--config.training.progress_bar=False", *extra, *sets)
            save()
        rows[name] = {k: evaluate(config, wd, sampler, k, ev, args.seed, sets) for k in nfes}
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
        run = run_of[name]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {steps_of[run]} | {results['wall_s'][run]:.0f} |")
    text = "\n".join(lines) + "\n"
    atomic.write_text(os.path.join(args.workdir, "results.md"), text)
    # the table's numbers for experiments/few_step_plot.py: each row's scores per NFE
    results["table"] = {"rows": {name: {str(k): {key: v[key] for key in KEYS}
                                        for k, v in by_nfe.items()}
                                 for name, by_nfe in rows.items()}}
    save()
    print(text)


if __name__ == "__main__":
    main()
