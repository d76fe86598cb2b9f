"""One-command GPU benchmark: MFU, memory, sampling and DiT, one markdown table.

    python experiments/benchmarks/gpu.py OUT.md [--budget=210] [--cpu-smoke]
    sh experiments/benchmarks/gpu.sh OUT.md          # checks for a GPU first

Needs only jax (with CUDA), flax, optax and ml_collections: diffjax's networks, paths and
samplers, not its data pipeline (tensorflow_datasets, grain), so it runs in a bare CUDA image.
The train step here is the denoising step of the ``ddpm`` recipe written out (eps target,
discrete t, L_simple, Adam, EMA, state donated), which is what ``diffjax.train`` compiles for
that recipe. Parts, in order, each in its own try/except (a failure costs only its row) and
skipped once ``--budget`` seconds have passed:

1. the measured matmul peak (bfloat16 and float32, 8192^3);
2. CIFAR-10 DDPM++ (configs/cifar10_ddpmpp.py's U-Net, 62.5M) bf16 train step at batch 128:
   examples/s, MFU = XLA's FLOPs of the step / time / the measured bf16 peak, peak memory;
   then the same step with its state in the layouts XLA chooses (``Step(auto_layouts=True)``);
3. 20-step DPM-Solver++ sampling images/s of that network (bf16, batch 128);
4. DiT-B/2 on 32x32x4 latents, bf16 train step at batch 128;
5. the same CIFAR step with ``remat`` and with 4-way gradient accumulation: memory and time;
6. if torch (CUDA) and diffusers import: configs/bench_unet.py's network against diffusers
   (eager and ``torch.compile``), bf16 training at batch 128;
7. where the CIFAR step's device time goes: a ``jax.profiler`` trace of 3 steps, the GPU's
   kernels summed by kind (convolution, matmul, attention, fusion, ...) and by name, and the
   share of the step's wall time the GPU is busy (``--trace_dir`` keeps the trace and the
   optimised HLO);
8. the CIFAR step with Flax's GroupNorm and with diffjax's (which ``group_norm`` picks;
   experiments/benchmarks/group_norm.py), alternating rounds.

Memory: XLA's memory analysis of the compiled step (arguments + outputs + temporaries less
donated aliases), and on GPU the device's ``peak_bytes_in_use`` after the part.
``--cpu-smoke`` runs every part at toy sizes on CPU (to check the script, not to measure).
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental.layout import Format, Layout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from diffjax import models, paths  # noqa: E402
from experiments.benchmarks.train_vs_torch import (matmul_peak, memory_bytes,  # noqa: E402
                                                   step_flops)

# configs/cifar10_ddpmpp.py's network (Song et al. 2021, DDPM++ on CIFAR-10).
CIFAR_DDPMPP = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
                    dropout=0.1, resblock_updown=True)
# configs/bench_unet.py's network (diffusers' UNet2DModel architecture).
BENCH_UNET = dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                  num_heads=16, dropout=0.0)
SMOKE_UNET = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.1)
SMOKE_DIT = dict(size="S/2", depth=2, hidden=64, num_heads=2)


def log(message: str) -> None:
    print(f"[gpu bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def peak_device_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


class Step:
    """The ddpm recipe's train step of ``net`` on a fixed batch, compiled once, state donated.

    ``accum`` > 1 splits the batch into micro-batches whose gradients a ``lax.scan`` averages
    (what ``optim.grad_accum_steps`` does). ``auto_layouts``: the state (parameters, EMA,
    optimizer moments) lives in memory layouts XLA chooses for the step (``Layout.AUTO``)
    rather than row-major, so a convolution kernel need not be transposed to cuDNN's layout and
    its update back in every step (13% of the DDPM++ step's kernel time on an H200 went to such
    copies and transposes fused with the Adam + EMA update).
    """

    def __init__(self, net: Any, shape: tuple[int, ...], batch: int, accum: int = 1,
                 auto_layouts: bool = False):
        path = paths.get("ddpm")
        steps = 1000
        rng = np.random.default_rng(0)
        x0 = jnp.asarray(rng.uniform(-1, 1, (batch, *shape)).astype(np.float32))
        variables = jax.jit(lambda: net.init(jax.random.key(0), x0[:1], jnp.zeros((1,))))()
        params = variables["params"]
        opt = optax.adam(2e-4)

        def loss(params, x0, key):
            k_t, k_eps, k_drop = jax.random.split(key, 3)
            t = (jax.random.randint(k_t, (x0.shape[0],), 1, steps + 1) / steps).astype(jnp.float32)
            eps = jax.random.normal(k_eps, x0.shape)
            expand = lambda a: a.reshape((-1,) + (1,) * (x0.ndim - 1))  # noqa: E731
            xt = expand(path.alpha(t)) * x0 + expand(path.sigma(t)) * eps
            out = net.apply({"params": params}, xt, t, train=True, rngs={"dropout": k_drop})
            return jnp.mean((out - eps) ** 2)

        def grads_of(params, x0, key):
            if accum == 1:
                return jax.value_and_grad(loss)(params, x0, key)
            micro = x0.reshape((accum, -1) + x0.shape[1:])
            zeros = (jnp.zeros(()), jax.tree_util.tree_map(jnp.zeros_like, params))

            def body(total, xs):
                i, xb = xs
                out = jax.value_and_grad(loss)(params, xb, jax.random.fold_in(key, i))
                return jax.tree_util.tree_map(jnp.add, total, out), None

            total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
            return jax.tree_util.tree_map(lambda a: a / accum, total)

        def step(state, x0):
            params, ema, opt_state, i = state
            value, grads = grads_of(params, x0, jax.random.fold_in(jax.random.key(1), i))
            updates, opt_state = opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            ema = jax.tree_util.tree_map(lambda e, p: e + 1e-4 * (p - e), ema, params)
            return (params, ema, opt_state, i + 1), value

        self.state = (params, jax.tree_util.tree_map(jnp.copy, params), opt.init(params),
                      jnp.zeros((), jnp.int32))
        self.x0, self.batch = x0, batch
        start = time.perf_counter()
        if auto_layouts:
            auto = Format(Layout.AUTO)
            jitted = jax.jit(step, donate_argnums=0, in_shardings=(auto, None),
                             out_shardings=(auto, None))
        else:
            jitted = jax.jit(step, donate_argnums=0)
        self.compiled = jitted.lower(self.state, x0).compile()
        if auto_layouts:  # the state moves into the layouts the program takes, once
            self.state = jax.device_put(self.state, self.compiled.input_formats[0][0])
        self.compile_s = time.perf_counter() - start
        self.params = models.count_params(params)
        self.flops = step_flops(self.compiled)
        self.memory = memory_bytes(self.compiled)

    def examples_per_s(self, steps: int) -> float:
        self.state, value = self.compiled(self.state, self.x0)  # warm-up
        jax.block_until_ready(value)
        start = time.perf_counter()
        for _ in range(steps):
            self.state, value = self.compiled(self.state, self.x0)
        jax.block_until_ready((self.state, value))
        return self.batch * steps / (time.perf_counter() - start)


def _kind(kernel: str) -> str:
    """A GPU kernel's kind, from its name (cuDNN/cuBLAS/CUTLASS/XLA naming)."""
    k = kernel.lower()
    for kind, pattern in (("attention", r"fmha|flash|attention|softmax"),
                          ("convolution", r"fprop|dgrad|wgrad|implicit_gemm|convolution|cudnn"),
                          ("matmul", r"gemm|cublas|cutlass|xmma|matmul|dot|nvjet"),
                          ("reduction", r"reduce|reduction"),
                          ("rng", r"rng|threefry|philox|random"),
                          ("copy/transpose", r"copy|transpose|memcpy|memset|concat"),
                          ("fusion (elementwise)", r"fusion|loop_|input_|wrapped_")):
        if re.search(pattern, k):
            return kind
    return "other"


