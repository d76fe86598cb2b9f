"""diffjax's Stable Diffusion VAE against diffusers' own, with no download (issue 14, item 4).

A diffusers ``AutoencoderKL`` with random weights (PyTorch, CPU, float32) is saved with
``save_pretrained`` (config.json + diffusion_pytorch_model.safetensors), read back by
:func:`diffjax.autoencoder.load_diffusers_vae` (safetensors -> NumPy -> Flax, no torch), and
both encode and decode the same random images. Printed: the largest absolute differences of
the posterior mean, log-variance and decoded images, next to the output scale.

    pip install -e '.[compare]'   # torch==2.13.0 (CPU), diffusers
    python experiments/benchmarks/vae_vs_diffusers.py [--sd]

``--sd`` uses SD's full VAE layout (block_out_channels 128/256/512/512, 2 layers per block,
32 groups; random weights, 64x64 images) instead of the small default (32/64, 1 layer, 8
groups, 32x32); it takes a minute or two on a CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SMALL = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, size=32)
SD = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
          size=64)


def diffusers_vae(block_out_channels, layers_per_block, norm_num_groups, seed=0):
    # torchvision built for another torch does not import; the VAE does not need it.
    sys.modules.setdefault("torchvision", None)
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(block_out_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n,
                        block_out_channels=tuple(block_out_channels),
                        layers_per_block=layers_per_block, latent_channels=4,
                        norm_num_groups=norm_num_groups).eval()
    # Random, not default, norm affines and biases: a loader that swapped them would pass.
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name and
                                                     name.endswith("weight") else 0.0))
    return vae


def compare(cfg: dict, batch: int = 2) -> dict[str, float]:
    import torch

    from diffjax.autoencoder import load_diffusers_vae

    vae = diffusers_vae(cfg["block_out_channels"], cfg["layers_per_block"],
                        cfg["norm_num_groups"])
    x = np.random.default_rng(1).uniform(-1, 1, (batch, cfg["size"], cfg["size"], 3))
    x = x.astype(np.float32)
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
        mean_t, logvar_t = (a.permute(0, 2, 3, 1).numpy() for a in (dist.mean, dist.logvar))
        dec_t = vae.decode(dist.mean).sample.permute(0, 2, 3, 1).numpy()
    with tempfile.TemporaryDirectory() as folder:
        vae.save_pretrained(folder, safe_serialization=True)
        ours = load_diffusers_vae(folder)
    mean_j, logvar_j = (np.asarray(a) for a in ours.encode(x))
    dec_j = np.asarray(ours.decode(mean_t))
    return {"mean": float(np.abs(mean_j - mean_t).max()),
            "logvar": float(np.abs(logvar_j - logvar_t).max()),
            "decode": float(np.abs(dec_j - dec_t).max()),
            "scale": float(max(np.abs(mean_t).max(), np.abs(dec_t).max())),
            "params": int(sum(p.numel() for p in vae.parameters()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd", action="store_true", help="SD's full VAE layout")
    args = parser.parse_args()
    cfg = SD if args.sd else SMALL
    r = compare(cfg)
    print(f"AutoencoderKL block_out_channels={cfg['block_out_channels']} layers_per_block="
          f"{cfg['layers_per_block']} groups={cfg['norm_num_groups']} ({r['params']:,} "
          f"params), {cfg['size']}x{cfg['size']} images, float32 CPU")
    print(f"{'output':8s} {'max |diffjax - diffusers|':>26s}")
    for key in ("mean", "logvar", "decode"):
        print(f"{key:8s} {r[key]:26.3e}")
    print(f"largest |output| {r['scale']:.3g}")
    worst = max(r["mean"], r["logvar"], r["decode"]) / max(r["scale"], 1.0)
    print("PASS" if worst < 1e-4 else "FAIL", f"(relative {worst:.2e}, tolerance 1e-4)")


if __name__ == "__main__":
    main()
