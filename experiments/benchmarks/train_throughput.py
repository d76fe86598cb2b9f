"""Training throughput of the one train step: steps/s, examples/s and achieved FLOP/s.

    python experiments/benchmarks/train_throughput.py [--models=digits,cifar10_ddpmpp]
        [--batch_size=N] [--steps=20]
    python experiments/benchmarks/train_throughput.py --models=shapes_t2i --batch_size=16
    python experiments/benchmarks/train_throughput.py --models=shapes_t2i \\
        --set=model.num_heads=4 --set='model.cross_attn_resolutions=(32,16,8)'

For each config it builds the run exactly as ``diffjax.main`` would (setup, optimizer, EMA,
data-parallel ``jax.jit`` over all local devices), times ``--steps`` steps on a fixed random
batch (the input pipeline is not measured), and reads the step's FLOPs from XLA's cost
analysis of the compiled step; ``--set KEY=VALUE`` (repeatable) overrides every config as
``--config.KEY=VALUE`` would on the command line. The device's peak is *measured*: the best
FLOP/s of a large jitted float32 matmul. Prints one markdown table.

On CPU the CIFAR-size U-Net runs at batch 8 unless ``--batch_size`` says otherwise (at its
published batch of 128 one step takes about a minute on two cores).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import parallel, train, xla_options
from diffjax.training import backends
from diffjax.training import setup as setup_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_BATCH = {"cifar10_ddpmpp": 8, "cifar10_edm": 8}


def load_config(name: str, overrides: tuple[str, ...] = ()):
    from diffjax import config_loading

    return config_loading.load(os.path.join(REPO, "configs", f"{name}.py"), overrides,
                               lock=False)


def matmul_peak(sizes=(1024, 2048, 4096), repeats: int = 5) -> float:
    """Best FLOP/s of an ``n x n`` float32 matmul over ``sizes`` (all local devices via jit)."""
    best = 0.0
    for n in sizes:
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda a: a @ a)
        f(a).block_until_ready()
        start = time.perf_counter()
        for _ in range(repeats):
            out = f(a)
        out.block_until_ready()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def step_flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


def fixed_batch_setup(config) -> tuple:
    """``(setup, mesh, state shardings, initial state, one fixed random batch)`` for a train
    step of ``config`` at its batch size."""
    from diffjax import data

    b = config.data.batch_size
    info = data.info(config.data.dataset)
    setup = train.build(config, info)
    mesh = parallel.make_mesh()
    _, shardings = train.setup_state(setup, config, mesh)
    state = jax.jit(lambda: train.init_state(setup, config.seed), out_shardings=shardings)()
    rng = np.random.default_rng(0)
    # The condition kinds the network reads (labels drawn at random; a text model gets the
    # empty prompt's token states, which cost what any prompt's do).
    cond = {k: np.asarray(v) for k, v in setup_lib.example_cond(setup, b).items()}
    if "label" in cond:
        cond["label"] = rng.integers(0, info.num_classes, b).astype(np.int32)
    batch = backends.global_batch({
        "x": rng.uniform(-1, 1, (b, *info.shape)).astype(np.float32), "cond": cond}, mesh)
    return setup, mesh, shardings, state, batch


def benchmark(name: str, batch_size: int, steps: int,
              overrides: tuple[str, ...] = ()) -> dict:
    """Times the train step of config ``name`` (with ``overrides``, ``KEY=VALUE`` strings);
    returns one table row."""
    from diffjax import data

    config = load_config(name, overrides)
    on_cpu = jax.default_backend() == "cpu"
    config.data.batch_size = batch_size or (CPU_BATCH.get(name, config.data.batch_size)
                                            if on_cpu else config.data.batch_size)
    b = config.data.batch_size
    setup, mesh, shardings, state, batch = fixed_batch_setup(config)
    step = xla_options.jit(train.make_train_step(setup),  # as the trainer compiles it
                           in_shardings=(shardings, parallel.batch_sharding(mesh)),
                           out_shardings=(shardings, parallel.replicated(mesh)),
                           donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / steps
    params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    box = [state]

    def run(n: int) -> None:
        """n more steps on the same batch, waited for (for profilers: conv_grad.py)."""
        s = box[0]
        for _ in range(n):
            s, out = compiled(s, batch)
        jax.block_until_ready((s, out))
        box[0] = s

    return dict(name=name, params=params, batch=b, shape=data.info(config.data.dataset).shape,
                compile_s=compile_s, steps_per_s=1 / seconds, examples_per_s=b / seconds,
                flops=step_flops(compiled) / seconds, compiled=compiled, run=run)


def machine() -> str:
    devices = jax.devices()
    kind = devices[0].device_kind
    if jax.default_backend() == "cpu":
        kind = f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    return f"{len(devices)} x {kind}, jax {jax.__version__}, backend {jax.default_backend()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,cifar10_ddpmpp",
                        help="comma-separated config names under configs/")
    parser.add_argument("--batch_size", type=int, default=0,
                        help="global batch; 0 = the config's (8 for CIFAR U-Nets on CPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every model, as --config.KEY=VALUE")
    args = parser.parse_args()
    if args.set:  # a bad key or value: one line, before any compute
        from diffjax import errors

        for name in args.models.split(","):
            try:
                load_config(name, tuple(args.set))
            except errors.ConfigError as e:
                parser.error(f"--set: {e}")

    peak = matmul_peak()
    rows = [benchmark(name, args.batch_size, args.steps, tuple(args.set))
            for name in args.models.split(",")]
    print(f"\nMachine: {machine()}. Measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s."
          + (f" Overrides: {' '.join(args.set)}." if args.set else "") + "\n")
    print("| config | params | batch | compile (s) | steps/s | examples/s | GFLOP/s | "
          "of matmul peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} ({'x'.join(map(str, r['shape']))}) | {r['params'] / 1e6:.2f}M | "
              f"{r['batch']} | {r['compile_s']:.0f} | {r['steps_per_s']:.2f} | "
              f"{r['examples_per_s']:.0f} | {r['flops'] / 1e9:.1f} | "
              f"{100 * r['flops'] / peak:.0f}% |")


if __name__ == "__main__":
    main()
