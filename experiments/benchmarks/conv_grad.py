"""The kernel gradient of a convolution on XLA:CPU: lax's against diffjax's (one matmul per tap).

    python experiments/benchmarks/conv_grad.py [--layers] [--steps] [--models=shapes_t2i,digits]
        [--batch=32] [--step_batch=0] [--rounds=2]

``--layers``: for the 3x3 and 1x1 layer shapes of the shapes_t2i and bench U-Nets, the time of
the kernel gradient alone (``jax.vjp`` in the kernel, jitted) through ``lax.conv_general_dilated``
and through :mod:`diffjax.models.blocks.conv`, and their largest relative difference.
``--steps``: whole training steps (``train_throughput.py``'s jitted step on a fixed batch) traced
with lax's kernel gradient (:func:`~diffjax.models.blocks.conv.lax_kernel_gradient`) and with
diffjax's, alternated round by round, medians. Both by default. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput  # noqa: E402

from diffjax.models.blocks import conv  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")
# (H = W, C_in, C_out, k): the U-Nets' stride-1 layers (shapes_t2i: 32/64/64 channels at
# 32/16/8; configs/bench_unet.py: 64/128/128), the up path's concatenated inputs included.
LAYERS = [(32, 32, 32, 3), (32, 64, 64, 3), (32, 96, 32, 3), (32, 96, 32, 1), (16, 64, 64, 3),
          (16, 128, 64, 3), (8, 64, 64, 3), (32, 128, 64, 3), (32, 192, 64, 3),
          (32, 192, 64, 1), (16, 128, 128, 3), (16, 256, 128, 3), (8, 128, 128, 3)]


def _time(f, *args, repeats: int = 5) -> float:
    jax.block_until_ready(f(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def layers(batch: int) -> None:
    rng = np.random.default_rng(0)
    print(f"\nKernel gradient alone, batch {batch}, ms (median of 5 after compilation):\n")
    print("| H=W | C_in -> C_out | k | lax | diffjax | speed-up | max rel. difference |")
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
            for kind in ("lax", "diffjax"):
                if kind == "lax":
                    with conv.lax_kernel_gradient():
                        row = train_throughput.benchmark(name, batch, nsteps)
                else:
                    row = train_throughput.benchmark(name, batch, nsteps)
                rates.setdefault((name, kind), []).append(row["examples_per_s"])
                sizes[name] = row["batch"]
                print(f"  {name} {kind}: {row['examples_per_s']:.1f} examples/s", flush=True)
    print(f"\nWhole training step, {rounds} alternated rounds of {nsteps} steps, medians:\n")
    print("| config | batch | lax kernel gradient, ex/s | diffjax's, ex/s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name in models:
        a = statistics.median(rates[(name, "lax")])
        b = statistics.median(rates[(name, "diffjax")])
        print(f"| {name} | {sizes[name]} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true")
    parser.add_argument("--steps", action="store_true")
    parser.add_argument("--models", default="shapes_t2i,digits")
    parser.add_argument("--batch", type=int, default=32, help="--layers' batch")
    parser.add_argument("--step_batch", type=int, default=0,
                        help="--steps' global batch; 0 = each config's own")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nsteps", type=int, default=8, help="timed steps per round")
    args = parser.parse_args()
    both = not (args.layers or args.steps)
    print(train_throughput.machine())
    if args.layers or both:
        layers(args.batch)
    if args.steps or both:
        steps(args.models.split(","), args.step_batch, args.rounds, args.nsteps)


if __name__ == "__main__":
    main()
