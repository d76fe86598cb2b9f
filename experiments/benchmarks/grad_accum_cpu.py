"""Gradient accumulation on XLA:CPU: the micro-batch loop against unrolled micro-batches.

    python experiments/benchmarks/grad_accum_cpu.py [--batch=32] [--micro_batches=2]
        [--repeats=3]

The bench U-Net's train step (configs/bench_unet.py, 6.47M parameters, the step of
train_vs_torch.py) at one batch, three ways: without accumulation, with
``optim.grad_accum_steps = --micro_batches`` as a ``lax.scan`` (``grad_accum_loop=scan``) and
unrolled (``grad_accum_loop=unroll``, CPU's ``auto``). Prints examples/s (median of
``--repeats`` one-step rounds after a warm-up step), XLA's memory analysis of each compiled
step, and the convolutions of each compiled program by their dimension labels: outside a
loop XLA:CPU rewrites every gradient convolution to ``b01f_01io->b01f``, the form its
convolution library runs; inside a loop body it leaves ``b01f_01oi->b01f`` (input gradients)
and ``f01b_i01o->01bf`` (weight gradients), which it runs as naive loops.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from experiments.benchmarks.train_vs_torch import jax_trainer, machine  # noqa: E402


def conv_forms(hlo: str) -> str:
    counts = collections.Counter(re.findall(r" convolution\(.*?dim_labels=([a-z0-9_>-]+)", hlo))
    return ", ".join(f"{n} {form}" for form, n in sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--micro_batches", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    k = args.micro_batches
    variants = [("no accumulation", {}),
                (f"{k} micro-batches, scan", dict(grad_accum_steps=k, grad_accum_loop="scan")),
                (f"{k} micro-batches, unroll", dict(grad_accum_steps=k, grad_accum_loop="unroll"))]
    rows = []
    for name, optim in variants:
        print(f"[{name}] compiling ...", flush=True)
        j = jax_trainer(args.batch, **optim)
        j["run"](1)
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            j["run"](1)
            rates.append(args.batch / (time.perf_counter() - start))
        print(f"  examples/s per round: {[round(r, 2) for r in rates]}", flush=True)
        rows.append((name, statistics.median(rates), j["memory"], j["compile_s"],
                     conv_forms(j["compiled"].as_text())))
    print(f"\n{machine()}; batch {args.batch}, median of {args.repeats} one-step rounds.\n")
    print("| step | examples/s | XLA memory | compile (s) | convolutions by dimension labels |")
    print("|---|---:|---:|---:|---|")
    for name, rate, memory, compile_s, forms in rows:
        print(f"| {name} | {rate:.2f} | {memory / 2**20:.0f} MiB | {compile_s:.0f} | {forms} |")


if __name__ == "__main__":
    main()
