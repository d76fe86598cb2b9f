"""few_step: one- and few-step generation on the exact 64-d digits mixture (issue 16).

    python experiments/few_step.py --workdir=runs/few_step [--quick] [--steps=N]
        [--methods=meanflow,...] [--lr=...] [--couplings=...] [--set=model.ch=64 ...]
        [--reflow=DIR --distill_steps=1500 --distill_lr=5e-4 --distill_ks=1,2,4,8]

Data and teacher are the exact mixture ``GaussianMixture.digits()`` (training batches are its
exact samples; distillation teachers are ``analytic:digits``). Each method of
``configs/digits_distill.py`` trains through ``diffjax.train`` and is sampled with its own
sampler of ``diffjax.sample`` (``consistency``, ``mean_flow``, ``ddim`` on the progressive
student's grid, ``euler`` for reflow) at 1, 2, 4, 8 NFE; the score is the Fréchet distance in
pixel space to the mixture's exact mean and covariance, beside its floor (the same distance for
``n`` exact samples). The baseline is the exact teacher's best sampler at 1, 2, 4, 8 and 32 NFE
(the best of a few deterministic samplers, grids and paths). Writes ``workdir/results.md`` and
``results.json``; a finished method is skipped when re-run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import digits_distill  # noqa: E402
import diffjax  # noqa: E402
from diffjax import analytic, atomic, config_loading, paths, train  # noqa: E402
from diffjax.distill import reflow  # noqa: E402
from diffjax.errors import ConfigError  # noqa: E402
from diffjax.evaluate.frechet import frechet_distance  # noqa: E402

NFES = (1, 2, 4, 8)
# --methods: the recipes of configs/digits_distill.py, and reflow_distill (Liu et al.'s k-step
# distillation of the reflow student: one student per k, started from it, trained on the same
# couplings at the k-step Euler times only; config.distill.init_from / reflow_steps).
METHODS = tuple(digits_distill.RECIPES) + ("reflow_distill",)
# Consistency re-noising times (edm path, t = 1 is sigma_max) for 1, 2, 4, 8 steps.
CM_TIMES = {1: (1.0,), 2: (1.0, 0.45), 4: (1.0, 0.6, 0.45, 0.3),
            8: (1.0, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3)}
# Progressive distillation's rounds from the exact teacher: students of 8, 4, 2, 1 steps.
PD_STEPS = (16, 8, 4, 2, 1)
# The exact teacher's candidate samplers: (path, sampler, options); the best per NFE is kept.
TEACHER_SAMPLERS = [(p, s, dict(o, grid=g)) for p in ("vp_cosine", "rectified_flow")
                    for s, o in (("ddim", {}), ("dpm_solver++", {"order": 2}),
                                 ("dpm_solver++", {"order": 3}), ("unipc", {}), ("heun", {}))
                    for g in ("uniform", "logsnr", "karras")]


class MixtureBatches:
    """Exact samples of the mixture, batch ``i`` a function of ``(seed, i)``; checkpointable."""

    def __init__(self, mixture, batch_size: int, seed: int):
        self.mixture, self.batch_size, self.seed, self.index = mixture, batch_size, seed, 0
        self.sample = jax.jit(lambda k: mixture.sample(k, batch_size)[0])

    def __iter__(self):
        return self

    def __next__(self):
        x = self.sample(jax.random.fold_in(jax.random.PRNGKey(self.seed), self.index))
        self.index += 1
        return {"x": np.asarray(x), "cond": {}}

    def get_state(self) -> bytes:
        return json.dumps({"index": self.index}).encode()

    def set_state(self, state: bytes) -> None:
        self.index = json.loads(state.decode())["index"]

    def start_prefetch(self) -> None:
        pass


def fd(x, mixture) -> float:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if not np.all(np.isfinite(x)):
        return float("nan")
    return float(frechet_distance(x.mean(0), np.cov(x.T), mixture.mean(), mixture.covariance()))


def samples(config, setup, params, nfe: int, n: int, key):
    """``(x, nfe)`` by the student's sampler (``config.sampling.sampler``) at ``nfe``."""
    den, path = setup.denoiser, setup.denoiser.path
    sampler, options = config.sampling.sampler, {}
    if sampler == "consistency":
        options["grid"] = np.append(CM_TIMES[nfe], 0.0)
    if sampler == "ddim":  # the student's grid t_max i / n, i = n..1, then x0_hat
        options["denoise_to_zero"] = True
        if nfe > 1:  # one step: x0_hat at t_max, the default grid of 0 intervals
            options["grid"] = path.t_max * np.arange(nfe, 0, -1) / nfe
    x, info = diffjax.sample(den.fn, path, (n,) + tuple(setup.data_info.shape), key,
                             target=den.target, sampler=sampler, num_steps=nfe, params=params,
                             return_info=True, **options)
    return x, info.nfe


