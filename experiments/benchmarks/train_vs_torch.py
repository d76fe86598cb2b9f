"""Training throughput side by side: diffjax vs PyTorch/diffusers on the same 6.47M U-Net.

    python experiments/benchmarks/train_vs_torch.py [--batches=32,128] [--repeats=5]
        [--steps=3] [--threads=N] [--micro_batch=M]

Both sides train diffusers' ``UNet2DModel`` architecture (configs/bench_unet.py; the parameter
counts are printed) with the same step: DDPM's eps-prediction loss (linear betas, T = 1000,
uniform integer t, L_simple), Adam at lr 2e-4 and an EMA of the weights (decay 0.9999). diffjax
runs its own train step (``diffjax.train.make_train_step``, jitted, state donated); PyTorch runs
the textbook loop (``zero_grad`` / ``backward`` / ``Adam.step`` / ``_foreach_lerp_`` EMA), on
the same thread count. The two are timed in alternation (``--repeats`` rounds of ``--steps``
steps each, after one warm-up step) and the medians reported, so load on a shared machine hits
both alike.

On CPU: float32. On a GPU (``jax.devices()[0].platform == "gpu"``, torch CUDA present) also
bfloat16 (diffjax ``model.dtype=bfloat16``; torch autocast), torch additionally with
``torch.compile``, and the MFU of each against the device's measured matmul peak in that dtype.
Peak memory of the diffjax step: XLA's memory analysis of the compiled step (CPU) or the
device's ``peak_bytes_in_use`` (GPU). Needs the ``[compare]`` extra (torch, diffusers).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


# diffusers' UNet2DModel with the architecture of configs/bench_unet.py.
DIFFUSERS_UNET = dict(sample_size=32, in_channels=3, out_channels=3,
                      block_out_channels=(64, 128, 128), layers_per_block=2,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
LR, EMA_DECAY, T = 2e-4, 0.9999, 1000


def import_torch():
    """``(torch, diffusers)``. A torchvision built for another torch release (as on the
    development machine) fails at import; the U-Net and the scheduler do not need it."""
    sys.modules.setdefault("torchvision", None)
    import diffusers
    import torch

    return torch, diffusers


def matmul_peak(dtype=jnp.float32, sizes=(2048, 4096, 8192), repeats: int = 10) -> float:
    """Best FLOP/s of an ``n x n`` matmul in ``dtype`` over ``sizes``: the measured peak."""
    best = 0.0
    f = jax.jit(lambda a: a @ a)
    for n in sizes:
        a = jnp.ones((n, n), dtype)
        f(a).block_until_ready()
        start = time.perf_counter()
        for _ in range(repeats):
            out = f(a)
        out.block_until_ready()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def on_gpu() -> bool:
    return jax.devices()[0].platform == "gpu"


def step_flops(compiled) -> float:
    """FLOPs of one call of a compiled program, by XLA's cost analysis."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


def load_config(batch: int, dtype: str = "float32"):
    from diffjax import config_loading  # the data pipeline's imports: only where needed

    config = config_loading.load(os.path.join(REPO, "configs", "bench_unet.py"), lock=False)
    config.data.batch_size = batch
    config.model.dtype = dtype
    return config


