"""Annealed Langevin dynamics vs predictor-corrector vs the ODE, on the exact digits mixture.

The ``langevin`` rows of the sampler benchmark (:mod:`experiments.benchmarks.sampler_nfe`
holds the other samplers): samples drawn with the exact 64-d digits mixture as the model
(``GaussianMixture.digits()``, so every error is the sampler's), scored by the Fréchet
distance of their Gaussian statistics to the mixture's exact ones, divided by the
finite-sample floor (exact samples of the same size). Samplers, all on the VE path
(``sigma`` in [0.01, 20], Song & Ermon's setting scaled to digits), logsnr grid:

* ``langevin`` (Song & Ermon 2019, Alg. 1): ``steps_per_level`` in {5, 10, 20}, the paper's
  step rule ``a_i = step_size sigma_i^2 / sigma_L^2`` with ``step_size`` in {1e-5, 2e-5 (the
  paper's), 4e-5}; NFE = levels x steps_per_level + 1 (the final denoise);
* ``pc`` (Song et al. 2021): reverse SDE + one Langevin corrector step (snr 0.16);
* ``heun``: the probability-flow ODE, for reference.

    python experiments/benchmarks/langevin_nfe.py [--out runs/benchmarks/langevin_nfe] [--quick]

Writes ``results.csv`` and ``results.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from diffjax import atomic, paths  # noqa: E402
from experiments.benchmarks import sampler_nfe  # noqa: E402

PATH = {"sigma_min": 0.01, "sigma_max": 20.0}
NFES = (100, 200, 500, 1000, 2000)
ODE_NFES = (20, 50, 100)


def runs(nfes):
    """``(label, sampler, budget, num_steps, options)`` of every row (num_steps <= budget)."""
    for nfe in nfes:
        for spl in (5, 10, 20):
            for step_size in (1e-5, 2e-5, 4e-5):
                levels = (nfe - 1) // spl
                yield (f"langevin(spl={spl}, step={step_size:g})", "langevin", nfe,
                       levels * spl + 1, {"steps_per_level": spl, "step_size": step_size})
        yield "pc(snr=0.16)", "pc", nfe, nfe, {}
    for nfe in ODE_NFES:
        yield "heun (ODE)", "heun", nfe, nfe, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/benchmarks/langevin_nfe")
    parser.add_argument("--quick", action="store_true", help="1000 samples, NFE 100, 500, 2000")
    args = parser.parse_args()
    n, nfes = (1000, (100, 500, 2000)) if args.quick else (2000, NFES)
    start = time.time()
    sampler_nfe.PATHS["ve"] = {}   # no sampler options; the path's own range is PATH
    ds, source = sampler_nfe.load_dataset("digits64", n)
    ds.paths["ve"] = paths.get("ve", **PATH)
    ds.models["ve"] = ds.mixture.model_fn(ds.paths["ve"], "x0")
    floor = ds.floor(n)
    print(f"{source}: n={n}, FD floor {floor:.4g}", flush=True)
    rows = []
    for label, sampler, budget, num_steps, options in runs(nfes):
        x, nfe = ds.draw("ve", sampler, num_steps, grid="logsnr", **options)
        fd = ds.fd(x)
        rows.append({"sampler": label, "budget": budget, "nfe": nfe, "fd": fd,
                     "fd_over_floor": fd / floor})
        print(f"[{time.time() - start:5.0f}s] {label:32s} NFE {nfe:5d}  FD {fd:.4g}  "
              f"FD/floor {fd / floor:.3g}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    atomic.write_csv(os.path.join(args.out, "results.csv"), rows)
    labels = list(dict.fromkeys(r["sampler"] for r in rows))
    all_nfes = sorted({r["budget"] for r in rows})
    lines = [f"FD / floor on the exact digits mixture (floor {floor:.4g}, {n} samples), VE path "
             f"sigma in [{PATH['sigma_min']}, {PATH['sigma_max']}], logsnr grid; "
             f"{(time.time() - start) / 60:.1f} min", "",
             "| sampler | " + " | ".join(f"NFE <= {k}" for k in all_nfes) + " |",
             "|---" * (1 + len(all_nfes)) + "|"]
    for label in labels:
        got = {r["budget"]: r["fd_over_floor"] for r in rows if r["sampler"] == label}
        lines.append(f"| {label} | " + " | ".join(f"{got[k]:.3g}" if k in got else ""
                                                  for k in all_nfes) + " |")
    atomic.write_text(os.path.join(args.out, "results.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
