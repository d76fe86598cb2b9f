"""Sampler numerics on the exact digits mixture: the measurements behind four defaults.

The model is ``GaussianMixture.digits().model_fn`` (the exact denoiser of the 64-d digits
mixture, so every error is the sampler's); samples are scored by the Fréchet distance to the
mixture's exact moments over the floor of exact samples of the same size (FD/floor, 1 = as
good as exact samples) and, for deterministic samplers, by the RMS distance to the
probability-flow ODE's own solution from the same noise (a tight adaptive solve in float64;
samplers that end with ``x0_hat`` are compared with the solution's ``x0_hat``). Tables:

1. ``discrete``: DDIM, ancestral DDPM and DPM-Solver++(2M) on the ``ddpm`` path with the
   integer spacings ``leading`` / ``trailing`` / ``linspace`` and the former default
   (``uniform`` in t, here rounded to the training times): picks :data:`DISCRETE_GRID`.
2. ``convention``: DPM-Solver++ 2M/3M and UniPC-3 (bh2) at 5-10 NFE (and 15, 20) with Lu et
   al.'s / Zhao et al.'s reference convention vs diffusers' (final step to sigma = 0, lower
   order below 15 steps), on vp_linear and vp_cosine: picks ``DEFAULT_CONVENTION``.
3. ``variable``: Euler / Heun / RK4 stepping in ``t`` (before) or in ``sigma/alpha`` on every
   continuous path, NFE 10-200, with the empirical order: picks the ODE variable per path.
4. ``clipping``: DDIM on the ddpm path without / with x0 clipping (c = 1) / with dynamic
   thresholding (p = 0.995); the digits pixels lie in [-1, 1].

Usage::

    python experiments/benchmarks/sampler_numerics.py [--n 1000] [--quick] [--only variable]

Prints the tables (markdown). Float64 throughout.
"""
from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import paths
from diffjax.analytic import GaussianMixture
from diffjax.evaluate.frechet import frechet_distance

# Rectified flow on EDM's sigma/alpha range, so that both variables are defined.
PATHS = {"vp_linear": {}, "vp_cosine": {}, "edm": {},
         "rectified_flow": {"t_min": 0.002 / 1.002, "t_max": 80.0 / 81.0}, "ddpm": {}}
DENOISED = ("ddpm", "ddim", "euler", "heun", "rk4")


class Bench:
    def __init__(self, n: int):
        self.mixture = GaussianMixture.digits()
        self.n = n
        self.mean, self.cov = self.mixture.mean(), self.mixture.covariance()
        self.paths = {p: paths.get(p) for p in PATHS}
        self.models = {p: self.mixture.model_fn(self.paths[p], "x0") for p in PATHS}
        self.floor = float(np.mean([self.fd(self.mixture.sample(jax.random.PRNGKey(10_000 + s),
                                                                n)[0]) for s in range(3)]))
        self.refs = {}

    def fd(self, x) -> float:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        return frechet_distance(x.mean(0), np.cov(x.T), self.mean, self.cov)

    def draw(self, path_name: str, sampler: str, num_steps: int, **options):
        x, info = diffjax.sample(self.models[path_name], self.paths[path_name],
                                 (self.n,) + self.mixture.event_shape, jax.random.PRNGKey(0),
                                 target="x0", sampler=sampler, num_steps=num_steps,
                                 return_info=True, **{**PATHS[path_name], **options})
        return np.asarray(x).reshape(self.n, -1), int(info.nfe)

    def reference(self, path_name: str):
        """The ODE's solution at t_min and its x0_hat, from the same noise (key 0)."""
        if path_name not in self.refs:
            x, _ = self.draw(path_name, "adaptive", 200_000, rtol=1e-8, atol=1e-8)
            path = self.paths[path_name]
            t_min = PATHS[path_name].get("t_min", path.t_min)
            x0 = self.models[path_name](jnp.asarray(x).reshape((-1,) + self.mixture.event_shape),
                                        jnp.full((self.n,), t_min))
            self.refs[path_name] = (x, np.asarray(x0).reshape(self.n, -1))
        return self.refs[path_name]

    def score(self, x, path_name=None, denoised=True) -> dict:
        out = {"fd/floor": self.fd(x) / self.floor}
        if path_name is not None:
            ref = self.reference(path_name)[1 if denoised else 0]
            out["rms"] = float(np.sqrt(np.mean((x - ref) ** 2)))
        return out


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def discrete(b: Bench, nfes) -> str:
    rows = []
    for sampler, options in (("ddim", {}), ("ddpm", {}), ("dpm_solver++", {"order": 2})):
        for grid in ("uniform", "leading", "linspace", "trailing"):
            cells = []
            for n in nfes:
                x, _ = b.draw("ddpm", sampler, n, grid=grid, **options)
                cells.append(f"{b.score(x)['fd/floor']:.2f}")
            rows.append([sampler, grid] + cells)
    return table(["sampler", "grid (ddpm path)"] + [f"FD/floor @{n}" for n in nfes], rows)


