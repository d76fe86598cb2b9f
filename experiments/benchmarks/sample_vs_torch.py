"""Sampling throughput side by side: 20-step DPM-Solver++(2M), diffjax vs diffusers.

    python experiments/benchmarks/sample_vs_torch.py [--batch=64] [--steps=20] [--repeats=3]
        [--micro_batch=M]

The network is the 6.47M U-Net of configs/bench_unet.py (diffusers' ``UNet2DModel`` with the
same architecture on the torch side), at random weights: throughput does not depend on them.
diffjax samples through its evaluation path (:class:`diffjax.training.evaluation.Sampler`: the
whole ``diffjax.sample`` loop is one jitted program, parameters as arguments), with diffusers'
convention (``convention="diffusers"``: the last of the 20 evaluations is the final denoising
step to sigma = 0). diffusers runs its ``DPMSolverMultistepScheduler`` loop (order 2,
``dpmsolver++``, ``final_sigmas_type="zero"``, DDPM's linear betas) under
``torch.inference_mode``, on the same thread count. Runs alternate (``--repeats`` rounds, one
sampling of ``--batch`` images each, after a warm-up); medians of images/s are reported, with
the peak memory of the diffjax program by XLA's memory analysis. On a GPU also bfloat16 and
``torch.compile``. Needs the ``[compare]`` extra.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from experiments.benchmarks.train_vs_torch import (DIFFUSERS_UNET, T, import_torch,  # noqa: E402
                                                   load_config, machine, memory_bytes, on_gpu)


def jax_sampler(batch: int, steps: int, dtype: str = "float32", micro_batch: int = 0) -> dict:
    """diffjax's compiled sampler: ``run()`` draws one batch and waits (``micro_batch`` rows
    at a time inside the program when > 0: ``config.sampling.micro_batch``)."""
    from diffjax import data, models, train
    from diffjax.training.evaluation import Sampler

    config = load_config(batch, dtype)
    config.sampling.num_steps = steps
    config.sampling.convention = "diffusers"
    config.sampling.order = 2
    config.sampling.micro_batch = micro_batch
    setup = train.build(config, data.info(config.data.dataset))
    variables = jax.jit(lambda: setup.net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                               jnp.zeros((1,))))()
    # Zero-initialised output layers make an exactly-zero network; any weights cost the same.
    params = jax.tree_util.tree_map(lambda p: p + 0.01, variables["params"])
    sampler = Sampler(setup, config.sampling, batch)
    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = sampler._fn.lower(params, key, None, None).compile()  # no condition, no guide
    compile_s = time.perf_counter() - start

    def run() -> None:
        jax.block_until_ready(compiled(params, key, None, None))

    return dict(run=run, params=models.count_params(params), compile_s=compile_s,
                memory=memory_bytes(compiled))


def torch_sampler(batch: int, steps: int, threads: int, dtype: str = "float32",
                  compile_model: bool = False) -> dict:
    """diffusers' UNet2DModel and DPMSolverMultistepScheduler loop."""
    torch, diffusers = import_torch()
    torch.set_num_threads(threads)
    device = "cuda" if on_gpu() and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(**DIFFUSERS_UNET).to(device).eval()
    forward = torch.compile(net) if compile_model else net
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        solver_order=2, algorithm_type="dpmsolver++", final_sigmas_type="zero")
    autocast = torch.autocast(device, torch.bfloat16, enabled=dtype == "bfloat16")

    def run() -> None:
        scheduler.set_timesteps(steps)
        x = torch.randn(batch, 3, 32, 32, device=device)
        with torch.inference_mode(), autocast:
            for t in scheduler.timesteps:
                eps = forward(x, t).sample.float()
                x = scheduler.step(eps, t, x).prev_sample
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    run()
    compile_s = time.perf_counter() - start
    return dict(run=run, params=sum(p.numel() for p in net.parameters()), compile_s=compile_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="model evaluations (NFE)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--micro_batch", type=int, default=0,
                        help="diffjax: sample the batch this many rows at a time inside its "
                             "one program (config.sampling.micro_batch); 0: all at once")
    args = parser.parse_args()
    if args.micro_batch < 0:
        parser.error(f"--micro_batch={args.micro_batch} must be >= 0")
    torch, _ = import_torch()
    rows = []
    for dtype in (("float32", "bfloat16") if on_gpu() else ("float32",)):
        print(f"[{dtype}] compiling ...", flush=True)
        j = jax_sampler(args.batch, args.steps, dtype, args.micro_batch)
        peers = {"diffusers": torch_sampler(args.batch, args.steps, args.threads, dtype)}
        if on_gpu():
            peers["diffusers + torch.compile"] = torch_sampler(args.batch, args.steps,
                                                               args.threads, dtype, True)
        runners = {"diffjax": j["run"], **{name: p["run"] for name, p in peers.items()}}
        j["run"]()
        rates: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                rates[name].append(args.batch / (time.perf_counter() - start))
        print(f"  images/s per round: {rates}", flush=True)
        med = {name: statistics.median(r) for name, r in rates.items()}
        for name, p in peers.items():
            rows.append((dtype, name, j, p, med["diffjax"], med[name]))
    print(f"\n{machine()}; torch {torch.__version__} with {args.threads} threads; "
          f"{args.steps}-step DPM-Solver++(2M), batch {args.batch}"
          + (f" (diffjax {args.micro_batch} rows at a time)" if args.micro_batch else "")
          + f", {args.repeats} interleaved rounds, medians.\n")
    print("| dtype | peer | params diffjax / peer | diffjax img/s | peer img/s | ratio | "
          "diffjax program memory | diffjax compile (s) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for dtype, name, j, p, ours, theirs in rows:
        print(f"| {dtype} | {name} | {j['params']:,} / {p['params']:,} | {ours:.2f} | "
              f"{theirs:.2f} | {ours / theirs:.2f}x | {j['memory'] / 2**20:.0f} MiB | "
              f"{j['compile_s']:.0f} |")


if __name__ == "__main__":
    main()
