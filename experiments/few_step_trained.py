"""few_step on trained digits teachers (issue 16): students of configs/digits.py runs.

    python experiments/few_step_trained.py --workdir=runs/experiments/few_step_trained \
        [--teacher_steps=1300] [--student_steps=1000] [--round_steps=500]
        [--methods=reflow,meanflow,...] [--couplings=4096] [--teacher=DIR]
        [--teacher_dir=KIND=DIR ...] [--reflow=DIR] [--distill_steps=1000]
        [--distill_ks=1,2,4] [--distill_lr=...] [--seeds=1,2,3,4] [--set=model.ch=64 ...]

Everything goes through the command line of DESIGN §3, so each step can be re-run by hand:

1. the teachers, each on the path its students read (the teacher check refuses another):
   ``flow`` = ``python -m diffjax.main --config=configs/digits.py:flow`` (rectified flow,
   velocity; the README's main job with the flow recipe), always trained, the reference of
   the methods trained from data alone; ``vp_cosine`` = the same with
   ``--config.path.name=vp_cosine --config.model.target=v`` (progressive distillation's);
   ``edm`` = ``--config=configs/digits.py:edm`` (consistency distillation's). Each is scored
   at 30 steps with its own sampler (Heun; EDM's Heun) and at 1, 2, 4, 8 NFE with DDIM
   (Euler on the flow) and DPM-Solver++(2M);
2. each student: ``--config=configs/digits_distill.py:<method>``, with
   ``--config.distill.teacher=<its teacher's workdir>`` where it has one, scored at 1, 2, 4,
   8 NFE with its sampler. ``reflow``: couplings of the flow teacher's ODE, the student
   starting as the teacher (Liu et al.'s k-rectified flows; ``config.distill.init_from_teacher``),
   ``reflow_scratch`` from the seed; ``reflow_distill``: Liu et al.'s k-step distillation of
   the reflowed student (``--reflow``, default this workdir's ``reflow``), one student per k
   started from it (``config.distill.init_from``) and trained on the same couplings at the
   k-step Euler times only (``config.distill.reflow_steps=k``), scored at its own k;
   ``meanflow``: the flow teacher's velocity as MeanFlow's ``v``; ``shortcut`` and
   ``consistency_training``: from the data alone; ``consistency_distillation``: from the
   ``edm`` teacher; ``progressive``: rounds 16 -> 8 -> 4 -> 2 -> 1 DDIM steps (one run of
   ``--round_steps`` each, ``config.distill.round``), round 1 from the ``vp_cosine`` teacher,
   each later round from the one before and starting as it, each round scored at its own
   step count. Samplers: ``euler`` (reflow), ``mean_flow`` (MeanFlow, shortcut),
   ``consistency`` (its default re-noising grid), ``ddim`` (progressive).

Score: ``fd_classifier`` (500 samples, the in-project digits classifier) next to its
real-data floor, from ``--mode=eval`` records in each run's ``metrics.jsonl``; each row also
as a ratio to its teacher's 30-step value (the flow teacher's for the methods without one). Writes
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
from diffjax import atomic, config_loading, paths  # noqa: E402
from diffjax.config_validation import ConfigError  # noqa: E402

NFES = (1, 2, 4, 8)
# teacher kind -> (config, extra flags, its own sampler at 30 steps, its few-step samplers with
# their flags): each method's teacher shares the student's path (the teacher check refuses
# another). The few-step samplers: DDIM (Euler on the flow) and DPM-Solver++(2M), which needs
# a finite log-SNR at both ends of the rectified flow's range (there on the grid uniform in t:
# uniform in log-SNR over that range spends steps on its two ends, where little changes).
DPM = ("dpm_solver++", ("--config.sampling.order=2",))
TEACHERS = {
    "flow": ("configs/digits.py:flow", (), "heun", (
        ("euler", ()), (DPM[0], DPM[1] + ("--config.sampling.t_max=0.999",
                                          "--config.sampling.t_min=0.001",
                                          "--config.sampling.grid=uniform")))),
    "vp_cosine": ("configs/digits.py:flow",      # progressive's v model on the cosine path
                  ("--config.path.name=vp_cosine", "--config.model.target=v"), "heun",
                  (("ddim", ()), DPM)),
    "edm": ("configs/digits.py:edm", (), "edm", (("ddim", ()), DPM)),  # consistency distil.'s
}
# method -> (recipe of configs/digits_distill.py, few-step sampler, extra flags, teacher kind
# or None for a method trained from the data alone)
METHODS = {"reflow": ("reflow", "euler", (), "flow"),      # starts as the teacher (Liu et al.)
           "reflow_scratch": ("reflow", "euler", ("--config.distill.init_from_teacher=False",),
                              "flow"),
           "reflow_distill": ("reflow", "euler", (), "flow"),   # one student per k, from --reflow
           "meanflow": ("meanflow", "mean_flow", (), "flow"),   # the teacher's velocity as v
           "shortcut": ("shortcut", "mean_flow", (), None),
           "consistency_training": ("consistency_training", "consistency", (), None),
           "consistency_distillation": ("consistency_distillation", "consistency", (), "edm"),
           "progressive": ("progressive", "ddim", (), "vp_cosine")}
# Progressive distillation's rounds: round r distils PD_STEPS[r - 1] teacher DDIM steps into
# PD_STEPS[r] student steps, round 1 from the vp_cosine teacher, round r + 1 from round r.
PD_STEPS = (16, 8, 4, 2, 1)
VP_T_MAX = paths.get("vp_cosine").t_max    # the students' grids end there (t_max i / n)


def main_cli(*flags: str) -> float:
    """Runs ``python -m diffjax.main`` with ``flags``; returns its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffjax.main", *flags], cwd=REPO, check=True)
    return time.perf_counter() - t0


