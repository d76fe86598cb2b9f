"""Input pipeline: milliseconds per batch of in-memory data, grain's per-record loader against
diffjax's batch reader (diffjax.data.batches), the same data, seed and batch.

    python experiments/benchmarks/input_pipeline.py [--batches=50]

Each row reads one warm-up batch, then times ``--batches`` more with nothing else in the
process; a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from diffjax import data  # noqa: E402

CASES = (("digits", 128, False), ("digits", 128, True), ("moons", 256, False),
         ("shapes", 32, True))


def ms_per_batch(dataset: str, batch: int, flip: bool, per_record: bool, n: int) -> float:
    cfg = data.default_config()
    cfg.update(dataset=dataset, batch_size=batch, random_flip=flip)
    it = data.make_iterator(cfg, seed=0, per_record=per_record)
    next(it)
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    return 1e3 * (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args()
    print("| data set | batch | flip | per-record ms | batch reader ms | ratio |")
    print("|---|---:|---|---:|---:|---:|")
    for dataset, batch, flip in CASES:
        old = ms_per_batch(dataset, batch, flip, True, args.batches)
        new = ms_per_batch(dataset, batch, flip, False, args.batches)
        print(f"| {dataset} | {batch} | {flip} | {old:.2f} | {new:.3f} | {old / new:.0f}x |",
              flush=True)


if __name__ == "__main__":
    main()