def kernel_times(run: Callable[[int], None], steps: int, keep: str | None = None):
    """GPU kernel time per step by kernel name, and the step's wall and GPU-busy seconds
    (``keep``: the directory the trace stays in; by default a temporary one)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trace_dir = keep or tmp
        run(1)
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        run(steps)
        wall = (time.perf_counter() - start) / steps
        jax.profiler.stop_trace()
        path = max(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                   key=os.path.getmtime)  # this trace, not an earlier one kept in the same place
        data = jax.profiler.ProfileData.from_file(path)
    times: dict[str, float] = collections.defaultdict(float)
    spans = []
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if not line.name.lower().startswith("stream"):
                continue
            for e in line.events:
                times[e.name] += e.duration_ns * 1e-9 / steps
                spans.append((e.start_ns, e.start_ns + e.duration_ns))
    busy, end = 0.0, -1.0
    for a, b in sorted(spans):  # union of the kernels' intervals, over all streams
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    return dict(times), wall, busy * 1e-9 / steps


def cudnn_conv_flops(hlo: str) -> float:
    """FLOPs of the cuDNN convolutions (forward, input and kernel gradients) in an optimised
    GPU HLO module: 2 x (the output, or for a kernel gradient the output cotangent) x window x
    the contracted channels. 0 where there are none (CPU)."""
    shapes = {m[0]: [int(d) for d in m[1].split(",") if d] for m in re.findall(
        r"^\s*(?:ROOT )?%([\w.\-]+) = \(?\w+\[([\d,]*)\]", hlo, flags=re.M)}
    total = 0.0
    for out, operands, kh, kw, kind in re.findall(
            r"= \(\w+\[([\d,]*)\][^\n]*?custom-call\(([^)]*)\), window=\{size=(\d+)x(\d+)"
            r"[^\n]*?custom_call_target=\"__cudnn\$(\w+)\"", hlo):
        a, b = (shapes.get(o.strip().lstrip("%"), [0]) for o in operands.split(",")[:2])
        if kind == "convBackwardFilter":  # operands: input [B,H,W,I], output cotangent
            total += 2 * np.prod(b) * int(kh) * int(kw) * a[-1]
        else:  # forward (input [.., I]) or input gradient (cotangent [.., O]): over a's channels
            total += 2 * np.prod([int(d) for d in out.split(",")]) * int(kh) * int(kw) * a[-1]
    return float(total)


def profile_rows(net: Any, shape, batch: int, keep: str | None, label: str,
                 peak: float | None) -> list[dict]:
    s = Step(net, shape, batch)
    rate = s.examples_per_s(10)
    if keep:
        os.makedirs(keep, exist_ok=True)
        with open(os.path.join(keep, f"{label}.hlo.txt"), "w") as f:
            f.write(s.compiled.as_text())

    def run(n):
        for _ in range(n):
            s.state, value = s.compiled(s.state, s.x0)
        jax.block_until_ready((s.state, value))

    times, wall, busy = kernel_times(run, 3, os.path.join(keep, label) if keep else None)
    total = sum(times.values())
    by_kind: dict[str, float] = collections.defaultdict(float)
    for name, t in times.items():
        by_kind[_kind(name)] += t
    rows = [step_row(f"{label}: step wall {wall * 1e3:.1f} ms, GPU busy {busy * 1e3:.1f} ms "
                     f"({100 * busy / wall:.0f}%), kernels {total * 1e3:.1f} ms in {len(times)} "
                     f"distinct", s, rate, peak)]
    rows += [dict(part=f"{label}: {kind}", throughput=f"{t * 1e3:.2f} ms/step",
                  mfu=f"{100 * t / total:.0f}% of kernel time")
             for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1])]
    conv = cudnn_conv_flops(s.compiled.as_text())
    if conv and by_kind.get("convolution"):
        rows.append(dict(part=f"{label}: convolutions, {conv / 1e12:.2f} TFLOP a step (cuDNN "
                              "calls in the optimised HLO)",
                         throughput=f"{conv / by_kind['convolution'] / 1e12:.0f} TFLOP/s"))
    for name, t in sorted(times.items(), key=lambda kv: -kv[1])[:12]:
        rows.append(dict(part=f"{label} top: {name[:90]}", throughput=f"{t * 1e3:.2f} ms/step",
                         mfu=f"{100 * t / total:.1f}%"))
    return rows


def step_row(name: str, s: Step, rate: float, peak: float | None) -> dict:
    """The table row of a compiled step ``s`` that ran at ``rate`` examples/s."""
    return dict(part=name, params=f"{s.params / 1e6:.1f}M", batch=s.batch,
                throughput=f"{rate:.1f} ex/s",
                mfu=f"{100 * s.flops * rate / s.batch / peak:.0f}%" if peak else "",
                memory=f"{s.memory / 2**20:.0f} MiB (XLA)" + device_peak(),
                compile=f"{s.compile_s:.0f} s", _flops=s.flops)


def train_row(name: str, net: Any, shape, batch: int, steps: int, peak: float | None,
              accum: int = 1, auto_layouts: bool = False) -> dict:
    s = Step(net, shape, batch, accum, auto_layouts)
    return step_row(name, s, s.examples_per_s(steps), peak)


def device_peak() -> str:
    peak = peak_device_bytes()
    return f", device peak {peak / 2**30:.1f} GiB" if peak else ""


def sample_row(name: str, net: Any, shape, batch: int, steps: int, repeats: int) -> dict:
    from diffjax import sample

    variables = jax.jit(lambda: net.init(jax.random.key(0), jnp.zeros((1, *shape)),
                                         jnp.zeros((1,))))()
    params = jax.tree_util.tree_map(lambda p: p + 0.01, variables["params"])
    fn = lambda p, x, t, cond=None: net.apply({"params": p}, x, t)  # noqa: E731
    draw = jax.jit(lambda p, key: sample(fn, paths.get("ddpm"), (batch, *shape), key,
                                         params=p, target="eps", sampler="dpm_solver++",
                                         num_steps=steps, order=2, convention="diffusers"))
    start = time.perf_counter()
    compiled = draw.lower(params, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(params, jax.random.key(1)))
    start = time.perf_counter()
    for i in range(repeats):
        out = compiled(params, jax.random.key(i))
    jax.block_until_ready(out)
    rate = batch * repeats / (time.perf_counter() - start)
    return dict(part=name, params=f"{models.count_params(params) / 1e6:.1f}M", batch=batch,
                throughput=f"{rate:.1f} img/s", mfu="",
                memory=f"{memory_bytes(compiled) / 2**20:.0f} MiB (XLA)" + device_peak(),
                compile=f"{compile_s:.0f} s")


def torch_rows(batch: int, steps: int, peak: float | None, smoke: bool) -> list[dict]:
    """configs/bench_unet.py's network, diffjax vs diffusers (eager, torch.compile), bf16."""
    from experiments.benchmarks import train_vs_torch as tv

    torch, _ = tv.import_torch()
    dtype = "float32" if smoke else "bfloat16"
    net = models.UNet(**BENCH_UNET, dtype=jnp.float32 if smoke else jnp.bfloat16)
    rows = [train_row(f"bench U-Net diffjax {dtype}", net, (32, 32, 3), batch, steps, peak)]
    for compiled in ((False,) if smoke else (False, True)):
        peer = tv.torch_trainer(batch, os.cpu_count(), dtype, compiled)
        peer["run"](1)
        start = time.perf_counter()
        peer["run"](steps)
        rate = batch * steps / (time.perf_counter() - start)
        rows.append(dict(part=f"bench U-Net diffusers {dtype}" + (" torch.compile" * compiled),
                         params=f"{peer['params'] / 1e6:.1f}M", batch=batch,
                         throughput=f"{rate:.1f} ex/s",
                         mfu=f"{100 * rows[0]['_flops'] * rate / batch / peak:.0f}%"
                         if peak else "", memory="", compile=""))
    del torch
    return rows