def evaluate(config: str, workdir: str, sampler: str, nfe: int, cache: dict,
             seeds=(1,), extra=(), options=()) -> dict:
    """fd_classifier of ``workdir``'s newest checkpoint sampled by ``sampler`` at ``nfe``
    (with the sampler flags ``options``, part of the cache key): the mean over sampling noise
    ``seeds`` (``config.sampling.seed``), and each seed's value."""
    values = []
    for seed in seeds:
        key = (f"{workdir}|{sampler}|{nfe}" + (f"|{seed}" if seed != 1 else "") +
               "".join(f"|{o}" for o in options))
        if key not in cache:
            main_cli(f"--config={config}", f"--workdir={workdir}", "--mode=eval",
                     f"--config.sampling.sampler={sampler}", f"--config.sampling.num_steps={nfe}",
                     f"--config.sampling.seed={seed}", *extra, *options)
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                record = [json.loads(line) for line in f if '"eval"' in line][-1]
            cache[key] = {k.split("/")[-1]: v for k, v in record.items()
                          if k.split("/")[-1].startswith("fd_classifier")}
        values.append(cache[key])
    return {"fd_classifier": float(np.mean([v["fd_classifier"] for v in values])),
            "fd_classifier_floor": values[0]["fd_classifier_floor"],
            "per_seed": [v["fd_classifier"] for v in values]}


def student_grid(method: str, nfe: int) -> tuple:
    """Sampler flags of ``method``'s student at ``nfe``: the progressive student's own grid
    ``t_max i / n``, ``i = n..1``, then ``x0_hat`` at ``t_max / n`` (ddim's final step; its
    NFE counts it), i.e. a uniform grid down to ``t_min = t_max / n``; none otherwise. (The
    progressive task's sampling default since; written out here, as the cache keys hold it.)"""
    if method != "progressive" or nfe == 1:   # one step: x0_hat at t_max, no interval
        return ()
    return ("--config.sampling.grid=uniform", f"--config.sampling.t_min={VP_T_MAX / nfe!r}")


def results_store(workdir: str):
    """``workdir/results.json`` (``{"evals": {}, "wall_s": {}}`` when new) and its save: each
    save first takes the entries another instance on the same workdir wrote since (ours win),
    then replaces the file atomically, so a kill mid-save leaves the previous file whole."""
    out = os.path.join(workdir, "results.json")
    results = json.load(open(out)) if os.path.exists(out) else {"evals": {}, "wall_s": {}}

    def save():
        if os.path.exists(out):
            with open(out) as f:
                disk = json.load(f)
            for part in ("evals", "wall_s"):   # in place: callers hold these dicts
                merged = {**disk.get(part, {}), **results[part]}
                results[part].clear()
                results[part].update(merged)
        atomic.write_json(out, results, indent=2)
    return results, save


