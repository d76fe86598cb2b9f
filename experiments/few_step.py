"""few_step: one- and few-step generation on the exact 64-d digits mixture (issue 16).

    python experiments/few_step.py --workdir=runs/few_step [--quick] [--methods=meanflow,...]

Data and teacher are the exact mixture ``GaussianMixture.digits()`` (training batches are its
exact samples; distillation teachers are ``analytic:digits``). Each method of
``configs/digits_distill.py`` trains through ``diffjax.train`` and is sampled with its own
few-step sampler (:mod:`diffjax.distill.sampling`) at 1, 2, 4 NFE; the score is the Fréchet
distance in pixel space to the mixture's exact mean and covariance, beside its floor (the same
distance for ``n`` exact samples). The exact teacher's DDIM at the same NFE and at 32 NFE is
the baseline. Writes ``workdir/results.md`` and ``results.json``; a finished method is skipped
when re-run.
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
from diffjax import analytic, paths, train  # noqa: E402
from diffjax.distill import reflow, sampling  # noqa: E402
from diffjax.evaluate.frechet import frechet_distance  # noqa: E402

NFES = (1, 2, 4)
# Consistency sampling times (edm path, t = 1 is sigma_max) for 1, 2, 4 steps.
CM_TIMES = {1: (1.0,), 2: (1.0, 0.45), 4: (1.0, 0.6, 0.45, 0.3)}


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


def samples(method: str, setup, params, nfe: int, n: int, key):
    den, path = setup.denoiser, setup.denoiser.path
    shape = (n,) + tuple(setup.data_info.shape)
    if method in ("consistency_distillation", "consistency_training"):
        return sampling.consistency_multistep(den.fn, params, path, shape, key, CM_TIMES[nfe])
    if method == "progressive":
        return sampling.ddim(den.fn, params, path, den.target, shape, key, nfe)
    return sampling.average_velocity(den.fn, params, path, shape, key, nfe)


def straightness(reflow_dir: str, mixture, n: int, num_steps: int = 32) -> dict:
    """Liu et al.'s straightness of the exact teacher's ODE and of the reflowed flow, from the
    same ``n`` noises (Euler, ``num_steps`` evaluations)."""
    from diffjax.training.loop import restore_for_inference
    config = digits_distill.get_config("reflow")
    setup, state, _ = restore_for_inference(config, reflow_dir)
    path = setup.denoiser.path
    x1 = jax.random.normal(jax.random.PRNGKey(2), (n,) + mixture.event_shape)
    teacher = mixture.model_fn(path, "velocity")
    student = lambda x, t: setup.denoiser.fn(state.ema_params, x, t)  # noqa: E731
    return {"teacher": float(reflow.straightness(teacher, x1, num_steps)),
            "reflowed": float(reflow.straightness(student, x1, num_steps))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", default="meanflow,shortcut,consistency_distillation,"
                        "reflow,consistency_training,progressive")
    args = parser.parse_args()
    from diffjax.training.setup import build
    steps = 300 if args.quick else 3000
    n = 500 if args.quick else 2000
    mixture = analytic.GaussianMixture.digits()
    os.makedirs(args.workdir, exist_ok=True)
    out = os.path.join(args.workdir, "results.json")
    results = json.load(open(out)) if os.path.exists(out) else {}
    floor = np.mean([fd(mixture.sample(jax.random.PRNGKey(10_000 + s), n)[0], mixture)
                     for s in range(3)])
    results["floor"] = {"fd": floor}
    for path_name in ("rectified_flow",):
        path = paths.get(path_name)
        model = mixture.model_fn(path, "x0")
        for nfe in NFES + (32,):
            x, _ = sampling.ddim(lambda p, x, t, c: model(x, t), None, path, "x0",
                                 (n,) + mixture.event_shape, jax.random.PRNGKey(1), nfe)
            results[f"teacher_ddim_{nfe}"] = {"fd": fd(x, mixture), "nfe": nfe}
    for method in args.methods.split(","):
        if method in results:
            continue
        t0 = time.perf_counter()
        rounds = [dict(steps=(8, 4, 2, 1), round=r) for r in (1, 2, 3)] \
            if method == "progressive" else [{}]
        teacher, row = "analytic:digits", {}
        for extra in rounds:
            wd = os.path.join(args.workdir, method + (f"_round{extra['round']}" if extra else ""))
            if method == "progressive":
                extra["teacher"] = teacher
            config = digits_distill.get_config(method)
            config.training.num_steps = steps
            config.training.checkpoint_every = steps
            config.training.progress_bar = False
            config.training.log_every = max(1, steps // 4)
            for k, v in extra.items():
                config.distill[k] = v
            state = train.train(config, wd, batches_fn=lambda c, i, m: MixtureBatches(
                mixture, c.data.batch_size, c.seed))
            setup = build(config)
            teacher = wd
            nfes = (extra["steps"][extra["round"]],) if method == "progressive" else NFES
            for nfe in nfes:
                x, used = samples(method, setup, state.ema_params, nfe, n, jax.random.PRNGKey(1))
                row[str(used)] = fd(x, mixture)
        results[method] = {"fd_by_nfe": row, "train_steps": steps * len(rounds),
                           "wall_s": time.perf_counter() - t0}
        json.dump(results, open(out, "w"), indent=2)
        print(method, results[method], flush=True)
    reflow_dir = os.path.join(args.workdir, "reflow")
    if "straightness" not in results and os.path.isdir(reflow_dir):
        results["straightness"] = straightness(reflow_dir, mixture, n)
    json.dump(results, open(out, "w"), indent=2)
    lines = [f"FD to the exact digits mixture (pixel space), n={n}; floor {floor:.3f}", "",
             "| method | NFE 1 | NFE 2 | NFE 4 | train steps | wall s |", "|---|---|---|---|---|---|"]
    lines.append("| exact teacher, DDIM | " + " | ".join(
        f"{results[f'teacher_ddim_{k}']['fd']:.3f}" for k in NFES) +
        f" | (32 NFE: {results['teacher_ddim_32']['fd']:.3f}) | |")
    for method in args.methods.split(","):
        if method in results:
            r = results[method]
            cells = [f"{r['fd_by_nfe'][str(k)]:.3f}" if str(k) in r["fd_by_nfe"] else "-"
                     for k in NFES]
            lines.append(f"| {method} | " + " | ".join(cells) +
                         f" | {r['train_steps']} | {r['wall_s']:.0f} |")
    if "straightness" in results:
        st = results["straightness"]
        lines += ["", f"straightness (Liu et al.): exact teacher {st['teacher']:.4f}, "
                  f"reflowed {st['reflowed']:.4f}"]
    open(os.path.join(args.workdir, "results.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
