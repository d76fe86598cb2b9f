"""diffjax's FID Inception against pytorch-fid's own network, with the same random weights.

FID numbers are comparable across papers only if the feature network is the 2015 TF graph
that pytorch-fid ports (its ``FIDInceptionA/C/E_1/E_2`` blocks: average pools that ignore
padding, a max pool in the last block). This check builds that network with pytorch-fid's
own code, with random weights (nothing is downloaded), saves them as the standard
``.pth`` state dict, loads that file in diffjax (no PyTorch involved in the loading) and
compares the 2048-d pool3 features on the same random uint8 images, at the CIFAR size
(32x32, upsampled), the native 299x299 and a larger non-square size (downsampled).

Weights: He-normal convolutions; random batch-norm scales and offsets; running means and
variances calibrated on a batch of random images (one train-mode pass), so that every layer
sees O(1) activations as in the trained network and a wrong pool, padding or channel order
shows up at the output. The file is written in both of PyTorch's formats (zip and legacy),
and ``torch_weights.read_state_dict`` must return every array of ``torch.load`` exactly.

Reported: max |diffjax - pytorch-fid| over all features, relative to max |feature|; as the
yardstick of float32 rounding, pytorch-fid in float32 against pytorch-fid in float64; and, to
show the check can fail, torchvision's own Inception-v3 blocks (padded average pools, no max
pool) with the very same weights against pytorch-fid.
Also the Fréchet distance of pytorch-fid's ``calculate_frechet_distance`` against diffjax's
on the same statistics. Exits 1 if any comparison misses its tolerance.

Needs the ``compare`` extra (``pip install -e ".[compare]"``: ``torch==2.13.0`` and
``pytorch-fid``). Usage::

    PYTHONPATH=. python experiments/benchmarks/fid_inception_vs_pytorch.py [--num 8] [--seed 0]

Result (``--num 8 --seed 0``; torch 2.13.0+cpu, pytorch-fid 0.3.0; a 2-core CPU shared with
other jobs, load average 9-17: 7-8 min wall, 2-2.4 CPU-minutes). Both file formats read
exactly as ``torch.load`` (566 arrays, max |diff| 0); max |feature difference| / max
|feature|:

=========  ========  ======================  ======================  ==================
size       max |f|   diffjax vs pytorch-fid  pytorch-fid f32 vs f64  torchvision blocks
=========  ========  ======================  ======================  ==================
32x32      426.0     1.4e-06                 1.4e-06                 0.44
299x299    11.2      5.3e-05                 3.6e-05                 0.89
375x500    172.5     1.9e-06                 5.2e-05                 0.51
=========  ========  ======================  ======================  ==================

Fréchet distance (2048-d, 4096 samples each): pytorch-fid 7.174241415, diffjax
7.174241415 (relative difference 1e-14).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from unittest import mock

import numpy as np

SIZES = ((32, 32), (299, 299), (375, 500))
FEATURE_RTOL = 1e-3  # max abs difference / max |feature|; float32 rounding gives ~1e-5
FRECHET_RTOL = 1e-6


def import_pytorch_fid():
    """``(torch, pytorch_fid.inception, pytorch_fid.fid_score)``.

    Where torch is the CPU build and torchvision the CUDA build of the same release (as the
    wheels on the development machine), torchvision's compiled ops do not load and its
    import fails while registering their fake kernels. pytorch-fid uses only torchvision's
    pure-Python Inception, so those registrations are skipped for the import.
    """
    import torch
    import torch.library

    register_fake = torch.library.register_fake

    def tolerant(op, *args, **kwargs):
        decorate = register_fake(op, *args, **kwargs)
        if args or not str(op).startswith("torchvision::"):
            return decorate

        def apply(fn):
            try:
                return decorate(fn)
            except RuntimeError:  # The op itself is missing: nothing to register.
                return fn
        return apply

    torch.library.register_fake = tolerant
    try:
        from pytorch_fid import fid_score
        from pytorch_fid import inception as pytorch_fid_inception
    finally:
        torch.library.register_fake = register_fake
    return torch, pytorch_fid_inception, fid_score


def random_state_dict(torch, pytorch_fid_inception, seed: int):
    """``(state dict, torchvision net)``: pytorch-fid's layout (incl. ``fc.*``), random
    weights, calibrated BN; the net is torchvision's Inception-v3 holding those weights."""
    torch.manual_seed(seed)
    net = pytorch_fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.momentum = None  # Running stats = this batch's statistics.
                module.reset_running_stats()
        net.train()
        net(torch.rand(16, 3, 299, 299) * 2 - 1)
    return net.state_dict(), net


def save_both_formats(torch, state: dict, out_dir: str) -> dict[str, str]:
    paths = {"zip": os.path.join(out_dir, "pt_inception-random.pth"),
             "legacy": os.path.join(out_dir, "pt_inception-random-legacy.pth")}
    torch.save(state, paths["zip"])
    torch.save(state, paths["legacy"], _use_new_zipfile_serialization=False)
    return paths


