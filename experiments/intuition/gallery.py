"""The gallery's registry and command line: every figure, or the ones named by ``--only``.

Each figure is a module with ``make(out_dir, *, fast, seed) -> dict``: it writes
``out_dir/<name>.png`` and returns the numbers the picture shows, so tests check numbers,
not pixels.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Optional, Sequence

from experiments.intuition import (fields, few_steps, forward, guidance, one_step,
                                   opening_failure, page, schedules, spectrum)

FIGURES: dict[str, Callable[..., dict]] = {
    "forward": forward.make,
    "schedules": schedules.make,
    "spectrum": spectrum.make,
    "one_step": one_step.make,
    "fields": fields.make,
    "guidance": guidance.make,
    "few_steps": few_steps.make,
    "opening_failure": opening_failure.make,
}


def parse_only(only: Optional[str]) -> list[str]:
    """``"forward,fields"`` -> ``["forward", "fields"]``; None or "" -> every figure."""
    names = [n.strip() for n in (only or "").split(",") if n.strip()] or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ValueError(f"Unknown figure(s) {unknown}; valid figures: {', '.join(FIGURES)}")
    return names


def run(out_dir: str, only: Optional[str] = None, fast: bool = False, seed: int = 0,
        verbose: bool = True, cache_dir: Optional[str] = None) -> dict[str, dict]:
    """Makes the named figures in ``out_dir``; returns each figure's numbers by name.
    ``cache_dir``: where ``opening_failure`` finds (or trains) the digits classifier."""
    results = {}
    for name in parse_only(only):
        start = time.time()
        extra = {"cache_dir": cache_dir} if name == "opening_failure" else {}
        results[name] = FIGURES[name](out_dir, fast=fast, seed=seed, **extra)
        if verbose:
            print(f"{name}: {results[name]['png']} ({time.time() - start:.1f} s)", flush=True)
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.intuition",
                                     description="Regenerates the intuition gallery.")
    parser.add_argument("--out", default="", help="directory for the PNG files")
    parser.add_argument("--html", default="",
                        help="directory for the interactive page (index.html + its frames)")
    parser.add_argument("--cache_dir", default=None,
                        help="where the digits classifier is cached (default "
                             "~/.cache/diffjax/eval, as config.eval.cache_dir)")
    parser.add_argument("--only", default="",
                        help=f"comma-separated figures (default all): {', '.join(FIGURES)}")
    parser.add_argument("--fast", action="store_true",
                        help="fewer samples, steps and grid points (CI); same figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--t2i_workdir", default="",
                        help="a trained configs/shapes_t2i.py run: adds the page's prompt panel")
    args = parser.parse_args(argv)
    if not args.out and not args.html:
        parser.error("give --out=DIR (the figures), --html=DIR (the page), or both")
    try:
        names = parse_only(args.only)
    except ValueError as err:
        parser.error(str(err))
    if args.out:
        run(args.out, ",".join(names), fast=args.fast, seed=args.seed, cache_dir=args.cache_dir)
    if args.html:
        built = page.build(args.html, fast=args.fast, seed=args.seed, cache_dir=args.cache_dir,
                           t2i_workdir=args.t2i_workdir or None)
        print(f"page: {built['html']}", flush=True)
