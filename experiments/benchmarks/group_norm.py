"""GroupNorm, Flax's against diffjax's, in the ddpm train step and per layer.

    python experiments/benchmarks/group_norm.py [--rounds=3] [--steps=N]
    python experiments/benchmarks/group_norm.py --layers [--batch=32]

``diffjax.models.blocks.group_norm`` picks :class:`diffjax.models.blocks.GroupNorm` (per-channel
moments, group maps as matmuls, one affine map per example and channel) unless told Flax's
``nn.GroupNorm``; this times the same network's train step (``Step`` of
``experiments/benchmarks/gpu.py``) with each, compiled once, in alternating rounds, and prints
examples/s and the ratio. ``--layers``: GroupNorm followed by SiLU, forward and backward (the
U-Nets' pattern), per feature-map shape, milliseconds (medians of 20), Flax's, diffjax's and,
where torch is installed (the ``[compare]`` extra), PyTorch's on the same thread count.
Whole steps on a CPU: the bench U-Net (configs/bench_unet.py) at batch 32 and the digits U-Net
at batch 128, float32; on a GPU: CIFAR-10 DDPM++ at batch 128, bfloat16.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from diffjax import models  # noqa: E402
from diffjax.models import unet  # noqa: E402
from diffjax.models.blocks import norms  # noqa: E402
from experiments.benchmarks.gpu import BENCH_UNET, CIFAR_DDPMPP, Step  # noqa: E402

# configs/digits.py's network
DIGITS_UNET = dict(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(4,))


# norms.group_norm with each kind forced, whatever the backend
flax_group_norm = functools.partial(norms.group_norm, kind=nn.GroupNorm)
ours_group_norm = functools.partial(norms.group_norm, kind=norms.GroupNorm)


@contextlib.contextmanager
def using(factory):
    """Every U-Net GroupNorm (plain and AdaGN) built by ``factory`` inside the block."""
    saved = unet.group_norm, norms.group_norm
    unet.group_norm = norms.group_norm = factory
    try:
        yield
    finally:
        unet.group_norm, norms.group_norm = saved


def compare(name: str, make_net, shape, batch: int, steps: int, rounds: int) -> str:
    compiled = {}
    for label, factory in (("Flax", flax_group_norm), ("diffjax", ours_group_norm)):
        with using(factory):
            compiled[label] = Step(make_net(), shape, batch)
    rates = {label: [] for label in compiled}
    for _ in range(rounds):
        for label, s in compiled.items():
            rates[label].append(s.examples_per_s(steps))
    flax, ours = (float(np.median(rates[k])) for k in ("Flax", "diffjax"))
    return f"| {name} | {batch} | {flax:.1f} | {ours:.1f} | {ours / flax:.2f}x |"


def layer_rows(batch: int) -> list[str]:
    """GroupNorm+SiLU forward and backward per layer shape (module docstring)."""
    from experiments.benchmarks.cpu_ceiling import _median_s

    def median_ms(fn) -> float:
        return 1e3 * _median_s(fn, repeats=20)

    try:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None
    rows = ["| shape [B, H, W, C] | Flax's (ms) | diffjax's (ms) | PyTorch's (ms) | Flax / ours |",
            "|---|---:|---:|---:|---:|"]
    rng = np.random.default_rng(0)
    for hw, c in ((32, 64), (16, 128), (8, 128), (32, 128)):
        shape = (batch, hw, hw, c)
        x = jnp.asarray(2 * rng.standard_normal(shape) + 0.5, jnp.float32)
        weights = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        ms = {}
        for label, factory in (("Flax", flax_group_norm), ("diffjax", ours_group_norm)):
            module = factory(c, jnp.float32, jnp.float32)
            variables = module.init(jax.random.key(0), x)
            loss = lambda v, x, m=module: jnp.sum(nn.silu(m.apply(v, x)) * weights)  # noqa: E731
            grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            ms[label] = median_ms(lambda: jax.block_until_ready(grad(variables, x)))
        theirs = "-"
        if torch is not None:
            xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous().requires_grad_()
            wt = torch.tensor(np.asarray(weights)).permute(0, 3, 1, 2).contiguous()
            norm = torch.nn.GroupNorm(norms.num_groups(c), c, eps=1e-6)

            def torch_step():
                xt.grad = None
                norm.zero_grad()
                (torch.nn.functional.silu(norm(xt)) * wt).sum().backward()
            theirs = f"{median_ms(torch_step):.2f}"
        rows.append(f"| {list(shape)} | {ms['Flax']:.2f} | {ms['diffjax']:.2f} | {theirs} | "
                    f"{ms['Flax'] / ms['diffjax']:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="timed steps a round (default: "
                                                             "4 / 30 on CPU, 20 on GPU)")
    parser.add_argument("--layers", action="store_true", help="per layer, not whole steps")
    parser.add_argument("--batch", type=int, default=32, help="--layers' batch")
    args = parser.parse_args()
    if args.layers:
        print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}; GroupNorm+SiLU forward "
              "and backward, float32", *layer_rows(args.batch), sep="\n", flush=True)
        return
    gpu = jax.default_backend() == "gpu"
    lines = [f"{jax.devices()[0].device_kind}, jax {jax.__version__}; train-step examples/s, "
             f"median of {args.rounds} alternating rounds", "",
             "| network | batch | Flax's GroupNorm | diffjax's | ratio |",
             "|---|---:|---:|---:|---:|"]
    if gpu:
        lines.append(compare("CIFAR-10 DDPM++ bf16", lambda: models.UNet(
            **CIFAR_DDPMPP, dtype=jnp.bfloat16), (32, 32, 3), 128, args.steps or 20, args.rounds))
    else:
        lines.append(compare("bench U-Net f32", lambda: models.UNet(**BENCH_UNET), (32, 32, 3),
                             32, args.steps or 4, args.rounds))
        lines.append(compare("digits U-Net f32", lambda: models.UNet(**DIGITS_UNET), (8, 8, 1),
                             128, args.steps or 30, args.rounds))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
