"""Start-up of repeated evaluations of one trained model, without and with the persistent
compilation cache (what a sweep's trials pay for every evaluation process).

    python experiments/benchmarks/eval_startup.py [--evals=3] [--config=configs/digits.py]

Trains a run of ``--train_steps`` steps once, then runs ``python -m diffjax.main --mode=sample``
on it ``--evals`` times with the cache off and ``--evals`` times with a fresh cache directory
(``--jax_cache_dir``). For each process: the wall time until the first batch of samples is out
("to first samples", from the process's start), the part of it spent in the sampling call
itself (compiling or loading its program, then 2-step sampling of one batch, as printed by
``diffjax.train.generate``), and the whole process. Everything is written under a temporary
directory, removed at the end; the real ~/.cache is not touched.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_main(args: list[str], cache: str) -> tuple[float, float, float]:
    """``(to first samples, inside the sampling call, whole process)`` in seconds."""
    env = {**os.environ, "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1", "DIFFJAX_JAX_CACHE": cache}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "diffjax.main", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first, inside = float("nan"), float("nan")
    for line in proc.stdout:
        found = re.search(r"sampling: batch 1/\d+ .*?, ([\d.]+)s\)", line)
        if found and first != first:
            first, inside = time.perf_counter() - start, float(found.group(1))
    if proc.wait():
        raise RuntimeError(f"diffjax.main {' '.join(args)} failed with status {proc.returncode}")
    return first, inside, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--evals", type=int, default=3)
    parser.add_argument("--train_steps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        common = [f"--config={args.config}", f"--workdir={run}",
                  "--config.training.progress_bar=False"]
        print("training ...", flush=True)
        run_main(common + [f"--config.training.num_steps={args.train_steps}",
                           "--config.training.eval_every=0"], "off")
        sample = common + ["--mode=sample", "--config.sampling.num_steps=2",
                           "--config.sampling.num_samples=16", "--config.eval.batch_size=16"]
        rows = []
        for label, cache in (("cache off", "off"), ("cache on", os.path.join(tmp, "jax"))):
            for i in range(args.evals):
                first, inside, whole = run_main(sample, cache)
                rows.append((label, i + 1, first, inside, whole))
                print(f"{label} eval {i + 1}: first samples at {first:.1f} s "
                      f"(sampling call {inside:.1f} s), process {whole:.1f} s", flush=True)
        load = "load average %.1f %.1f %.1f" % os.getloadavg()
        print(f"\n{os.cpu_count()}-core CPU, {load}; {args.config}, {args.evals} evaluations "
              f"each.\n")
        print("| cache | evaluation | to first samples (s) | sampling call (s) | process (s) |")
        print("|---|---:|---:|---:|---:|")
        for label, i, first, inside, whole in rows:
            print(f"| {label} | {i} | {first:.1f} | {inside:.1f} | {whole:.1f} |")
        off = [r[2] for r in rows if r[0] == "cache off"]
        on = [r[2] for r in rows if r[0] == "cache on"][1:]
        if off and on:
            print(f"\nmedian to first samples: cache off {statistics.median(off):.1f} s, "
                  f"cache on (2nd and later) {statistics.median(on):.1f} s")


if __name__ == "__main__":
    main()
