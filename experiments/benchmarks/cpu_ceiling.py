"""Where a diffjax training step spends its time on CPU, and how fast XLA:CPU's kernels run
next to PyTorch's on the same shapes (issue 18: what limits the ratio to PyTorch).

    python experiments/benchmarks/cpu_ceiling.py [--breakdown] [--layers]
        [--models=bench_unet] [--step_batch=32] [--batch=32]

``--breakdown``: ``jax.profiler`` over the jitted training step of each config of
``train_throughput`` (XLA's ops summed over its threads), each op put in one class by what its
compiled computation contains: convolution (forward, input gradient, and lax's kernel gradient;
``diffjax.conv``'s per-tap matmuls, if chosen, are matmuls), attention (ops traced inside an
attention block, matmuls and softmax), other matmuls (dense layers, kernel gradients) and
everything else (normalisation, activations, the optimiser, EMA).

``--layers``: the forward 3x3 convolutions of configs/bench_unet.py's U-Net (stride 1, SAME)
at ``--batch``: ``lax.conv_general_dilated`` (NHWC) against ``torch.nn.functional.conv2d``
(NCHW, PyTorch's default and what train_vs_torch.py runs, and channels-last), both with the
same thread count, in GFLOP/s (XLA's compiled with diffjax's options,
:mod:`diffjax.xla_options`, as the train step and the sampler are); beside them each
framework's matmul of the im2col shape ``[B H W, 9 C_in] x [9 C_in, C_out]``, the rate a
convolution written as one matmul could reach. PyTorch columns need the ``[compare]`` extra.
Prints markdown tables.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import conv_grad  # noqa: E402
from diffjax import xla_options  # noqa: E402
import train_throughput  # noqa: E402

# (H = W, C_in, C_out) of the bench U-Net's 3x3 stride-1 convolutions, up-path inputs included.
LAYERS = [(32, 3, 64), (32, 64, 64), (32, 128, 64), (32, 192, 64), (16, 64, 128),
          (16, 128, 128), (16, 256, 128), (8, 128, 128), (8, 256, 128)]
CLASSES = ("convolution", "attention", "other matmul", "everything else")


def _computations(hlo: str) -> dict[str, str]:
    """Name -> body of each computation of an HLO module's text."""
    bodies, name, lines = {}, None, []
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.-]+) \(", line)
        if head and line.rstrip().endswith("{"):
            name, lines = head.group(1), []
        elif line.startswith("}") and name is not None:
            bodies[name], name = "\n".join(lines), None
        elif name is not None:
            lines.append(line)
    return bodies


def _classify(hlo: str) -> dict[str, str]:
    """Op name -> one of :data:`CLASSES`, from the op's own line and what it calls."""
    bodies = _computations(hlo)
    classes = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.-]+) = \S+ ([\w-]+)\((.*)$", hlo, flags=re.M):
        op, kind, rest = m.groups()
        called = re.search(r"calls=%?([\w.-]+)", rest)
        body = bodies.get(called.group(1), "") if called else ""
        if kind == "convolution" or " convolution(" in body:
            classes[op] = "convolution"
        elif "/attn/" in rest or "attention" in rest:
            classes[op] = "attention"
        elif kind in ("dot", "dot_general") or " dot(" in body:
            classes[op] = "other matmul"
        else:
            classes[op] = "everything else"
    return classes


def breakdown(models: list[str], batch: int) -> None:
    print("\nOp time of one training step by class (XLA ops summed over threads; share of "
          "all ops):\n")
    print("| config | batch | examples/s | all ops, s | " + " | ".join(CLASSES) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(CLASSES))
    for name in models:
        row = train_throughput.benchmark(name, batch, 3)
        classes = _classify(row["compiled"].as_text())
        times = conv_grad._op_times(row["run"])
        total = sum(times.values())
        by = collections.Counter()
        for op, t in times.items():
            by[classes.get(op, "everything else")] += t
        cells = " | ".join(f"{by[c]:.2f} ({100 * by[c] / total:.0f}%)" for c in CLASSES)
        print(f"| {name} | {row['batch']} | {row['examples_per_s']:.1f} | {total:.2f} | "
              f"{cells} |", flush=True)


def _median_s(fn, repeats: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def layers(batch: int) -> None:
    try:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None
        print("\n(PyTorch not installed: its columns are '-'; pip install -e '.[compare]')")
    print(f"\nForward 3x3 convolution, batch {batch}, GFLOP/s (median of 15 after a warm-up; "
          f"{os.cpu_count()} threads each):\n")
    print("| H=W | C_in -> C_out | XLA conv (NHWC) | PyTorch conv (NCHW) | PyTorch conv "
          "(channels-last) | XLA im2col matmul | PyTorch im2col matmul |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    # Compiled as diffjax compiles its programs (diffjax.xla_options: YNNPACK for reductions
    # only); under a plain jax.jit this jaxlib runs the convolutions on one thread.
    conv = xla_options.jit(lambda x, k: lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=conv_grad.NHWC))
    matmul = xla_options.jit(jnp.dot)
    for hw, cin, cout in LAYERS:
        flop = 2.0 * batch * hw * hw * cin * cout * 9
        x = rng.standard_normal((batch, hw, hw, cin), np.float32)
        k = (rng.standard_normal((3, 3, cin, cout)) / (3 * np.sqrt(cin))).astype(np.float32)
        a = rng.standard_normal((batch * hw * hw, 9 * cin), np.float32)
        b = rng.standard_normal((9 * cin, cout), np.float32)
        xj, kj, aj, bj = map(jnp.asarray, (x, k, a, b))
        cells = [flop / _median_s(lambda: conv(xj, kj).block_until_ready())]
        if torch is not None:
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
            kt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
            xl = xt.to(memory_format=torch.channels_last)
            kl = kt.to(memory_format=torch.channels_last)
            at, bt = torch.from_numpy(a), torch.from_numpy(b)
            with torch.no_grad():
                diff = np.max(np.abs(torch.nn.functional.conv2d(xt, kt, padding=1).numpy()
                                     .transpose(0, 2, 3, 1) - np.asarray(conv(xj, kj))))
                assert diff < 1e-3, f"PyTorch and XLA convolutions differ by {diff}"
                cells += [flop / _median_s(lambda: torch.nn.functional.conv2d(xt, kt, padding=1)),
                          flop / _median_s(lambda: torch.nn.functional.conv2d(xl, kl, padding=1))]
        cells.append(flop / _median_s(lambda: matmul(aj, bj).block_until_ready()))
        if torch is not None:
            with torch.no_grad():
                cells.append(flop / _median_s(lambda: at @ bt))
        else:
            cells = cells[:1] + [float("nan")] * 2 + cells[1:] + [float("nan")]
        print(f"| {hw} | {cin} -> {cout} | " + " | ".join(
            "-" if np.isnan(c) else f"{c / 1e9:.0f}" for c in cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--layers", action="store_true")
    parser.add_argument("--models", default="bench_unet",
                        help="--breakdown's configs (configs/NAME.py), comma-separated")
    parser.add_argument("--step_batch", type=int, default=32,
                        help="--breakdown's global batch; 0 = each config's own")
    parser.add_argument("--batch", type=int, default=32, help="--layers' batch")
    args = parser.parse_args()
    names = sorted(f[:-3] for f in os.listdir(os.path.join(train_throughput.REPO, "configs"))
                   if f.endswith(".py"))
    unknown = [m for m in args.models.split(",") if m not in names]
    if unknown:
        parser.error(f"--models: unknown {unknown}; valid choices: {', '.join(names)}")
    both = not (args.breakdown or args.layers)
    print(train_throughput.machine())
    if args.breakdown or both:
        breakdown(args.models.split(","), args.step_batch)
    if args.layers or both:
        layers(args.batch)


if __name__ == "__main__":
    main()
