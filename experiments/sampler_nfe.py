"""The sampler benchmark (experiments/benchmarks/sampler_nfe.py) as a sweep of one trial.

The benchmark samples the exact Gaussian-mixture denoiser (no training: every error is the
sampler's) with every sampler x time grid x path at NFE 5..100 on the 64-d digits mixture and
the 2-D ring, and scores the samples by the Fréchet distance to the mixture's exact moments
over the floor of exact samples of the same size. This sweep runs it once and tabulates, for
each data set and sampler, the best FD/floor over paths and grids at each NFE budget (which
path and grid won is in the benchmark's own ``results.md`` under ``DIR/benchmark/``).

    python -m diffjax.sweep --sweep=experiments/sampler_nfe.py --workdir=runs/experiments/sampler_nfe
"""
import csv
import math
import os

from diffjax.sweep import Script, Sweep


def best_per_sampler(trial_dir: str) -> list[dict]:
    """One row per (dataset, sampler): min FD/floor over paths and grids at each budget."""
    with open(os.path.join(trial_dir, "results.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    budgets = sorted({int(r["budget"]) for r in rows if not r["sampler"].startswith("adaptive")})
    out = {}
    for r in rows:
        if r["sampler"].startswith("adaptive") or r["grid"] == "tuned":
            continue
        key = (r["dataset"], r["sampler"])
        row = out.setdefault(key, {"dataset": key[0], "sampler": key[1],
                                   **{f"NFE {b}": math.inf for b in budgets}})
        col = f"NFE {int(r['budget'])}"
        row[col] = min(row[col], float(r["fd_over_floor"]))
    return list(out.values())


SWEEP = Sweep(
    grid=[{"name": "benchmark"}],
    script=Script("experiments/benchmarks/sampler_nfe.py", rows=best_per_sampler,
                  args=("--workers", "1"), images=("sampler_nfe.png",)),
    description="Exact-mixture sampler benchmark: best FD/floor (1 = as good as exact samples) "
                "over paths (vp_linear, vp_cosine, edm, rectified_flow) and grids (uniform, "
                "quadratic, logsnr, karras) for each sampler and NFE budget.",
)