def memory_bytes(compiled) -> int:
    """Peak bytes of one call by XLA's memory analysis: arguments + outputs + temporaries,
    less what donation aliases."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def jax_trainer(batch: int, dtype: str = "float32", **optim) -> dict:
    """diffjax's train step on a fixed random batch: ``run(n)`` takes n steps and waits.
    ``optim``: overrides of ``config.optim`` (e.g. ``grad_accum_steps``)."""
    from diffjax import data, models, train, xla_options

    config = load_config(batch, dtype)
    config.optim.update(optim)
    setup = train.build(config, data.info(config.data.dataset))
    state = jax.jit(lambda: train.init_state(setup, config.seed))()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32))
    step = xla_options.jit(train.make_train_step(setup), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, {"x": x, "cond": {}}).compile()
    compile_s = time.perf_counter() - start
    box = [state]

    def run(n: int) -> None:
        s = box[0]
        for _ in range(n):
            s, metrics = compiled(s, {"x": x, "cond": {}})
        jax.block_until_ready((s, metrics))
        box[0] = s

    return dict(run=run, params=models.count_params(state.params), compile_s=compile_s,
                flops=step_flops(compiled), memory=memory_bytes(compiled), compiled=compiled)


def torch_trainer(batch: int, threads: int, dtype: str = "float32",
                  compile_model: bool = False) -> dict:
    """The PyTorch/diffusers step with the same loss, optimizer and EMA."""
    torch, diffusers = import_torch()
    torch.set_num_threads(threads)
    device = "cuda" if on_gpu() and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(**DIFFUSERS_UNET).to(device)
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=LR, foreach=True)
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0).float().to(device)
    x0 = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
    forward = torch.compile(net) if compile_model else net
    autocast = torch.autocast(device, torch.bfloat16, enabled=dtype == "bfloat16")

    def step() -> None:
        t = torch.randint(0, T, (batch,), device=device)
        eps = torch.randn_like(x0)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with autocast:
            pred = forward(xt, t).sample
        loss = torch.mean((pred.float() - eps) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(net.parameters()), 1 - EMA_DECAY)

    def run(n: int) -> None:
        for _ in range(n):
            step()
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    run(1)  # builds (and with torch.compile, compiles) everything
    compile_s = time.perf_counter() - start
    return dict(run=run, params=sum(p.numel() for p in net.parameters()), compile_s=compile_s)


def interleave(runners: dict[str, Callable[[int], None]], batch: int, steps: int,
               repeats: int) -> dict[str, list[float]]:
    """examples/s of each runner per round; rounds alternate between the runners."""
    for run in runners.values():
        run(1)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run(steps)
            rates[name].append(batch * steps / (time.perf_counter() - start))
    return rates


def compare_steps(name: str, batch: int, arms: dict[str, Callable], steps: int,
                  repeats: int) -> dict[str, list[float]]:
    """Config ``name``'s training step (``train_throughput.benchmark`` at ``batch``), traced and
    compiled inside each arm's context manager (``arms``: name -> a callable returning one),
    then alternated by :func:`interleave`: examples/s per round."""
    import train_throughput  # this directory; deferred: only these comparisons need it

    runners = {}
    for arm, context in arms.items():
        with context():
            row = train_throughput.benchmark(name, batch, 1)
        runners[arm] = row["run"]
    return interleave(runners, row["batch"], steps, repeats)


def machine() -> str:
    d = jax.devices()[0]
    kind = d.device_kind if d.platform != "cpu" else f"{os.cpu_count()}-core CPU"
    load = " load average %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return f"{kind}, jax {jax.__version__};{load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch intra-op threads (XLA's CPU client uses every core)")
    parser.add_argument("--micro_batch", type=int, default=0,
                        help="diffjax: split each larger batch into micro-batches of this "
                             "size (optim.grad_accum_steps; the same update); 0: off")
    args = parser.parse_args()
    for batch in map(int, args.batches.split(",")):
        if 0 < args.micro_batch < batch and batch % args.micro_batch:
            parser.error(f"--micro_batch={args.micro_batch} does not divide batch {batch}")
    torch, _ = import_torch()
    gpu = on_gpu()
    dtypes = ("float32", "bfloat16") if gpu else ("float32",)
    rows = []
    for dtype in dtypes:
        peak = matmul_peak(dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32) \
            if gpu else None
        for batch in map(int, args.batches.split(",")):
            print(f"[{dtype} batch {batch}] compiling ...", flush=True)
            k = batch // args.micro_batch if 0 < args.micro_batch < batch else 1
            j = jax_trainer(batch, dtype, grad_accum_steps=k)
            runners = {"diffjax": j["run"]}
            peers = {"torch": torch_trainer(batch, args.threads, dtype)}
            if gpu:
                peers["torch.compile"] = torch_trainer(batch, args.threads, dtype, True)
            runners.update({name: p["run"] for name, p in peers.items()})
            rates = interleave(runners, batch, args.steps, args.repeats)
            med = {name: statistics.median(r) for name, r in rates.items()}
            for name in peers:
                rows.append(dict(dtype=dtype, batch=batch, peer=name, jax=med["diffjax"], k=k,
                                 torch=med[name], params=(j["params"], peers[name]["params"]),
                                 memory=j["memory"], compile_s=j["compile_s"],
                                 mfu=(j["flops"] * med["diffjax"] / batch / peak
                                      if peak else None),
                                 peer_mfu=(j["flops"] * med[name] / batch / peak
                                           if peak else None)))
            print(f"  examples/s per round: {rates}", flush=True)
    print(f"\n{machine()}; torch {torch.__version__} with {args.threads} threads; "
          f"{args.repeats} interleaved rounds of {args.steps} steps, medians.\n")
    print("| dtype | batch | params diffjax / peer | peer | diffjax ex/s | peer ex/s | ratio | "
          "diffjax step memory | diffjax compile (s) |" + (" MFU diffjax / peer |" if gpu else ""))
    print("|---|---:|---|---|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
    for r in rows:
        mfu = f" {100 * r['mfu']:.0f}% / {100 * r['peer_mfu']:.0f}% |" if r["mfu"] else ""
        batch = f"{r['batch']} (diffjax {r['k']} x {r['batch'] // r['k']})" if r["k"] > 1 \
            else r["batch"]
        print(f"| {r['dtype']} | {batch} | {r['params'][0]:,} / {r['params'][1]:,} | "
              f"{r['peer']} | {r['jax']:.1f} | {r['torch']:.1f} | {r['jax'] / r['torch']:.2f}x | "
              f"{r['memory'] / 2**20:.0f} MiB | {r['compile_s']:.0f} |{mfu}")


if __name__ == "__main__":
    main()