def check_reader(torch, paths: dict[str, str]) -> float:
    """Largest difference between ``read_state_dict`` and ``torch.load``; must be 0."""
    from diffjax.evaluate import torch_weights

    worst = 0.0
    for fmt, path in paths.items():
        ours = torch_weights.read_state_dict(path)
        theirs = torch.load(path, map_location="cpu", weights_only=True)
        if sorted(ours) != sorted(theirs):
            raise SystemExit(f"{fmt}: keys differ: {sorted(set(ours) ^ set(theirs))[:5]}")
        for name, tensor in theirs.items():
            worst = max(worst, float(np.max(np.abs(ours[name] - tensor.numpy()), initial=0)))
        print(f"reader, {fmt} format: {len(ours)} arrays, max |diff| vs torch.load = {worst}")
    return worst


def pytorch_fid_network(torch, pytorch_fid_inception, path: str):
    """pytorch-fid's ``InceptionV3([pool3])``, its weights loaded from ``path`` by its own code."""
    def load_local(url, *args, **kwargs):
        assert url == pytorch_fid_inception.FID_WEIGHTS_URL
        return torch.load(path, map_location="cpu", weights_only=True)

    with mock.patch.object(pytorch_fid_inception, "load_state_dict_from_url", load_local):
        net = pytorch_fid_inception.InceptionV3([3]).eval()
    blocks = net.blocks[3]
    assert type(blocks[2]).__name__ == "FIDInceptionE_2", type(blocks[2])
    return net


def torchvision_features(torch, net, images: np.ndarray) -> np.ndarray:
    """The same weights through torchvision's own blocks (not the FID graph's)."""
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        return net.eval()(x).double().numpy()


def torch_features(torch, net, images: np.ndarray, dtype) -> np.ndarray:
    """pytorch-fid's pipeline: uint8 NHWC -> [0, 1] NCHW -> its network (resize inside)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype) / 255.0
    with torch.no_grad():
        return net.to(dtype)(x)[0].squeeze(-1).squeeze(-1).double().numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=8, help="images per size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch, pytorch_fid_inception, fid_score = import_pytorch_fid()
    from diffjax.evaluate import frechet, inception

    torch.set_num_threads(os.cpu_count() or 1)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        state, torchvision_net = random_state_dict(torch, pytorch_fid_inception, args.seed)
        paths = save_both_formats(torch, state, tmp)
        failed |= check_reader(torch, paths) != 0.0
        net = pytorch_fid_network(torch, pytorch_fid_inception, paths["zip"])
        ours = {fmt: inception.load_inception(path) for fmt, path in paths.items()}
        rng = np.random.default_rng(args.seed)
        print(f"\n{'size':>9} | {'max |f|':>8} | {'diffjax vs pytorch-fid':>23} | "
              f"{'pytorch-fid f32 vs f64':>23} | {'diffjax vs f64':>14} | "
              "torchvision blocks vs f64")
        for h, w in SIZES:
            images = rng.integers(0, 256, (args.num, h, w, 3), dtype=np.uint8)
            ref32 = torch_features(torch, net, images, torch.float32)
            ref64 = torch_features(torch, net, images, torch.float64)
            got = {fmt: ours[fmt](images, batch_size=args.num) for fmt in ours}
            np.testing.assert_array_equal(got["zip"], got["legacy"])
            scale = np.max(np.abs(ref64))
            diff = np.max(np.abs(got["zip"] - ref32)) / scale
            yard = np.max(np.abs(ref32 - ref64)) / scale
            vs64 = np.max(np.abs(got["zip"] - ref64)) / scale
            other = np.max(np.abs(torchvision_features(torch, torchvision_net, images)
                                  - ref64)) / scale
            print(f"{h:>4}x{w:<4} | {scale:8.3f} | {diff:23.2e} | {yard:23.2e} | "
                  f"{vs64:14.2e} | {other:.2e}")
            failed |= not diff < FEATURE_RTOL
        # Full-rank covariances (N > D): pytorch-fid's sqrtm needs no eps offset then.
        rng_cov = np.random.default_rng(args.seed + 1)
        a = rng_cov.standard_normal((4096, 2048)) * 0.1
        b = rng_cov.standard_normal((4096, 2048)) * 0.12 + 0.01
        mu1, cov1 = frechet.gaussian_stats(a)
        mu2, cov2 = frechet.gaussian_stats(b)
        theirs = fid_score.calculate_frechet_distance(mu1, cov1, mu2, cov2)
        mine = frechet.frechet_distance(mu1, cov1, mu2, cov2)
        rel = abs(mine - theirs) / abs(theirs)
        print(f"\nFréchet distance, 2048-d, N=4096 each: pytorch-fid {theirs:.10g}, "
              f"diffjax {mine:.10g}, relative difference {rel:.2e}")
        failed |= not rel < FRECHET_RTOL
    print("FAILED" if failed else "OK: features and distance agree to float tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
