"""XLA:CPU's default program against the same program with diffjax's compile options
(``diffjax.xla_options``: YNNPACK for reductions only, convolutions back on XLA's own
multi-threaded ones), in one process, in alternating rounds.

    python experiments/benchmarks/xla_cpu_options.py
    python experiments/benchmarks/xla_cpu_options.py --models=shapes_t2i,bench_unet \\
        --rounds=3 --sample_batch=64

Three tables: one forward 3x3 convolution of the bench U-Net (GFLOP/s and the cores it
kept busy: CPU time over wall time); training steps of the listed configs (examples/s on a
fixed batch, the first step's loss under both programs); and the bench U-Net's 20-step
DPM-Solver++(2M) sampling (diffusers' convention, as ``sample_vs_torch.py``; images/s).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from diffjax import xla_options  # noqa: E402

BATCH = {"shapes_t2i": 32, "digits": 128, "shapes_autoencoder": 64, "bench_unet": 32}
VARIANTS = ("XLA default", "diffjax")


@contextlib.contextmanager
def xla_default():
    """Programs first compiled inside this block get XLA's default options."""
    own = xla_options.compiler_options
    xla_options.compiler_options = lambda: {}
    try:
        yield
    finally:
        xla_options.compiler_options = own


def variant(name: str):
    return xla_default() if name == "XLA default" else contextlib.nullcontext()


def timed(fn, rounds: int) -> dict:
    """``fn[v]()`` -> seconds of work, alternating the variants round by round."""
    out = {v: [] for v in fn}
    for _ in range(rounds):
        for v in fn:
            out[v].append(fn[v]())
    return out


def conv_row(rounds: int) -> list:
    b, hw, c_in, c_out = 32, 32, 128, 64
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, hw, hw, c_in)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, c_in, c_out)) / 30, jnp.float32)
    conv = lambda x, k: lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    compiled, cores = {}, {v: [] for v in VARIANTS}
    for v in VARIANTS:
        with variant(v):
            compiled[v] = xla_options.jit(conv).lower(x, k).compile()
        jax.block_until_ready(compiled[v](x, k))

    def run(v):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(5):
            jax.block_until_ready(compiled[v](x, k))
        wall = time.perf_counter() - wall
        cores[v].append((time.process_time() - cpu) / wall)
        return wall / 5

    seconds = timed({v: (lambda v=v: run(v)) for v in VARIANTS}, rounds)
    flops = 2 * b * hw * hw * c_in * c_out * 9
    diff = float(jnp.max(jnp.abs(compiled[VARIANTS[0]](x, k) - compiled[VARIANTS[1]](x, k))))
    return [f"| conv 3x3, {hw}x{hw}, {c_in} -> {c_out}, batch {b} | {v} | "
            f"{flops / statistics.median(seconds[v]) / 1e9:.0f} GFLOP/s | "
            f"{statistics.median(cores[v]):.2f} | {diff:.1e} |" for v in VARIANTS]


def train_rows(name: str, batch: int, steps: int, rounds: int) -> list:
    from experiments.benchmarks.train_throughput import fixed_batch_setup, load_config

    from diffjax import parallel, train

    config = load_config(name)
    config.data.batch_size = batch
    setup, mesh, shardings, state, batch_arrays = fixed_batch_setup(config)
    compiled, loss = {}, {}
    for v in VARIANTS:
        with variant(v):
            step = xla_options.jit(train.make_train_step(setup),
                                   in_shardings=(shardings, parallel.batch_sharding(mesh)),
                                   out_shardings=(shardings, parallel.replicated(mesh)))
            compiled[v] = step.lower(state, batch_arrays).compile()
        _, metrics = compiled[v](state, batch_arrays)
        loss[v] = float(metrics["loss"])

    def run(v):
        s, start = state, time.perf_counter()
        for _ in range(steps):
            s, metrics = compiled[v](s, batch_arrays)
        jax.block_until_ready((s, metrics))
        return (time.perf_counter() - start) / steps

    seconds = timed({v: (lambda v=v: run(v)) for v in VARIANTS}, rounds)
    rate = {v: batch / statistics.median(seconds[v]) for v in VARIANTS}
    return [f"| {name} | {batch} | {rate[VARIANTS[0]]:.1f} | {rate[VARIANTS[1]]:.1f} | "
            f"**{rate[VARIANTS[1]] / rate[VARIANTS[0]]:.2f}x** | "
            f"{loss[VARIANTS[0]]:.6f} / {loss[VARIANTS[1]]:.6f} |"]


def sample_rows(batch: int, steps: int, rounds: int) -> list:
    from experiments.benchmarks.sample_vs_torch import jax_sampler

    runs = {}
    for v in VARIANTS:
        with variant(v):
            runs[v] = jax_sampler(batch, steps)["run"]

    def run(v):
        start = time.perf_counter()
        runs[v]()
        return time.perf_counter() - start

    seconds = timed({v: (lambda v=v: run(v)) for v in VARIANTS}, rounds)
    rate = {v: batch / statistics.median(seconds[v]) for v in VARIANTS}
    return [f"| bench_unet, {steps}-step DPM-Solver++(2M) | {batch} | "
            f"{rate[VARIANTS[0]]:.2f} | {rate[VARIANTS[1]]:.2f} | "
            f"**{rate[VARIANTS[1]] / rate[VARIANTS[0]]:.2f}x** |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="shapes_t2i,digits,shapes_autoencoder,bench_unet")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample_batch", type=int, default=64)
    parser.add_argument("--sample_steps", type=int, default=20)
    parser.add_argument("--parts", default="conv,train,sample")
    args = parser.parse_args()
    if jax.default_backend() != "cpu":
        raise SystemExit("xla_cpu_options.py compares XLA:CPU programs; this JAX runs on "
                         f"{jax.default_backend()}")
    if not xla_options.compiler_options():
        raise SystemExit("diffjax adds no XLA:CPU option here (XLA_FLAGS chooses the "
                         "YNNPACK fusions, or this jaxlib lacks the option): nothing to compare")
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - {"conv", "train", "sample"})
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; valid choices: conv, train, sample")
    models = args.models.split(",") if "train" in parts else []
    bad = [m for m in models if not os.path.exists(os.path.join(REPO, "configs", f"{m}.py"))]
    if bad:
        raise SystemExit(f"--models: no configs/{bad[0]}.py")
    print(f"{os.cpu_count()} cores, jax {jax.__version__}, diffjax's options "
          f"{xla_options.compiler_options()}, {args.rounds} alternating rounds, medians\n")
    if "conv" in parts:
        print("| layer | program | GFLOP/s | cores busy | max abs. difference |\n"
              "|---|---|---:|---:|---:|")
        print("\n".join(conv_row(args.rounds)) + "\n", flush=True)
    if models:
        print("| training step | batch | XLA default, ex/s | diffjax, ex/s | speed-up | "
              "first loss (default / diffjax) |\n|---|---:|---:|---:|---:|---|", flush=True)
        for name in models:
            print("\n".join(train_rows(name, BATCH.get(name, 32), args.steps, args.rounds)),
                  flush=True)
        print()
    if "sample" in parts:
        print("| sampling | batch | XLA default, images/s | diffjax, images/s | speed-up |\n"
              "|---|---:|---:|---:|---:|")
        print("\n".join(sample_rows(args.sample_batch, args.sample_steps, args.rounds)))


if __name__ == "__main__":
    main()