def teacher_best(mixture, nfe: int, n: int) -> dict:
    """The exact teacher's best (lowest FD) candidate sampler at ``nfe``."""
    best = {"fd": float("inf")}
    for path_name, sampler, options in TEACHER_SAMPLERS:
        kw = {"t_max": 0.999, "t_min": 1e-3} if path_name == "rectified_flow" else {}
        path = paths.get(path_name, **kw)
        try:
            x = diffjax.sample(mixture.model_fn(path, "x0"), path,
                               (n,) + mixture.event_shape, jax.random.PRNGKey(1), target="x0",
                               sampler=sampler, num_steps=nfe, **options)
        except ValueError:  # e.g. heun with 1 NFE, order 3 without enough steps
            continue
        score = fd(x, mixture)
        if score < best["fd"]:
            best = {"fd": score, "nfe": nfe, "sampler": f"{sampler} {options} on {path_name}"}
    return best


def method_config(method: str, overrides=()):
    """``configs/digits_distill.py:<method>`` with ``--set`` overrides (``model.ch=64``)."""
    return config_loading.load(os.path.join(REPO, "configs", f"digits_distill.py:{method}"),
                               list(overrides), lock=False)


def straightness(reflow_dir: str, mixture, n: int, overrides=(), num_steps: int = 32) -> dict:
    """Liu et al.'s straightness of the exact teacher's ODE and of the reflowed flow, from the
    same ``n`` noises (Euler, ``num_steps`` evaluations)."""
    from diffjax.training.loop import restore_for_inference
    config = method_config("reflow", overrides)
    setup, state, _ = restore_for_inference(config, reflow_dir)
    path = setup.denoiser.path
    x1 = jax.random.normal(jax.random.PRNGKey(2), (n,) + mixture.event_shape)
    teacher = mixture.model_fn(path, "velocity")
    student = lambda x, t: setup.denoiser.fn(state.ema_params, x, t)  # noqa: E731
    return {"teacher": float(reflow.straightness(teacher, x1, num_steps)),
            "reflowed": float(reflow.straightness(student, x1, num_steps))}


def runs_of(method: str, args) -> list:
    """``(workdir suffix, config.distill keys, steps, peak lr, NFEs scored)`` of each run of
    ``method``: progressive's rounds, reflow_distill's one student per k, else one run."""
    if method == "progressive":
        return [(f"_round{r}", dict(steps=PD_STEPS, round=r), args.steps, args.lr,
                 (PD_STEPS[r],)) for r in range(1, len(PD_STEPS))]
    if method == "reflow_distill":
        start = os.path.abspath(args.reflow or os.path.join(args.workdir, "reflow"))
        return [(f"_k{k}", dict(init_from=start, reflow_steps=k), args.distill_steps,
                 args.distill_lr or args.lr, (k,))
                for k in (int(k) for k in args.distill_ks.split(","))]
    return [("", {}, args.steps, args.lr, NFES)]