def parts(args) -> list[tuple[str, Callable[[], Any]]]:
    """(name, thunk) in priority order; a thunk returns one row or a list of rows."""
    smoke = args.cpu_smoke
    bf16 = jnp.float32 if smoke else jnp.bfloat16
    d = "f32" if smoke else "bf16"
    unet = SMOKE_UNET if smoke else CIFAR_DDPMPP
    batch, steps = (4, 2) if smoke else (128, 10)
    latent = (8, 8, 4) if smoke else (32, 32, 4)
    dit = SMOKE_DIT if smoke else dict(size="B/2")
    peaks: dict[str, float] = {}

    def peak_rows():
        sizes = (256,) if smoke else (4096, 8192)
        peaks["bf16"] = matmul_peak(jnp.bfloat16, sizes)
        peaks["f32"] = matmul_peak(jnp.float32, sizes)
        return [dict(part=f"matmul peak {k}", throughput=f"{v / 1e12:.1f} TFLOP/s")
                for k, v in peaks.items()]

    peak = lambda: peaks.get("bf16")  # noqa: E731  (None: the peak part did not run)
    cifar = lambda **kw: models.UNet(**{**unet, **kw}, dtype=bf16)  # noqa: E731
    return [
        ("matmul peak", peak_rows),
        ("CIFAR DDPM++ train", lambda: train_row(f"CIFAR DDPM++ {d} train", cifar(), (32, 32, 3),
                                                 batch, steps, peak())),
        ("auto layouts", lambda: train_row(f"CIFAR DDPM++ {d} train, state in XLA's layouts",
                                           cifar(), (32, 32, 3), batch, steps, peak(),
                                           auto_layouts=True)),
        ("sampling", lambda: sample_row(f"CIFAR DDPM++ {d} 20-step DPM-Solver++", cifar(),
                                        (32, 32, 3), batch, 2 if smoke else 20, 1 if smoke else 3)),
        ("DiT-B/2", lambda: train_row(f"DiT-B/2 {d} train, 32x32x4 latents",
                                      models.DiT(**dit, dtype=bf16), latent, batch, steps,
                                      peak())),
        ("remat", lambda: train_row(f"CIFAR DDPM++ {d} train, remat", cifar(remat=True),
                                    (32, 32, 3), batch, steps, peak())),
        ("grad accum", lambda: train_row(f"CIFAR DDPM++ {d} train, 4 micro-batches", cifar(),
                                         (32, 32, 3), batch, steps, peak(), accum=4)),
        ("torch peers", lambda: torch_rows(batch, steps, peak(), smoke)),
        ("profile", lambda: profile_rows(cifar(), (32, 32, 3), batch, args.trace_dir,
                                         "cifar_ddpmpp", peak())),
        ("GroupNorm", lambda: group_norm_rows(cifar, batch, steps)),
    ]


