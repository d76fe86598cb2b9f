"""Nearest 2x upsampling + 3x3 convolution: the upsampled map's convolution (lax) against
``diffjax.conv.upsample_conv_general_dilated`` (the same function at the low resolution, about
16/36 of the multiply-adds, on CPU), per layer and in whole training steps and sampling.

    python experiments/benchmarks/upsample_conv.py [--layers] [--steps] [--sample]
        [--models=bench_unet,shapes_t2i,shapes_autoencoder] [--step_batch=32] [--rounds=3]
        [--nsteps=4]

``--layers``: each upsampling layer shape of the bench U-Net, the t2i job and the shapes
autoencoder at batch 32, forward and forward+backward (gradients of input and kernel), ms
(median of 7 after compilation), with the largest relative difference of the outputs.
``--steps``: whole training steps at batch 32 (``train_throughput.benchmark``: the trainer's
jitted step on a fixed batch), "before" with the convolution of the upsampled map swapped back
in while it is compiled (as ``tests/test_conv_upsample.py`` does); the two compiled steps then
alternate round by round (``train_vs_torch.interleave``), medians of examples/s.
``--sample``: the bench U-Net's 20-step DPM-Solver++(2M) sampling at batch 64
(``sample_vs_torch.jax_sampler``), images/s, the same way. The default runs all three.
"""
from __future__ import annotations

import argparse
import contextlib
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

from diffjax import conv, xla_options  # noqa: E402
from diffjax.autoencoder import model as ae_model  # noqa: E402
from diffjax.models import unet as unet_model  # noqa: E402
from diffjax.models.blocks import upsample_nearest  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")
# (name, low-resolution H = W, C_in = C_out) of each upsampling convolution.
LAYERS = [("bench U-Net 8 -> 16", 8, 128), ("bench U-Net 16 -> 32", 16, 128),
          ("t2i 8 -> 16", 8, 64), ("t2i 16 -> 32", 16, 64),
          ("shapes autoencoder 8 -> 16", 8, 64), ("shapes autoencoder 16 -> 32", 16, 32)]
HOMES = (unet_model, ae_model)  # the modules whose `upsample_conv_general_dilated` is swapped


def upsampled_then_conv(lhs, rhs, window_strides, padding, **kwargs):
    """The reference: the upsampled map, then the module's convolution (lax's arithmetic)."""
    return conv.conv_general_dilated(upsample_nearest(lhs), rhs, window_strides, padding,
                                     **kwargs)


@contextlib.contextmanager
def before():
    """Networks traced inside upsample their maps first and convolve them (the code until
    2026-12-02)."""
    saved = [home.upsample_conv_general_dilated for home in HOMES]
    for home in HOMES:
        home.upsample_conv_general_dilated = upsampled_then_conv
    try:
        yield
    finally:
        for home, fn in zip(HOMES, saved):
            home.upsample_conv_general_dilated = fn


def _median_ms(fn, *args, repeats: int = 7) -> float:
    return 1e3 * _median_s(lambda: jax.block_until_ready(fn(*args)), repeats)


def layers(batch: int) -> None:
    rng = np.random.default_rng(0)
    print(f"\nUpsampling convolutions, batch {batch}, ms (median of 7):\n")
    print("| layer | C | forward: upsampled map | diffjax | speed-up | forward+backward: "
          "upsampled map | diffjax | speed-up | max rel. difference |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, hw, c in LAYERS:
        x = jnp.asarray(rng.standard_normal((batch, hw, hw, c)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((3, 3, c, c)) / (3 * np.sqrt(c)), jnp.float32)
        row = []
        outs = []
        for fn in (upsampled_then_conv, conv.upsample_conv_general_dilated):
            f = lambda x, k, fn=fn: fn(x, k, (1, 1), "SAME", dimension_numbers=NHWC)  # noqa: E731
            fwd = xla_options.jit(f)
            both = xla_options.jit(jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) ** 2), (0, 1)))
            outs.append(fwd(x, k))
            row.append((_median_ms(fwd, x, k), _median_ms(both, x, k)))
        diff = float(jnp.max(jnp.abs(outs[0] - outs[1])) / jnp.max(jnp.abs(outs[0])))
        (f0, b0), (f1, b1) = row
        print(f"| {name} | {c} | {f0:.1f} | {f1:.1f} | {f0 / f1:.2f}x | {b0:.1f} | {b1:.1f} | "
              f"{b0 / b1:.2f}x | {diff:.1e} |", flush=True)


def steps(models: list[str], batch: int, rounds: int, nsteps: int) -> None:
    rows = []
    for name in models:
        # Each arm traced and compiled inside its context: its convolution.
        rates = compare_steps(name, batch, {"before": before, "after": contextlib.nullcontext},
                              nsteps, rounds)
        print(f"  {name}: {rates}", flush=True)
        rows.append((name, *(statistics.median(rates[arm]) for arm in ("before", "after"))))
    print(f"\nWhole training steps (batch {batch or 'of the config'}), {rounds} alternated "
          f"rounds of {nsteps} steps, medians:\n")
    print("| config | upsampled map, ex/s | diffjax, ex/s | speed-up |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")


def sample(rounds: int, batch: int = 64) -> None:
    runners = {}
    for arm, patch in (("before", before), ("after", contextlib.nullcontext)):
        with patch():
            run = jax_sampler(batch, 20)["run"]
        runners[arm] = lambda n, run=run: [run() for _ in range(n)]
    rates = interleave(runners, batch, 1, rounds)
    print(f"  sampling: {rates}")
    med = {arm: statistics.median(r) for arm, r in rates.items()}
    print(f"\nbench U-Net, 20-step DPM-Solver++(2M), batch {batch}, {rounds} alternated "
          f"rounds, medians: upsampled map {med['before']:.2f} images/s, diffjax "
          f"{med['after']:.2f} ({med['after'] / med['before']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true")
    parser.add_argument("--steps", action="store_true")
    parser.add_argument("--sample", action="store_true")
    parser.add_argument("--models", default="bench_unet,shapes_t2i,shapes_autoencoder")
    parser.add_argument("--batch", type=int, default=32, help="--layers' batch")
    parser.add_argument("--step_batch", type=int, default=32,
                        help="--steps' batch (0: each config's own)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nsteps", type=int, default=4, help="timed steps per round")
    args = parser.parse_args()
    everything = not (args.layers or args.steps or args.sample)
    print(train_throughput.machine())
    if args.layers or everything:
        layers(args.batch)
    if args.steps or everything:
        steps([m for m in args.models.split(",") if m], args.step_batch, args.rounds,
              args.nsteps)
    if args.sample or everything:
        sample(args.rounds)


if __name__ == "__main__":
    main()