def convention(b: Bench, nfes) -> str:
    rows = []
    for path_name in ("vp_linear", "vp_cosine"):
        for label, sampler, options in (("dpm_solver++(2M)", "dpm_solver++", {"order": 2}),
                                        ("dpm_solver++(3M)", "dpm_solver++", {"order": 3}),
                                        ("unipc-3(bh2)", "unipc", {"order": 3})):
            for conv in ("reference", "diffusers"):
                fds, rms = [], []
                for n in nfes:
                    x, _ = b.draw(path_name, sampler, n, convention=conv, **options)
                    s = b.score(x, path_name, denoised=conv == "diffusers")
                    fds.append(f"{s['fd/floor']:.2f}")
                    rms.append(f"{s['rms']:.3g}")
                rows.append([path_name, label, conv] + fds + rms)
    return table(["path", "sampler", "convention"] + [f"FD/floor @{n}" for n in nfes]
                 + [f"RMS vs ODE @{n}" for n in nfes], rows)


def variable(b: Bench, nfes) -> str:
    rows = []
    for path_name in ("vp_linear", "vp_cosine", "edm", "rectified_flow"):
        for sampler in ("euler", "heun", "rk4"):
            for var in ("t", "sigma"):
                errs, fds, used = [], [], []
                for n in nfes:
                    x, nfe = b.draw(path_name, sampler, n, variable=var)
                    s = b.score(x, path_name)
                    errs.append(s["rms"])
                    fds.append(s["fd/floor"])
                    used.append(nfe)
                order = math.log(errs[-2] / errs[-1]) / math.log(used[-1] / used[-2])
                rows.append([path_name, sampler, var] + [f"{e:.3g}" for e in errs]
                            + [f"{fds[-1]:.3f}", f"{order:.2f}"])
    return table(["path", "sampler", "variable"] + [f"RMS vs ODE @{n}" for n in nfes]
                 + [f"FD/floor @{nfes[-1]}", f"order ({nfes[-2]}->{nfes[-1]})"], rows)


def clipping(b: Bench, nfes) -> str:
    rows = []
    for label, options in (("none", {}), ("clip_x0=1", {"clip_x0": 1.0}),
                           ("dynamic_threshold=0.995", {"dynamic_threshold": 0.995})):
        cells = []
        for n in nfes:
            x, _ = b.draw("ddpm", "ddim", n, **options)
            cells.append(f"{b.score(x)['fd/floor']:.2f}")
        rows.append([label] + cells)
    return table(["DDIM on ddpm, x0 constraint"] + [f"FD/floor @{n}" for n in nfes], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="samples per run (64-d)")
    parser.add_argument("--quick", action="store_true", help="fewer budgets")
    parser.add_argument("--only", choices=("discrete", "convention", "variable", "clipping"))
    args = parser.parse_args()
    start = time.time()
    with jax.enable_x64(True):
        b = Bench(args.n)
        print(f"digits64 exact mixture, n={args.n}, floor {b.floor:.4g}; "
              f"{jax.device_count()} {jax.default_backend()} device(s)\n")
        sections = {
            "discrete": (discrete, (5, 10) if args.quick else (5, 10, 20, 50)),
            "convention": (convention, (5, 10) if args.quick else (5, 6, 7, 8, 10, 15, 20)),
            "variable": (variable, (20, 40) if args.quick else (10, 20, 50, 100, 200)),
            "clipping": (clipping, (10,) if args.quick else (5, 10, 20, 50)),
        }
        for name, (fn, nfes) in sections.items():
            if args.only in (None, name):
                t0 = time.time()
                print(f"## {name}\n\n{fn(b, nfes)}\n\n({time.time() - t0:.0f}s)\n", flush=True)
    print(f"total {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
