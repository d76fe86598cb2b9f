"""The kernel gradient of a convolution on XLA:CPU: lax's against one matmul per kernel tap.

    python experiments/benchmarks/conv_grad.py [--layers] [--steps] [--profile]
        [--models=shapes_t2i,digits] [--batch=32] [--step_batch=0] [--rounds=2]

``--layers``: for the 3x3 and 1x1 layer shapes of the shapes_t2i and bench U-Nets, the time of
the kernel gradient alone (``jax.vjp`` in the kernel, jitted, median of 5) through
``lax.conv_general_dilated`` and through :mod:`diffjax.conv`'s per-tap matmuls
(``kernel_gradient("matmul")``), and their largest relative difference.
``--steps``: whole training steps (``train_throughput.py``'s step, compiled as the trainer
compiles it, on a fixed batch) traced with each of :data:`diffjax.conv.KERNEL_GRADIENTS`:
lax's (diffjax's default) and the matmuls (``DIFFJAX_CONV_KERNEL_GRADIENT=matmul``),
alternated round by round, medians. Both by default. ``--profile``: where a
training step's time goes under lax's kernel gradient and under the matmuls:
``jax.profiler`` over a few steps, XLA's ops summed over threads, the kernel-gradient
convolutions found by their output shape ``[C_in, k, k, C_out]`` in the compiled program.
Prints markdown tables. The single layers compile with plain ``jax.jit`` (XLA's default
options); ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE``
gives them diffjax's (``diffjax.xla_options``).
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput  # noqa: E402

from diffjax import conv  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")
# (H = W, C_in, C_out, k): the U-Nets' stride-1 layers (shapes_t2i: 32/64/64 channels at
# 32/16/8; configs/bench_unet.py: 64/128/128), the up path's concatenated inputs included.
LAYERS = [(32, 32, 32, 3), (32, 64, 64, 3), (32, 96, 32, 3), (32, 96, 32, 1), (16, 64, 64, 3),
          (16, 128, 64, 3), (8, 64, 64, 3), (32, 128, 64, 3), (32, 192, 64, 3),
          (32, 192, 64, 1), (16, 128, 128, 3), (16, 256, 128, 3), (8, 128, 128, 3)]


def _time(f, *args, repeats: int = 5) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def layers(batch: int) -> None:
    rng = np.random.default_rng(0)
    print(f"\nKernel gradient alone, batch {batch}, ms (median of 5 after compilation):\n")
    print("| H=W | C_in -> C_out | k | lax | per-tap matmuls | speed-up | max rel. difference |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for hw, cin, cout, k in LAYERS:
        x = jnp.asarray(rng.standard_normal((batch, hw, hw, cin)), jnp.float32)
        kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / (k * np.sqrt(cin)),
                             jnp.float32)
        dy = jnp.asarray(rng.standard_normal((batch, hw, hw, cout)), jnp.float32)

        def grad_k(fn):
            return jax.jit(lambda x, kernel, dy: jax.vjp(lambda k_: fn(x, k_), kernel)[1](dy)[0])

        ref = grad_k(lambda x, k_: lax.conv_general_dilated(x, k_, (1, 1), "SAME",
                                                            dimension_numbers=NHWC))
        ours = grad_k(lambda x, k_: conv.conv_general_dilated(x, k_, (1, 1), "SAME",
                                                              dimension_numbers=NHWC))
        with conv.kernel_gradient("matmul"):  # traced (at the first call) with the matmuls
            a, b = ref(x, kernel, dy), ours(x, kernel, dy)
        diff = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
        t_ref, t_ours = _time(ref, x, kernel, dy), _time(ours, x, kernel, dy)
        print(f"| {hw} | {cin} -> {cout} | {k} | {1e3 * t_ref:.1f} | {1e3 * t_ours:.1f} | "
              f"{t_ref / t_ours:.2f}x | {diff:.1e} |", flush=True)


def steps(models: list[str], batch: int, rounds: int, nsteps: int) -> None:
    rates: dict[tuple[str, str], list[float]] = {}
    sizes: dict[str, int] = {}
    for _ in range(rounds):
        for name in models:
            for kind in conv.KERNEL_GRADIENTS:
                with conv.kernel_gradient(kind):
                    row = train_throughput.benchmark(name, batch, nsteps)
                rates.setdefault((name, kind), []).append(row["examples_per_s"])
                sizes[name] = row["batch"]
                print(f"  {name} {kind}: {row['examples_per_s']:.1f} examples/s", flush=True)
    print(f"\nWhole training step, {rounds} alternated rounds of {nsteps} steps, medians:\n")
    print("| config | batch | lax's kernel gradient, ex/s | per-tap matmuls, ex/s | "
          "matmuls / lax |")
    print("|---|---:|---:|---:|---:|")
    for name in models:
        a, m = (statistics.median(rates[(name, kind)]) for kind in ("lax", "matmul"))
        print(f"| {name} | {sizes[name]} | {a:.1f} | {m:.1f} | {m / a:.2f}x |")


def _op_times(run, steps: int = 3) -> dict[str, float]:
    """Seconds per step of each XLA op (summed over threads) over ``steps`` traced steps."""
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        run(steps)
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    times: dict[str, float] = collections.defaultdict(float)
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):  # XLA:CPU's worker threads
                continue
            for event in line.events:
                if "Execute" not in event.name and "Await" not in event.name:
                    times[event.name] += event.duration_ns * 1e-9 / steps
    return times


def profile(models: list[str], batch: int) -> None:
    print("\nOp time of one training step (XLA ops summed over threads), seconds:\n")
    print("| config | kernel gradient | all ops | kernel-gradient convolutions | share | "
          "largest op (share) |")
    print("|---|---|---:|---:|---:|---|")
    for name in models:
        for kind in ("lax", "matmul"):
            with conv.kernel_gradient(kind):
                row = train_throughput.benchmark(name, batch, 1)
            shapes = dict(re.findall(r"^\s*%?([\w.-]+) = (f32\[[\d,]+\])",
                                     row["compiled"].as_text(), flags=re.M))

            def kernel_grad(op: str) -> bool:
                dims = shapes.get(op, "")[4:-1].split(",")
                return "fusion" in op and len(dims) == 4 and dims[1] == dims[2] in ("1", "3")

            times = _op_times(row["run"])
            total = sum(times.values())
            kgrad = sum(t for op, t in times.items() if kernel_grad(op))
            top, top_t = max(times.items(), key=lambda kv: kv[1])
            print(f"| {name} (batch {row['batch']}) | {kind} | {total:.2f} | {kgrad:.2f} | "
                  f"{100 * kgrad / total:.0f}% | {top} {shapes.get(top, '')} "
                  f"({100 * top_t / total:.0f}%) |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true")
    parser.add_argument("--steps", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--models", default="shapes_t2i,digits")
    parser.add_argument("--batch", type=int, default=32, help="--layers' batch")
    parser.add_argument("--step_batch", type=int, default=0,
                        help="--steps' global batch; 0 = each config's own")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nsteps", type=int, default=8, help="timed steps per round")
    args = parser.parse_args()
    both = not (args.layers or args.steps or args.profile)
    print(train_throughput.machine())
    if args.layers or both:
        layers(args.batch)
    if args.steps or both:
        steps(args.models.split(","), args.step_batch, args.rounds, args.nsteps)
    if args.profile:
        profile(args.models.split(","), args.step_batch)


if __name__ == "__main__":
    main()