def train_method(method: str, args, mixture, n: int) -> dict:
    """Trains ``method`` (each of its runs) and scores its samples at its NFEs."""
    from diffjax.training.setup import build
    t0 = time.perf_counter()
    teacher, row, total = "analytic:digits", {}, 0
    recipe = "reflow" if method == "reflow_distill" else method
    for suffix, extra, steps, lr, nfes in runs_of(method, args):
        wd = os.path.join(args.workdir, method + suffix)
        if method == "progressive":
            extra["teacher"] = teacher
        config = method_config(recipe, args.set)
        config.training.num_steps = steps
        config.training.checkpoint_every = steps
        config.training.progress_bar = False
        config.training.log_every = max(1, steps // 4)
        if lr:
            config.optim.lr = lr
        if recipe == "reflow" and args.couplings:
            config.distill.num_couplings = args.couplings
        for k, v in extra.items():
            config.distill[k] = v
        state = train.train(config, wd, batches_fn=lambda c, i, m: MixtureBatches(
            mixture, c.data.batch_size, c.seed))
        setup = build(config)
        teacher, total = wd, total + steps
        for nfe in nfes:
            x, used = samples(config, setup, state.ema_params, nfe, n, jax.random.PRNGKey(1))
            row[str(used)] = fd(x, mixture)
    return {"fd_by_nfe": row, "train_steps": total, "wall_s": time.perf_counter() - t0}


def table(results: dict, methods, n: int) -> str:
    floor = results["floor"]["fd"]
    cell = lambda v: f"{v:.3f} ({v / floor:.2f}x)"  # noqa: E731
    lines = [f"FD to the exact digits mixture (pixel space), n={n}; floor {floor:.3f}", "",
             "| method | NFE 1 | NFE 2 | NFE 4 | NFE 8 | train steps | wall s |",
             "|---|---|---|---|---|---|---|"]
    tb = [results.get(f"teacher_best_{k}") for k in NFES]
    lines.append("| exact teacher, best sampler | " + " | ".join(
        cell(r["fd"]) if r else "-" for r in tb) + " | - | - |")
    for method in methods:
        if method in results:
            r = results[method]
            cells = [cell(r["fd_by_nfe"][str(k)]) if str(k) in r["fd_by_nfe"] else "-"
                     for k in NFES]
            lines.append(f"| {method} | " + " | ".join(cells) +
                         f" | {r['train_steps']} | {r['wall_s']:.0f} |")
    lines.append("")
    for k in NFES + (32,):
        r = results.get(f"teacher_best_{k}")
        if r:
            lines.append(f"* exact teacher at {k} NFE: {cell(r['fd'])}, {r['sampler']}")
    if "straightness" in results:
        st = results["straightness"]
        lines += ["", f"straightness (Liu et al.): exact teacher {st['teacher']:.4f}, "
                  f"reflowed {st['reflowed']:.4f}"]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=0, help="training steps per run")
    parser.add_argument("--lr", type=float, default=0.0, help="peak learning rate override")
    parser.add_argument("--couplings", type=int, default=0, help="reflow's coupling count")
    parser.add_argument("--methods", default="meanflow,shortcut,consistency_distillation,"
                        "reflow,consistency_training,progressive")
    parser.add_argument("--reflow", default=None,
                        help="reflow_distill: the reflowed run it starts from (default: "
                             "WORKDIR/reflow)")
    parser.add_argument("--distill_steps", type=int, default=1500,
                        help="reflow_distill: training steps of each k-step student")
    parser.add_argument("--distill_ks", default="1,2,4,8",
                        help="reflow_distill: the step counts k, one student each")
    parser.add_argument("--distill_lr", type=float, default=5e-4,
                        help="reflow_distill: peak learning rate")
    parser.add_argument("--no-teacher", action="store_true", help="skip the teacher's rows")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override of every method, as on the command line "
                             "(model.ch=64, data.batch_size=256); repeatable")
    args = parser.parse_args()
    for method in args.methods.split(","):
        if method not in METHODS:
            parser.error(f"--methods: unknown {method!r}; valid choices: {', '.join(METHODS)}")
        try:  # a bad --set key or value fails here, before any compute
            method_config("reflow" if method == "reflow_distill" else method, args.set)
        except ConfigError as e:
            parser.error(f"--set: {e}")
    if not set(args.distill_ks.split(",")) <= {str(k) for k in NFES}:
        parser.error(f"--distill_ks={args.distill_ks}: each k one of {NFES}")
    args.steps = args.steps or (300 if args.quick else 3000)
    n = 500 if args.quick else 2000
    methods = args.methods.split(",")
    mixture = analytic.GaussianMixture.digits()
    os.makedirs(args.workdir, exist_ok=True)
    out = os.path.join(args.workdir, "results.json")
    results = json.load(open(out)) if os.path.exists(out) else {}
    settings = {"n": n, "steps": args.steps, "couplings": args.couplings, "lr": args.lr,
                "set": args.set}
    if results.setdefault("settings", settings) != settings:
        parser.error(f"{out} holds results of other settings {results['settings']} than "
                     f"{settings}; use another --workdir")
    results["floor"] = {"fd": float(np.mean([
        fd(mixture.sample(jax.random.PRNGKey(10_000 + s), n)[0], mixture) for s in range(3)]))}
    for nfe in () if args.no_teacher else NFES + (32,):
        if f"teacher_best_{nfe}" not in results:
            results[f"teacher_best_{nfe}"] = teacher_best(mixture, nfe, n)
            print(nfe, results[f"teacher_best_{nfe}"], flush=True)
            atomic.write_json(out, results, indent=2)
    for method in methods:
        if method in results:
            continue
        results[method] = train_method(method, args, mixture, n)
        if method == "reflow_distill":
            results[method]["settings"] = {"reflow": args.reflow, "steps": args.distill_steps,
                                           "lr": args.distill_lr, "ks": args.distill_ks}
        atomic.write_json(out, results, indent=2)
        print(method, results[method], flush=True)
    reflow_dir = os.path.join(args.workdir, "reflow")
    if "straightness" not in results and os.path.isdir(reflow_dir):
        results["straightness"] = straightness(reflow_dir, mixture, n, args.set)
    atomic.write_json(out, results, indent=2)
    text = table(results, methods, n)
    atomic.write_text(os.path.join(args.workdir, "results.md"), text)
    print(text)


if __name__ == "__main__":
    main()