def given_teachers(parser, args, kinds) -> dict[str, str]:
    """Teacher kind -> finished run from ``--teacher`` (flow's) and ``--teacher_dir KIND=DIR``;
    a bad item is a usage error."""
    given = {"flow": args.teacher} if args.teacher else {}
    for item in args.teacher_dir:
        kind, _, path = item.partition("=")
        if kind not in kinds or not os.path.isdir(path):
            parser.error(f"--teacher_dir={item!r}: expected KIND=DIR, KIND one of "
                         f"{', '.join(kinds)} and DIR a run directory")
        given[kind] = path
    if args.teacher and not os.path.isdir(args.teacher):
        parser.error(f"--teacher={args.teacher}: not a run directory")
    return given


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--teacher_steps", type=int, default=1300)
    parser.add_argument("--student_steps", type=int, default=1000)
    parser.add_argument("--round_steps", type=int, default=500,
                        help="progressive: training steps of each round")
    parser.add_argument("--methods", default="reflow")
    parser.add_argument("--couplings", type=int, default=4096,
                        help="reflow: couplings of the teacher's ODE "
                             "(config.distill.num_couplings)")
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
                        help="sampling seeds (config.sampling.seed) of every cell; a cell is "
                             "their mean (default: 1)")
    parser.add_argument("--teacher", default=None,
                        help="an existing configs/digits.py:flow run to distil (default: "
                             "train one in WORKDIR/teacher)")
    parser.add_argument("--teacher_dir", action="append", default=[], metavar="KIND=DIR",
                        help=f"an existing run as the teacher of kind KIND ({', '.join(TEACHERS)};"
                             " the one --teacher names is flow's; default: train one in "
                             "WORKDIR/teacher_KIND); repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override of the teachers trained here and of every "
                             "student, in training and evaluation (model.ch=64); repeatable")
    args = parser.parse_args()
    sets = tuple(f"--config.{kv}" for kv in args.set)
    for name in ("configs/digits.py:flow", "configs/digits_distill.py:reflow"):
        try:  # a bad --set key or value fails here, before any compute
            config_loading.load(os.path.join(REPO, name), list(args.set), lock=False)
        except ConfigError as e:
            parser.error(f"--set: {e}")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid choices: {', '.join(METHODS)}")
    if not set(args.distill_ks.split(",")) <= {str(k) for k in NFES}:
        parser.error(f"--distill_ks={args.distill_ks}: each k one of {NFES}")
    given = given_teachers(parser, args, TEACHERS)
    os.makedirs(args.workdir, exist_ok=True)
    results, save = results_store(args.workdir)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    # the teachers: flow's always (the reference of the methods without a teacher), the others
    # when a method reads them; "teacher" is flow's key (and workdir) as in earlier results
    kinds = ["flow"] + [k for k in TEACHERS if k != "flow" and
                        any(METHODS[m][3] == k for m in methods)]
    tdir, rows, ref_of, steps_of, run_of_row, vs_of_row = {}, {}, {}, {}, {}, {}
    for kind in kinds:
        key = "teacher" if kind == "flow" else f"teacher_{kind}"
        tconfig, tflags, own, few = TEACHERS[kind]
        tdir[kind] = os.path.abspath(given.get(kind) or os.path.join(args.workdir, key))
        if kind in given:
            results["wall_s"].setdefault(key, float("nan"))    # trained elsewhere
        if key not in results["wall_s"]:
            results["wall_s"][key] = main_cli(
                f"--config={tconfig}", f"--workdir={tdir[kind]}", *tflags,
                f"--config.training.num_steps={args.teacher_steps}",
                "--config.training.eval_every=0",       # evaluated below, like the students
                "--config.training.progress_bar=False", *sets)
            save()
        steps_of[key] = args.teacher_steps
        extra = tflags + (() if kind in given else sets)  # a given run keeps its config
        name = f"teacher ({kind}, {own})"
        rows[name] = {30: evaluate(tconfig, tdir[kind], own, 30, results["evals"], seeds,
                                   extra)}
        ref_of[kind] = rows[name][30]
        names = [name]
        for sampler, flags in few:
            names.append(f"teacher ({kind}, {sampler})")
            rows[names[-1]] = {k: evaluate(tconfig, tdir[kind], sampler, k, results["evals"],
                                           seeds, extra, flags) for k in NFES}
        for name in names:
            run_of_row[name], vs_of_row[name] = key, kind
        save()
    runs = []   # (row, method, workdir, extra flags, train steps, NFEs, teacher workdir)
    for method in methods:
        wd = os.path.abspath(os.path.join(args.workdir, method))
        teacher = tdir.get(METHODS[method][3])
        if method == "progressive":
            for r in range(1, len(PD_STEPS)):
                runs.append((f"progressive, round {r} ({PD_STEPS[r - 1]} -> {PD_STEPS[r]} steps)",
                             method, f"{wd}_round{r}",
                             (f"--config.distill.steps={PD_STEPS}", f"--config.distill.round={r}"),
                             args.round_steps, (PD_STEPS[r],), teacher))
                teacher = f"{wd}_round{r}"
        elif method == "reflow_distill":
            start = os.path.abspath(args.reflow or os.path.join(args.workdir, "reflow"))
            for k in (int(k) for k in args.distill_ks.split(",")):
                runs.append((f"reflow_distill k={k}", method, f"{wd}_k{k}",
                             (f"--config.distill.init_from={start}",
                              f"--config.distill.reflow_steps={k}",
                              *([f"--config.optim.lr={args.distill_lr}"]
                                if args.distill_lr else [])),
                             args.distill_steps, (k,), teacher))
        else:
            runs.append((method, method, wd, METHODS[method][2], args.student_steps, NFES,
                         teacher))
    for name, method, wd, extra, steps, nfes, teacher in runs:
        recipe, sampler, _, kind = METHODS[method]
        sconfig = f"configs/digits_distill.py:{recipe}"
        steps_of[name], run_of_row[name], vs_of_row[name] = steps, name, kind or "flow"
        if name not in results["wall_s"]:
            results["wall_s"][name] = main_cli(
                f"--config={sconfig}", f"--workdir={wd}",
                *([f"--config.distill.teacher={teacher}"] if teacher else []),
                f"--config.training.num_steps={steps}",
                f"--config.training.checkpoint_every={steps}",
                "--config.training.progress_bar=False", *extra, *sets,
                *([f"--config.distill.num_couplings={args.couplings}"]
                  if recipe == "reflow" else []))
            save()
        rows[name] = {k: evaluate(sconfig, wd, sampler, k, results["evals"], seeds, sets,
                                  student_grid(method, k)) for k in nfes}
        save()
    write_results(args, rows, ref_of, run_of_row, vs_of_row, steps_of, results["wall_s"], seeds)
    # the table's numbers for experiments/few_step_plot.py: each row's value per NFE (30 = its
    # teacher's own sampler at 30 steps) and its reference
    results["table"] = {"floor": ref_of["flow"]["fd_classifier_floor"], "rows": {
        name: {"reference": ref_of[vs_of_row[name]]["fd_classifier"],
               "fd_classifier": {str(k): v["fd_classifier"] for k, v in by_nfe.items()}}
        for name, by_nfe in rows.items()}}
    save()


