"""3x3 convolutions by Winograd's F(4, 3) along the height (``diffjax.winograd``) against lax's
direct convolution: per layer (forward), in whole sampling programs, in whole training steps.

    python experiments/benchmarks/winograd.py [--layers] [--sample] [--steps]
        [--models=bench_unet,shapes_t2i] [--rounds=3] [--nsteps=4] [--micro_batch=0]

``--layers``: each 3x3 convolution shape of the bench U-Net at batch 64 (the sampling
benchmark's batch), forward only, ms (median of 7 after compilation), with the largest
difference of the outputs relative to their largest value.
``--sample``: the bench U-Net's 20-step DPM-Solver++(2M) sampling at batch 64
(``sample_vs_torch.jax_sampler``, the samplers' compiled program), images/s, compiled under
``diffjax.conv.forward("lax")`` and under the default choice (``"auto"``: Winograd in
sampling programs); the two alternate round by round (``train_vs_torch.interleave``), medians.
``--steps``: whole training steps at batch 32 (``train_throughput.benchmark``), lax's
convolutions (the default in training) against ``forward("winograd")``, the same way.
The default runs all three.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
import train_throughput  # noqa: E402
from cpu_ceiling import _median_s  # noqa: E402
from sample_vs_torch import jax_sampler  # noqa: E402
from train_vs_torch import compare_steps, interleave  # noqa: E402

from diffjax import conv, winograd, xla_options  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")
# (H = W, C_in, C_out) of the bench U-Net's 3x3 stride-1 convolutions (conv_in's aside).
LAYERS = [(32, 64, 64), (32, 128, 64), (32, 192, 64), (16, 64, 128), (16, 128, 128),
          (16, 192, 128), (16, 256, 128), (8, 128, 128), (8, 256, 128), (32, 64, 3)]


def layers(batch: int) -> None:
    rng = np.random.default_rng(0)
    print(f"\n3x3 convolutions, forward, batch {batch}, ms (median of 7):\n")
    print("| map | C_in -> C_out | lax | Winograd F(4, 3) | speed-up | max rel. difference |")
    print("|---|---|---:|---:|---:|---:|")
    direct = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "SAME", dimension_numbers=NHWC)
    for hw, ci, co in LAYERS:
        x = jnp.asarray(rng.standard_normal((batch, hw, hw, ci)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((3, 3, ci, co)) / np.sqrt(9 * ci), jnp.float32)
        fns = [xla_options.jit(direct), xla_options.jit(winograd.conv3x3)]
        outs = [f(x, k) for f in fns]
        ms = [1e3 * _median_s(lambda f=f: jax.block_until_ready(f(x, k)), 7) for f in fns]
        diff = float(jnp.max(jnp.abs(outs[0] - outs[1])) / jnp.max(jnp.abs(outs[0])))
        print(f"| {hw}x{hw} | {ci} -> {co} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[0] / ms[1]:.2f}x "
              f"| {diff:.1e} |", flush=True)


def sample(rounds: int, micro_batch: int, batch: int = 64) -> None:
    runners = {}
    for arm in ("lax", "auto"):
        with conv.forward(arm):  # read when the sampler is traced (compiled here)
            run = jax_sampler(batch, 20, micro_batch=micro_batch)["run"]
        runners[arm] = lambda n, run=run: [run() for _ in range(n)]
    rates = interleave(runners, batch, 1, rounds)
    print(f"  sampling: {rates}")
    med = {arm: statistics.median(r) for arm, r in rates.items()}
    print(f"\nbench U-Net, 20-step DPM-Solver++(2M), batch {batch}"
          + (f" ({micro_batch} rows at a time)" if micro_batch else "")
          + f", {rounds} alternated rounds, medians: lax {med['lax']:.2f} images/s, "
          f"Winograd (the default) {med['auto']:.2f} ({med['auto'] / med['lax']:.2f}x)")


def steps(models: list[str], batch: int, rounds: int, nsteps: int) -> None:
    rows = []
    for name in models:
        rates = compare_steps(name, batch, {arm: functools.partial(conv.forward, arm)
                                            for arm in ("lax", "winograd")}, nsteps, rounds)
        print(f"  {name}: {rates}", flush=True)
        rows.append((name, *(statistics.median(rates[arm]) for arm in ("lax", "winograd"))))
    print(f"\nWhole training steps (batch {batch}), {rounds} alternated rounds of {nsteps} "
          "steps, medians:\n")
    print("| config | lax (the default in training), ex/s | Winograd forward, ex/s | ratio |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true")
    parser.add_argument("--sample", action="store_true")
    parser.add_argument("--steps", action="store_true")
    parser.add_argument("--models", default="bench_unet,shapes_t2i")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nsteps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--micro_batch", type=int, default=0,
                        help="--sample: rows at a time inside the program (0: all)")
    args = parser.parse_args()
    everything = not (args.layers or args.sample or args.steps)
    print(train_throughput.machine())
    if args.layers or everything:
        layers(64)
    if args.sample or everything:
        sample(args.rounds, args.micro_batch)
    if args.steps or everything:
        steps([m for m in args.models.split(",") if m], 32, args.rounds, args.nsteps)


if __name__ == "__main__":
    main()