def group_norm_rows(cifar: Callable[[], Any], batch: int, steps: int) -> list[dict]:
    """The CIFAR step with Flax's GroupNorm and with diffjax's (experiments/benchmarks/
    group_norm.py), compiled once each, timed in alternating rounds."""
    from experiments.benchmarks import group_norm as gn

    rows = []
    for label, factory in (("Flax's", gn.flax_group_norm), ("diffjax's", gn.ours_group_norm)):
        with gn.using(factory):
            s = Step(cifar(), (32, 32, 3), batch)
        rows.append((label, s))
    rates: dict[str, list[float]] = {label: [] for label, _ in rows}
    for _ in range(3):
        for label, s in rows:
            rates[label].append(s.examples_per_s(steps))
    return [step_row(f"CIFAR DDPM++ train, {label} GroupNorm (median of 3)", s,
                     float(np.median(rates[label])), None) for label, s in rows]


def write_table(rows: list[dict], path: str, header: str) -> None:
    cols = ("part", "params", "batch", "throughput", "mfu", "memory", "compile")
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a partial table never replaces a finished one
    print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="markdown file to write the table to")
    parser.add_argument("--budget", type=float, default=210.0,
                        help="seconds after which the remaining parts are skipped")
    parser.add_argument("--parts", default="",
                        help="comma-separated part names to run (default: all)")
    parser.add_argument("--trace_dir", default=None,
                        help="profile: keep the trace and the optimised HLO here")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="toy sizes on CPU: checks that every part runs")
    args = parser.parse_args()
    platform = jax.devices()[0].platform
    if platform != "gpu" and not args.cpu_smoke:
        sys.exit(f"error: no GPU visible to JAX (devices: {jax.devices()}); install jax[cuda12] "
                 "or jax[cuda13], or pass --cpu-smoke to check the script on CPU")
    device = jax.devices()[0].device_kind
    header = (f"{device}, jax {jax.__version__}" + (" (--cpu-smoke: toy sizes)"
                                                    if args.cpu_smoke else ""))
    start, rows = time.perf_counter(), []
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    for name, thunk in parts(args):
        if chosen and name not in chosen:
            continue
        elapsed = time.perf_counter() - start
        if elapsed > args.budget:
            log(f"skipping {name}: {elapsed:.0f} s > budget {args.budget:.0f} s")
            rows.append(dict(part=f"{name}: skipped (budget)"))
            continue
        log(f"{name} ...")
        try:
            out = thunk()
            rows += out if isinstance(out, list) else [out]
        except Exception as e:  # noqa: BLE001  (one failed part must not lose the others)
            traceback.print_exc()
            rows.append(dict(part=f"{name}: FAILED ({type(e).__name__}: {str(e)[:120]})"))
        log(f"{name} done at {time.perf_counter() - start:.0f} s")
        write_table(rows, args.out, header)


if __name__ == "__main__":
    main()
