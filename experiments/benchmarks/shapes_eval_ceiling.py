"""The `shapes` data set and its evaluator, measured: generation time, detector training
time, the ceiling of ``shapes_eval`` and its chance level, and the ``fd_shapes`` floor.

* generation: the whole 32x32 test split (5 chunks) rendered in memory, timed, and the
  rate extrapolated to the 55 000 examples of both splits; with ``--prepare`` the real tfds
  preparation of ``shapes`` and ``shapes_64`` into fresh directories is timed too.
* evaluator: the default detector (`shapes_detector.train()`), trained afresh (timed) and
  saved under ``--out`` (``--cache`` reuses the one in ``~/.cache/diffjax/eval``).
* ceiling: ``shapes_eval`` per category of the real test split with its own captions, at 32
  and, box-downsampled by the detector, at 64; chance: the same images against a seeded
  shuffle of the captions, next to the exact chance level (true scenes against the same
  shuffle); ``fd_shapes_floor`` (5 000 train images against the test split).

Usage::

    python experiments/benchmarks/shapes_eval_ceiling.py [--out runs/shapes_eval] [--cache]
        [--prepare] [--test_chunks 5]

Prints a table and writes ``results.json`` and ``shapes_examples.png`` (64x64 test images,
captions, and the edges (red) / segmentation (green) control maps) under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from diffjax.data import shapes
from diffjax.data import shapes_captions as sc
from diffjax.evaluate import shapes_detector, shapes_eval


def _split(split: str, chunks: int, resolution: int) -> dict[str, np.ndarray]:
    parts = [shapes.generate_chunk(split, c, resolution) for c in range(chunks)]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["x"] = out["image"].astype(np.float32) / 127.5 - 1.0
    return out


def figure(test64: dict[str, np.ndarray], path: str, n: int = 24) -> None:
    """The first ``n`` 64x64 test images with their captions, edges and segmentation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 6
    fig, axes = plt.subplots(n // cols, cols, figsize=(2.4 * cols, 1.6 * (n // cols)))
    for i, ax in enumerate(axes.flat):
        seg = test64["segmentation"][i, ..., 0]
        control = np.concatenate([test64["edges"][i], (seg[..., None] * 40).astype(np.uint8),
                                  np.zeros_like(test64["edges"][i])], axis=-1)
        ax.imshow(np.concatenate([test64["image"][i], control], axis=1))
        words, lines = test64["caption"][i].split(), [""]
        for w in words:
            lines[-1] = (lines[-1] + " " + w).strip()
            if len(lines[-1]) > 28:
                lines.append("")
        ax.set_title("\n".join(l for l in lines if l), fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/shapes_eval")
    parser.add_argument("--cache", action="store_true")
    parser.add_argument("--prepare", action="store_true")
    parser.add_argument("--test_chunks", type=int, default=5)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results: dict[str, object] = {}

    start = time.time()
    test = _split("test", args.test_chunks, 32)
    seconds = time.time() - start
    results["generate_seconds_per_1000"] = seconds / args.test_chunks
    results["generate_seconds_55k_extrapolated"] = seconds / args.test_chunks * 55
    if args.prepare:
        from diffjax.data import builders
        for name in ("shapes", "shapes_64"):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.time()
                builders.ensure_prepared(name, tmp)
                results[f"prepare_seconds_{name}"] = time.time() - start

    start = time.time()
    if args.cache:
        detector = shapes_eval.evaluator()
    else:
        detector = shapes_detector.load_or_train(os.path.join(args.out, "eval"))
    results["detector_seconds"] = time.time() - start
    results["detector_info"] = detector.info

    prompts = sc.parse_batch(test["caption"])
    results["own_32"] = shapes_eval.score(test["x"], prompts, detector=detector)
    big = _split("test", args.test_chunks, 64)
    figure(big, os.path.join(args.out, "shapes_examples.png"))
    results["own_64"] = shapes_eval.score(big["x"], prompts, detector=detector)
    # How much imperfection the judge tolerates: Gaussian pixel noise, a 3x3 box blur.
    noise = np.random.default_rng(0).standard_normal(test["x"].shape).astype(np.float32)
    for sigma in (0.1, 0.2):
        results[f"own_32_noise{sigma}"] = shapes_eval.score(
            np.clip(test["x"] + sigma * noise, -1, 1), prompts, detector=detector)
    padded = np.pad(test["x"], ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[:, i:i + 32, j:j + 32] for i in range(3) for j in range(3)) / 9
    results["own_32_blur3"] = shapes_eval.score(blurred, prompts, detector=detector)
    perm = np.random.default_rng(0).permutation(len(test["x"]))
    shuffled = {k: v[perm] for k, v in prompts.items()}
    results["shuffled_32"] = shapes_eval.score(test["x"], shuffled, detector=detector)
    results["chance_exact"] = shapes_eval.chance(prompts, test, seed=0)
    found = detector.detect(test["x"])
    results["count_accuracy"] = float(np.mean(found["count"] == test["count"]))
    train = _split("train", 5, 32)
    results.update(shapes_eval.fd_shapes(train["x"], train["x"], test["x"], detector=detector))
    results.pop("fd_shapes")

    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    columns = ("own_32", "own_64", "own_32_noise0.1", "own_32_noise0.2", "own_32_blur3",
               "shuffled_32")
    print("| category | " + " | ".join(columns) + " | chance (exact) |")
    print("|---" * (len(columns) + 2) + "|")
    for c, key in [(c, f"shapes_eval_{c}") for c in shapes.CATEGORIES] + [
            ("overall", "shapes_eval")]:
        row = [f"{results[k][key]:.4f}" for k in columns]
        print(f"| {c} | " + " | ".join(row) + f" | {results['chance_exact'][c]:.4f} |")
    for key in ("count_accuracy", "fd_shapes_floor", "detector_seconds",
                "generate_seconds_per_1000", "generate_seconds_55k_extrapolated",
                "prepare_seconds_shapes", "prepare_seconds_shapes_64"):
        if key in results:
            print(f"{key}: {results[key]:.4g}")


if __name__ == "__main__":
    main()