def write_results(args, rows, ref_of, run_of_row, vs_of_row, steps_of, wall_s, seeds):
    """``workdir/results.md``: one row per model, cells ``value (value / reference)`` where the
    reference is the 30-NFE value of the row's teacher (flow's for the methods without one)."""
    floor = ref_of["flow"]["fd_classifier_floor"]
    lines = [f"fd_classifier (500 samples; mean over sampling seeds {args.seeds}); real-data "
             f"floor {floor:.3f}; teachers at 30 steps: " + ", ".join(
                 f"{k} {v['fd_classifier']:.3f}" for k, v in ref_of.items()) +
             ". Cells: value (value / the row's reference, its teacher's 30-step value)", "",
             "| model | reference | NFE 1 | NFE 2 | NFE 4 | NFE 8 | 30 steps | train steps "
             "| wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, by_nfe in rows.items():
        ref = ref_of[vs_of_row[name]]["fd_classifier"]
        cells = [f"{by_nfe[k]['fd_classifier']:.3f} ({by_nfe[k]['fd_classifier'] / ref:.2f}x)"
                 if k in by_nfe else "-" for k in NFES + (30,)]
        run = run_of_row[name]
        lines.append(f"| {name} | {vs_of_row[name]} | " + " | ".join(cells) +
                     f" | {steps_of[run]} | {wall_s[run]:.0f} |")
    if len(seeds) > 1:   # each seed's ratio to the reference on the same seed
        lines.append("")
        for name, by_nfe in rows.items():
            ref_seeds = ref_of[vs_of_row[name]]["per_seed"]
            for k, cell in by_nfe.items():
                if len(cell.get("per_seed", ())) == len(seeds) and k != 30:
                    lines.append(f"* {name}, NFE {k}, per seed: " + ", ".join(
                        f"{v / r:.2f}x" for v, r in zip(cell["per_seed"], ref_seeds)))
    text = "\n".join(lines) + "\n"
    atomic.write_text(os.path.join(args.workdir, "results.md"), text)
    print(text)


if __name__ == "__main__":
    main()
