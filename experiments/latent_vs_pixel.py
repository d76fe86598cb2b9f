"""latent_vs_pixel: the text-to-image job in pixels against the same job in an autoencoder's
latents, at the same training budget (steps x batch), on this machine.

    python experiments/latent_vs_pixel.py --autoencoder=runs/shapes_ae \\
        --workdir=runs/experiments/latent_vs_pixel [--steps=1200] [--arms=pixel,unet,dit]
        [--pixel_run=runs/shapes_t2i]   # an existing configs/shapes_t2i.py run to reuse
    python experiments/latent_vs_pixel.py --autoencoder=runs/shapes_ae --samplers_of=dit \
        --workdir=runs/experiments/latent_vs_pixel   # that arm with every sampler
        [--log_snr_range=0.999,0.001] [--adaptive=1e-3,200]
    python experiments/latent_vs_pixel.py --autoencoder=runs/shapes_ae --curves=pixel,unet_ch128 \
        --fd_target=200   # every checkpoint of finished arms scored: time to a fixed fd_shapes
    python experiments/latent_vs_pixel.py --autoencoder=runs/shapes_ae --reconstructions

Arms: ``pixel`` = configs/shapes_t2i.py (U-Net on 32x32x3), ``unet`` / ``dit`` =
configs/shapes_latent.py's variants on the autoencoder's cached 8x8x4 latents; every arm is a
plain ``python -m diffjax.main`` run with ``training.num_steps=--steps`` and the configs'
own evaluation (``shapes_eval`` on the test captions, ``fd_shapes`` with its floor; latent
samples decoded first). Reported per arm: the train step's FLOPs per example (XLA's cost
analysis of the compiled step, the frozen encoder's share included when it runs in the step),
training time (the logged intervals' steps/s, compilation and evaluation excluded), the run's
wall time (data preparation, compilation, training, evaluation), and the metrics. Then the two probes the issue asks
for: steps/s of the latent U-Net with latents cached against encoded inside every step
(``--probe_steps`` steps each, run back to back so both see the same machine load).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from diffjax import atomic  # noqa: E402

CONFIGS = {"pixel": "configs/shapes_t2i.py:cpu", "unet": "configs/shapes_latent.py:unet",
           "dit": "configs/shapes_latent.py:dit"}


def _records(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def train_seconds(records: list[dict], upto: int | None = None) -> tuple[float, float]:
    """``(seconds, steps/s)`` of training (to step ``upto``): each logged interval's steps
    over its steps/s, the first interval (compilation) replaced by the median rate of the
    others."""
    logs = [r for r in records if "steps_per_sec" in r and (upto is None or r["step"] <= upto)]
    spans = [(b["step"] - a["step"], b["steps_per_sec"]) for a, b in zip(
        [{"step": 0}] + logs[:-1], logs)]
    rates = sorted(rate for _, rate in spans[1:]) or [spans[0][1]]
    median = rates[len(rates) // 2]
    seconds = spans[0][0] / median + sum(n / rate for n, rate in spans[1:])
    return seconds, median


def run_arm(name: str, args, workdir: str, steps: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "diffjax.main", f"--config={CONFIGS[name]}",
           f"--workdir={workdir}", f"--config.training.num_steps={steps}",
           "--config.training.progress_bar=False", f"--config.seed={args.seed}", *extra]
    if name != "pixel":
        cmd.append(f"--config.latent.autoencoder={args.autoencoder}")
    print("$ " + " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return {"wall_s": wall}


def summarize(name: str, workdir: str, wall: float | None = None) -> dict:
    records = _records(workdir)
    seconds, rate = train_seconds(records)
    evals = [r for r in records if "shapes_eval" in r]
    row = {"arm": name, "workdir": workdir, "train_s": seconds, "steps_per_s": rate,
           "steps": max(r["step"] for r in records), "wall_s": wall}
    if evals:
        row.update({k: evals[-1][k] for k in ("shapes_eval", "fd_shapes", "fd_shapes_floor")})
    row["gflop_per_example"] = step_flops(workdir) / 1e9
    return row


def step_flops(workdir: str) -> float:
    """FLOPs per example of the run's compiled train step (XLA's cost analysis)."""
    import jax
    import jax.numpy as jnp

    from diffjax import checkpoint, train
    from diffjax.training import frozen, tasks
    from diffjax.training.setup import example_cond

    config = checkpoint.load_config(workdir)
    setup = train.build(config)
    spec = tasks.for_config(config)
    references = frozen.load_all(spec.references(config))
    task = spec.build(setup, references)
    state = jax.eval_shape(lambda: train.init_state(setup, 0))
    b = int(config.data.batch_size)
    cond = jax.eval_shape(lambda: example_cond(setup, b))
    if config.get("latent") and config.latent.get("autoencoder") and config.latent.get("cache"):
        moments = jax.ShapeDtypeStruct((b, *setup.data_info.shape), jnp.float32)
        batch = {"x": moments, "x_logvar": moments, "cond": cond}
    else:
        from diffjax import data as data_lib
        pixels = data_lib.info_of(config.data).shape
        batch = {"x": jax.ShapeDtypeStruct((b, *pixels), jnp.float32), "cond": cond}
    step = jax.jit(train.make_train_step(setup, task=task))
    analysis = step.lower(state, batch, frozen.frozen_tree(references)).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"]) / b


def sampler_flags(sampler: str, args) -> list[str]:
    """What ``sampler`` needs on a rectified-flow model: the log-SNR samplers a sampled range
    where it is finite (``--log_snr_range``, the same weights); ``adaptive`` its tolerances
    and a budget (``--adaptive``: rtol=atol, at most that many evaluations)."""
    from diffjax.samplers import SAMPLERS

    if sampler == "adaptive":
        tol, budget = args.adaptive.split(",")
        return [f"--config.sampling.rtol={tol}", f"--config.sampling.atol={tol}",
                f"--config.sampling.num_steps={budget}"]
    if SAMPLERS[sampler].finite_logsnr:
        t_max, t_min = args.log_snr_range.split(",")
        return [f"--config.sampling.t_max={t_max}", f"--config.sampling.t_min={t_min}"]
    return []


def evaluate(arm: str, args, *flags: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    """``--mode=eval`` of the finished run ``arm`` (a directory under ``--workdir``) with
    ``flags``; a latent arm also gets ``--extra`` and the autoencoder. Returns the process
    and, when it succeeded, the eval record it appended to the run's metrics."""
    workdir = os.path.join(args.workdir, arm)
    cmd = [sys.executable, "-m", "diffjax.main", f"--config={CONFIGS[arm.split('_')[0]]}",
           f"--workdir={workdir}", "--mode=eval", *flags]
    if not arm.startswith("pixel"):
        cmd += [*args.extra.split(), f"--config.latent.autoencoder={args.autoencoder}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        return out, None
    return out, [r for r in _records(workdir) if r.get("mode") == "eval"][-1]


def every_sampler(arm: str, args) -> list[dict]:
    """The trained ``arm`` run evaluated with every sampler that takes its path and target
    (``--mode=eval``, ``--sampler_samples`` samples, ``--sampler_steps`` steps each); the
    few-step samplers of distilled models are left out (they need a model trained for them)."""
    from diffjax.samplers import SAMPLERS

    few_step = ("consistency", "mean_flow", "shortcut")
    rows = []
    chosen = args.samplers.split(",") if args.samplers else \
        [s for s in SAMPLERS if s not in few_step]
    for sampler in chosen:
        flags = sampler_flags(sampler, args)
        start = time.perf_counter()
        out, record = evaluate(arm, args, f"--config.sampling.sampler={sampler}",
                               f"--config.sampling.num_steps={args.sampler_steps}",
                               f"--config.eval.num_samples={args.sampler_samples}", *flags)
        row = {"sampler": sampler, "wall_s": time.perf_counter() - start, "flags": flags}
        if record is None:
            row["error"] = (out.stdout + out.stderr).strip().splitlines()[-1][:160]
        else:
            row.update({k: record[k] for k in ("shapes_eval", "fd_shapes", "fd_shapes_floor")})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def curve(arm: str, args) -> list[dict]:
    """Every checkpoint of the finished run ``arm`` (a directory under ``--workdir``) scored
    by the config's own evaluation (``--mode=eval --config.sampling.step=<step>``; the last
    step's in-run evaluation is reused), with the training seconds and FLOPs to that step."""
    workdir = os.path.join(args.workdir, arm)
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                   if d.isdigit())
    in_run = {r["step"]: r for r in _records(workdir) if "shapes_eval" in r and "mode" not in r}
    flops = step_flops(workdir) * 32  # batch 32
    rows = []
    for step in steps:
        record = in_run.get(step)
        if record is None:
            out, record = evaluate(arm, args, f"--config.sampling.step={step}")
            if record is None:
                raise SystemExit(f"{arm} step {step}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        seconds, _ = train_seconds(_records(workdir), upto=step)
        rows.append({"arm": arm, "step": step, "train_s": seconds,
                     "train_pflop": flops * step / 1e15,
                     **{k: record[k] for k in ("shapes_eval", "fd_shapes", "fd_shapes_floor")}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def reconstruction_adherence(args, n: int = 500) -> dict:
    """``shapes_eval`` per category of the first ``n`` test images, real and passed through
    the autoencoder (posterior mean, and a posterior sample as latent training sees it),
    against their captions: what of a latent model's adherence gap the autoencoder explains.
    ``args.perturb`` (stds, in the latent units the diffusion model sees): the posterior mean
    plus Gaussian noise of that std, decoded: how much a latent model's error of that size
    costs in adherence (a smoother latent space costs less)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffjax import config_loading, data as data_lib
    from diffjax.autoencoder import latent
    from diffjax.evaluate import shapes_eval
    from diffjax.text import conditioning
    from diffjax.training import frozen

    x, _ = data_lib.load_arrays("shapes", "test", limit=n)
    captions = list(conditioning.captions("shapes", "test")[:n])
    config = config_loading.load(CONFIGS["unet"],
                                 [f"--config.latent.autoencoder={args.autoencoder}"])
    reference = frozen.load(latent.KEY, latent.reference_value(config))
    latents = latent.latents_of(reference, config)
    encode, decode = jax.jit(latents.encode), jax.jit(latents.decode)
    out = {"real": shapes_eval.score(x, captions)}
    perturb = [float(s) for s in args.perturb.split(",") if s]
    runs = [("reconstructed (mean)", False, 0.0), ("reconstructed (sampled)", True, 0.0)]
    runs += [(f"mean + N(0, {s:g}^2) in latent units", False, s) for s in perturb]
    for name, sampled, noise in runs:
        images = []
        for i in range(0, n, 100):
            batch = jnp.asarray(x[i:i + 100])
            shape = jax.eval_shape(lambda b=batch: encode(reference.params, b, None)).shape
            eps = jax.random.normal(jax.random.PRNGKey(i), shape) if sampled else None
            z = encode(reference.params, batch, eps)
            if noise:
                z = z + noise * jax.random.normal(jax.random.PRNGKey(n + i), shape)
            images.append(np.asarray(decode(reference.params, z)))
        out[name] = shapes_eval.score(np.clip(np.concatenate(images), -1, 1), captions)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--autoencoder", required=True)
    parser.add_argument("--workdir", default="runs/experiments/latent_vs_pixel")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--arms", default="pixel,unet")
    parser.add_argument("--pixel_run", default=None,
                        help="reuse this finished configs/shapes_t2i.py run as the pixel arm")
    parser.add_argument("--probe_steps", type=int, default=200)
    parser.add_argument("--extra", default="",
                        help="flags for the latent arms, e.g. --config.model.ch=128")
    parser.add_argument("--suffix", default="", help="appended to the arms' workdir names")
    parser.add_argument("--seed", type=int, default=0,
                        help="config.seed of every arm (initialisation, data order, noise)")
    parser.add_argument("--samplers_of", default="",
                        help="only evaluate this finished arm (e.g. dit) with every sampler")
    parser.add_argument("--sampler_steps", type=int, default=32)
    parser.add_argument("--sampler_samples", type=int, default=200)
    parser.add_argument("--samplers", default="",
                        help="with --samplers_of: only these (comma-separated); default all")
    parser.add_argument("--reconstructions", action="store_true",
                        help="only score the autoencoder's reconstructions with shapes_eval")
    parser.add_argument("--perturb", default="",
                        help="with --reconstructions: latent noise stds to score (e.g. 0.1,0.3)")
    parser.add_argument("--curves", default="",
                        help="finished arms (e.g. pixel,unet_ch128): score every checkpoint")
    parser.add_argument("--fd_target", type=float, default=200.0,
                        help="with --curves: training seconds to reach this fd_shapes")
    parser.add_argument("--log_snr_range", default="0.999,0.001",
                        help="t_max,t_min of the samplers that need a finite log-SNR")
    parser.add_argument("--adaptive", default="1e-3,200",
                        help="rtol (= atol),budget of the adaptive sampler")
    args = parser.parse_args()
    if args.perturb and not args.reconstructions:
        parser.error("--perturb: only with --reconstructions")
    os.makedirs(args.workdir, exist_ok=True)
    if args.samplers_of:
        out = os.path.join(args.workdir, f"samplers_{args.samplers_of}{args.suffix}.json")
        if os.path.exists(out):
            raise SystemExit(f"{out} exists; choose another --suffix")
        rows = every_sampler(args.samplers_of, args)
        atomic.write_json(out, rows, indent=1)
        print(f"\n| sampler ({args.sampler_steps} steps, {args.sampler_samples} samples) | "
              "shapes_eval | fd_shapes (floor) | wall s |\n|---|---:|---|---:|")
        for r in rows:
            name = " ".join([r["sampler"], *(f.split("sampling.")[1] for f in r["flags"])])
            if "error" in r:
                print(f"| {name} | error: {r['error']} | | {r['wall_s']:.0f} |")
            else:  # "nan" (a non-finite sample) is stored as a string
                se, fd = float(r["shapes_eval"]), float(r["fd_shapes"])
                print(f"| {name} | {se:.3f} | {fd:.1f} ({float(r['fd_shapes_floor']):.2f}) "
                      f"| {r['wall_s']:.0f} |")
        return
    if args.reconstructions:
        for name, scores in reconstruction_adherence(args).items():
            print(f"{name}: " + ", ".join(f"{k.replace('shapes_eval_', '')} {v:.3f}"
                                          for k, v in scores.items()))
        return
    if args.curves:
        out = os.path.join(args.workdir, f"curves{args.suffix}.json")
        if os.path.exists(out):
            raise SystemExit(f"{out} exists; choose another --suffix")
        rows = [row for arm in args.curves.split(",") for row in curve(arm, args)]
        atomic.write_json(out, rows, indent=1)
        print("\n| arm | step | train s | train PFLOP | shapes_eval | fd_shapes |\n"
              "|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['arm']} | {r['step']} | {r['train_s']:.0f} | {r['train_pflop']:.3f} | "
                  f"{float(r['shapes_eval']):.3f} | {float(r['fd_shapes']):.1f} |")
        for arm in args.curves.split(","):
            hit = [r for r in rows if r["arm"] == arm and float(r["fd_shapes"]) <= args.fd_target]
            print(f"{arm}: fd_shapes <= {args.fd_target:g} " + (
                f"first at step {hit[0]['step']}, {hit[0]['train_s']:.0f} s of training"
                if hit else "at no checkpoint"))
        return
    rows = []
    for arm in args.arms.split(","):
        if arm == "pixel" and args.pixel_run:
            rows.append(summarize("pixel (reused run)", args.pixel_run))
            continue
        workdir = os.path.join(args.workdir, arm + args.suffix)
        if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
            raise SystemExit(f"{workdir} holds a run already; choose another --workdir")
        extra = args.extra.split() if arm != "pixel" else []
        out = run_arm(arm, args, workdir, args.steps, extra)
        rows.append(summarize(arm + args.suffix, workdir, out["wall_s"]))
        print(json.dumps(rows[-1]), flush=True)
    probes = {}
    if args.probe_steps:
        for cached in (True, False):
            workdir = os.path.join(args.workdir, f"probe_cache_{cached}{args.suffix}")
            run_arm("unet", args, workdir, args.probe_steps, [
                f"--config.latent.cache={cached}", "--config.training.eval_every=0",
                f"--config.training.log_every={max(1, args.probe_steps // 4)}",
                f"--config.training.checkpoint_every={args.probe_steps}"])
            probes[cached] = train_seconds(_records(workdir))[1]
    atomic.write_json(os.path.join(args.workdir, f"results{args.suffix}.json"),
                      {"rows": rows, "probe_steps_per_s": probes, "load": os.getloadavg()},
                      indent=1)
    print(f"\n{os.cpu_count()} cores, load average now "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; {args.steps} steps of batch 32\n")
    print("| arm | GFLOP/ex (train step) | train s | steps/s | run wall s | shapes_eval "
          "| fd_shapes (floor) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        wall = f"{r['wall_s']:.0f}" if r.get("wall_s") else "-"
        print(f"| {r['arm']} | {r['gflop_per_example']:.3g} | {r['train_s']:.0f} | "
              f"{r['steps_per_s']:.2f} | {wall} | {r.get('shapes_eval', float('nan')):.3f} "
              f"| {r.get('fd_shapes', float('nan')):.1f} ({r.get('fd_shapes_floor', float('nan')):.2f}) |")
    if probes:
        print(f"\nlatent U-Net steps/s, {args.probe_steps} steps each, back to back: latents "
              f"cached {probes[True]:.2f}, encoded in the step {probes[False]:.2f} "
              f"({probes[True] / probes[False]:.2f}x)")
    print(f"\nresults: {os.path.join(args.workdir, f'results{args.suffix}.json')}")


if __name__ == "__main__":
    main()
