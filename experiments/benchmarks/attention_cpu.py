"""Attention on CPU: diffjax's blocked attention against its earlier arithmetic, XLA's
reference and PyTorch's ``scaled_dot_product_attention``, per layer shape.

    python experiments/benchmarks/attention_cpu.py [--repeats=9] [--shapes=bench,shapes_t2i]

Each attention layer of the bench U-Net (configs/bench_unet.py: 16 heads of width 8 over the
256 positions of its 16x16 maps, batch 64 as sampled and 32 as trained) and of the t2i job
(configs/shapes_t2i.py: 4 heads of width 16; self-attention over the 8x8 map, cross-attention
from the 16x16 map to a 24-token caption with a key mask) is timed three ways, milliseconds
(medians of ``--repeats`` after compilation): forward, forward and backward (``jax.grad`` of a
scalar of the output with respect to q, k and v) and forward mode (``jax.jvp`` in q, k and v,
as MeanFlow and the likelihood differentiate the network). Arms:

- ``blocked``: :func:`diffjax.models.blocks.attention.blocked_attention`, the CPU default, as
  it is now (the scale and the softmax's normalisation applied to the smaller array).
- ``blocked, before``: the same blocks with the arithmetic they had until 2026-12-02 (keys and
  values in their own layout, logits scaled, ``jax.nn.softmax`` normalising the
  probabilities), for the before/after comparison.
- ``xla``: ``jax.nn.dot_product_attention(implementation="xla")``.
- ``torch``: ``torch.nn.functional.scaled_dot_product_attention`` on the same thread count,
  where torch is installed (the ``[compare]`` extra).

Every arm's forward output is checked against ``xla``'s (max. abs. difference printed).
diffjax's programs compile with diffjax's XLA options (``diffjax.xla_options``).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from diffjax import xla_options  # noqa: E402
from diffjax.models.blocks import attention  # noqa: E402
from experiments.benchmarks.cpu_ceiling import _median_s  # noqa: E402

# name -> (batch, queries, keys, heads, head width, masked)
SHAPES = {
    "bench": [("bench U-Net 16x16, sampling", 64, 256, 256, 16, 8, False),
              ("bench U-Net 16x16, training", 32, 256, 256, 16, 8, False)],
    "shapes_t2i": [("t2i self-attention 8x8", 32, 64, 64, 4, 16, False),
                   ("t2i cross-attention 16x16", 32, 256, 24, 4, 16, True)],
}
MODES = ("forward", "forward+backward", "jvp")


def before_attend(q, k, v, mask):
    """blocked_attention's per-block arithmetic until 2026-12-02."""
    logits = jnp.einsum("bnth,bnsh->bnts", q, k, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(q.shape[-1] ** -0.5)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.float32(-0.7 * jnp.finfo(jnp.float32).max))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bnsh->bnth", probs, v)


def jax_arm(fn, q, k, v, mask, mode):
    if mode == "forward":
        f = lambda q, k, v: fn(q, k, v, mask)  # noqa: E731
    elif mode == "forward+backward":
        f = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, mask))), argnums=(0, 1, 2))
    else:
        tangents = (jnp.sin(q), jnp.cos(k), v)
        f = lambda q, k, v: jax.jvp(lambda *a: fn(*a, mask), (q, k, v), tangents)  # noqa: E731
    compiled = xla_options.jit(f).lower(q, k, v).compile()
    return lambda: jax.block_until_ready(compiled(q, k, v))


def torch_arm(q, k, v, mask, mode):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count())
    to = lambda a: torch.tensor(np.asarray(a)).permute(0, 2, 1, 3).contiguous()  # noqa: E731
    tq, tk, tv = to(q), to(k), to(v)
    tmask = None if mask is None else torch.tensor(np.asarray(mask))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if mode == "forward":
        def run():
            with torch.inference_mode():
                return sdpa(tq, tk, tv, attn_mask=tmask)
    elif mode == "forward+backward":
        leaves = [a.clone().requires_grad_(True) for a in (tq, tk, tv)]

        def run():
            torch.sin(sdpa(*leaves, attn_mask=tmask)).sum().backward()
    else:
        tangents = (torch.sin(tq), torch.cos(tk), tv)

        def run():
            return torch.func.jvp(lambda *a: sdpa(*a, attn_mask=tmask), (tq, tk, tv), tangents)
    return run


def median_ms(run, repeats):
    return 1e3 * _median_s(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--shapes", default="bench,shapes_t2i",
                        help=f"comma-separated, from: {', '.join(SHAPES)}")
    args = parser.parse_args()
    names = args.shapes.split(",")
    for name in names:
        if name not in SHAPES:
            parser.error(f"--shapes: unknown {name!r}; valid choices: {', '.join(SHAPES)}")
    load = " load average %.1f %.1f %.1f;" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    print(f"{os.cpu_count()}-core CPU, jax {jax.__version__};{load} ms, medians of "
          f"{args.repeats}\n")
    print("| layer | B, T, S, heads x width | mode | blocked | blocked, before | xla | torch | "
          "blocked speed-up over before | max abs. difference to xla |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    arms = {"blocked": attention.blocked_attention,
            "before": lambda q, k, v, m: _blocked_with(before_attend, q, k, v, m),
            "xla": lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m,
                                                                   implementation="xla")}
    for name in names:
        for label, b, t, s, n, h, masked in SHAPES[name]:
            keys = jax.random.split(jax.random.key(0), 4)
            q = jax.random.normal(keys[0], (b, t, n, h))
            k, v = (jax.random.normal(key, (b, s, n, h)) for key in keys[1:3])
            mask = ((jax.random.uniform(keys[3], (b, 1, 1, s)) < 0.7) | (jnp.arange(s) == 0)
                    if masked else None)
            ref = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
            diff = max(float(jnp.max(jnp.abs(fn(q, k, v, mask) - ref)))
                       for fn in (arms["blocked"], arms["before"]))
            for mode in MODES:
                ms = {arm: median_ms(jax_arm(fn, q, k, v, mask, mode), args.repeats)
                      for arm, fn in arms.items()}
                run = torch_arm(q, k, v, mask, mode)
                try:
                    torch_ms = f"{median_ms(run, args.repeats):.1f}" if run else "-"
                except RuntimeError as error:  # e.g. no forward-mode rule in this torch
                    torch_ms = f"- ({str(error).splitlines()[0][:40]})"
                print(f"| {label} | {b}, {t}, {s}, {n} x {h} | {mode} | {ms['blocked']:.1f} | "
                      f"{ms['before']:.1f} | {ms['xla']:.1f} | {torch_ms} | "
                      f"{ms['before'] / ms['blocked']:.2f}x | {diff:.1e} |", flush=True)


def _blocked_with(attend, q, k, v, mask):
    """blocked_attention with another per-block function (its blocks, its checkpoint)."""
    saved = attention._attend
    attention._attend = attend
    try:
        return attention.blocked_attention(q, k, v, mask)
    finally:
        attention._attend = saved


if __name__ == "__main__":
    main()
