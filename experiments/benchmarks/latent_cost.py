"""What latent diffusion saves: pixel-space vs latent-space training and sampling cost.

    python experiments/benchmarks/latent_cost.py [--res=32,64] [--extrapolate=256,512]
        [--batch=8] [--steps=3] [--nfe=30]

The same backbone (a U-Net, and a DiT with patch 2) is built once for pixels ``[R, R, 3]`` and
once for the latents ``[R/f, R/f, 4]`` of a KL autoencoder (configs/shapes_autoencoder.py's,
f = 4, at the measured resolutions; SD's VAE, f = 8, in the extrapolated rows). For each it
reports the train step's FLOPs per example from XLA's cost analysis of the compiled step
(the one train step of diffjax.training: loss, gradients, Adam, EMA); for the latent model
both with latents encoded inside the step by the frozen encoder (what
``config.latent.autoencoder`` does) and with latents cached once; the measured steps/s; and
the sampling time per image at ``--nfe`` Euler steps, the decoder included. Weights are
random: cost does not depend on them.

``--flops_only`` gives every row that way (nothing compiled or run). Rows marked
*extrapolated* are not run: their FLOPs are XLA's cost analysis of the lowered
(uncompiled) step at that resolution, and the ratio is read from the same formula,
``pixel step / latent step``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from diffjax import configs, sample, train, xla_options  # noqa: E402
from diffjax.autoencoder import latent, spec  # noqa: E402
from diffjax.autoencoder.model import AutoencoderKL  # noqa: E402
from diffjax.data import DataInfo  # noqa: E402
from diffjax.training import tasks  # noqa: E402

SHAPES_AE = dict(block_out_channels=(32, 64, 64), norm_num_groups=16)  # f = 4
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
BACKBONES = {
    # attention at the bottleneck (R/4) of every resolution
    "unet": dict(arch="unet", ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, dropout=0.0,
                 num_heads=4),
    "dit": dict(arch="dit", size="S/2"),
}


def build(backbone: str, shape: tuple[int, ...]):
    config = configs.default_config()
    config.model = configs.default_model_config(BACKBONES[backbone]["arch"])
    config.model.update({k: v for k, v in BACKBONES[backbone].items() if k != "arch"})
    if backbone == "unet":
        config.model.attn_resolutions = (shape[0] // 4,)
    configs.apply_recipe(config, "flow")
    info = DataInfo("bench", "image", tuple(shape), 1, None, None)
    return config, train.build(config, info)


def _flops(analysis) -> float:
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


def step_cost(setup, batch: int, pixels: tuple, ae=None, run: int = 0, compile_: bool = True):
    """``(FLOPs per example, steps/s or None)`` of one train step on ``pixels``-shaped input;
    with ``ae = (module, params)`` the task encodes them first (latent run)."""
    task, frozen = None, None
    if ae is not None:
        task = latent.LatentTask(tasks.Denoise(setup), latent.Latents(ae[0], 1.0, 0.0))
        frozen = {spec.KEY: ae[1]}
    state = jax.eval_shape(lambda: train.init_state(setup, 0))
    x = jax.ShapeDtypeStruct((batch, *pixels), jnp.float32)
    step = xla_options.jit(train.make_train_step(setup, task=task))
    lowered = step.lower(state, {"x": x, "cond": {}}, frozen)
    if not compile_:
        return _flops(lowered.cost_analysis()) / batch, None
    compiled = lowered.compile()
    flops = _flops(compiled.cost_analysis()) / batch
    if not run:
        return flops, None
    state = jax.jit(lambda: train.init_state(setup, 0))()
    data = {"x": jnp.asarray(np.random.default_rng(0).uniform(-1, 1, x.shape), jnp.float32),
            "cond": {}}
    state, m = compiled(state, data, frozen)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(run):
        state, m = compiled(state, data, frozen)
    jax.block_until_ready(m)
    return flops, run / (time.perf_counter() - start)


def sample_seconds(setup, params, n: int, nfe: int, decode=None) -> tuple[float, float]:
    """Seconds per image of ``n`` samples at ``nfe`` Euler steps, and of the decoder alone."""
    den = setup.denoiser
    shape = (n, *setup.data_info.shape)
    fn = xla_options.jit(lambda p, key: sample(den.fn, den.path, shape, key, params=p,
                                               target=den.target, sampler="euler",
                                               num_steps=nfe))
    jax.block_until_ready(fn(params, jax.random.PRNGKey(0)))
    start = time.perf_counter()
    z = jax.block_until_ready(fn(params, jax.random.PRNGKey(1)))
    total = time.perf_counter() - start
    dec = 0.0
    if decode is not None:
        jax.block_until_ready(decode(z))
        start = time.perf_counter()
        jax.block_until_ready(decode(z))
        dec = time.perf_counter() - start
    return (total + dec) / n, dec / n


def autoencoder(cfg: dict, res: int):
    module = AutoencoderKL(**cfg)
    params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, res, res, 3))))["params"]
    return module, params


def measured_rows(backbone: str, res: int, args) -> dict:
    module, shapes = autoencoder(SHAPES_AE, res)
    params = jax.jit(lambda: module.init(jax.random.PRNGKey(0),
                                         jnp.zeros((1, res, res, 3))))()["params"]
    f = 2 ** (len(SHAPES_AE["block_out_channels"]) - 1)
    _, pix = build(backbone, (res, res, 3))
    _, lat = build(backbone, (res // f, res // f, 4))
    pix_flops, pix_sps = step_cost(pix, args.batch, (res, res, 3), run=args.steps)
    enc_flops, enc_sps = step_cost(lat, args.batch, (res, res, 3), (module, params),
                                   run=args.steps)
    cached_flops, cached_sps = step_cost(lat, args.batch, (res // f, res // f, 4),
                                         run=args.steps)
    pix_params = jax.jit(lambda: train.init_state(pix, 0))().ema_params
    lat_params = jax.jit(lambda: train.init_state(lat, 0))().ema_params
    decode = jax.jit(lambda z: module.apply({"params": params}, z, method=AutoencoderKL.decode))
    pix_sample, _ = sample_seconds(pix, pix_params, args.batch, args.nfe)
    lat_sample, dec = sample_seconds(lat, lat_params, args.batch, args.nfe, decode)
    return dict(backbone=backbone, res=res, f=f, pix=pix_flops, enc=enc_flops, cached=cached_flops,
                pix_sps=pix_sps, enc_sps=enc_sps, cached_sps=cached_sps, pix_sample=pix_sample,
                lat_sample=lat_sample, dec=dec)


def extrapolated_row(backbone: str, res: int, ae: dict = SD_VAE, batch: int = 1) -> dict:
    """FLOPs per example of the lowered (not compiled, not run) steps."""
    module, params = autoencoder(ae, res)
    f = 2 ** (len(ae["block_out_channels"]) - 1)
    _, pix = build(backbone, (res, res, 3))
    _, lat = build(backbone, (res // f, res // f, 4))
    pix_flops, _ = step_cost(pix, batch, (res, res, 3), compile_=False)
    enc_flops, _ = step_cost(lat, batch, (res, res, 3), (module, params), compile_=False)
    cached_flops, _ = step_cost(lat, batch, (res // f, res // f, 4), compile_=False)
    return dict(backbone=backbone, res=res, f=f, pix=pix_flops, enc=enc_flops, cached=cached_flops)


def _g(x):
    return f"{x / 1e9:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", default="32,64")
    parser.add_argument("--extrapolate", default="256,512")
    parser.add_argument("--backbones", default="unet,dit")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--nfe", type=int, default=30)
    parser.add_argument("--flops_only", action="store_true",
                        help="every row from the lowered step's cost analysis; nothing run")
    args = parser.parse_args()
    backbones = args.backbones.split(",")
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), jax "
          f"{jax.__version__}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; batch {args.batch}, "
          f"sampling: euler, {args.nfe} NFE\n")
    print("| backbone | res | f | pixel GFLOP/ex | latent GFLOP/ex (encoder in step) | "
          "latent GFLOP/ex (cached) | ratio (in step / cached) | steps/s pixel / latent / "
          "cached | sample s/img pixel / latent (of which decoder) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for res in [int(r) for r in args.res.split(",") if r]:
        for b in backbones:
            if args.flops_only:
                r = extrapolated_row(b, res, SHAPES_AE)
                print(f"| {b} | {res} | {r['f']} | {_g(r['pix'])} | {_g(r['enc'])} | "
                      f"{_g(r['cached'])} | {r['pix'] / r['enc']:.2f} / "
                      f"{r['pix'] / r['cached']:.1f} | not run | not run |", flush=True)
                continue
            r = measured_rows(b, res, args)
            print(f"| {b} | {res} | {r['f']} | {_g(r['pix'])} | {_g(r['enc'])} | "
                  f"{_g(r['cached'])} | {r['pix'] / r['enc']:.2f} / {r['pix'] / r['cached']:.1f} | "
                  f"{r['pix_sps']:.2f} / {r['enc_sps']:.2f} / {r['cached_sps']:.2f} | "
                  f"{r['pix_sample']:.4f} / {r['lat_sample']:.4f} ({r['dec']:.4f}) |", flush=True)
    for res in [int(r) for r in args.extrapolate.split(",") if r]:
        for b in backbones:
            r = extrapolated_row(b, res)
            print(f"| {b} | {res} *extrapolated* | {r['f']} (SD VAE) | {_g(r['pix'])} | "
                  f"{_g(r['enc'])} | {_g(r['cached'])} | {r['pix'] / r['enc']:.2f} / "
                  f"{r['pix'] / r['cached']:.1f} | not run | not run |", flush=True)


if __name__ == "__main__":
    main()
