"""Post-hoc EMA of a trained run (EDM2, Karras et al. 2024, Sec. 3):

    python -m diffjax.ema --workdir=DIR --sigma_rel=0.05,0.1,0.15 [--step=N]

reconstructs, for each ``sigma_rel``, the power-function EMA of that length ending at step
``N`` (default: the newest snapshot) from the snapshots a ``training.ema="power"`` run saved
(:mod:`diffjax.training.power_ema`), by the least-squares fit of :func:`diffjax.phema.solve`,
and writes it to ``DIR/ema_reconstructed/sigma_rel_<s>/<N>.npz``. Sample or evaluate it with
``python -m diffjax.main --mode=sample|eval --workdir=DIR --config.sampling.ema=sigma_rel:<s>``
(the newest reconstruction of that length). Existing files are kept, never overwritten.

Every argument is checked before anything is computed; a problem is one line on stderr and
exit status 2. Snapshots are read one at a time (memory: one float64 accumulator per target).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from diffjax import checkpoint as ckpt_lib
from diffjax import phema
from diffjax.errors import ConfigError
from diffjax.training import power_ema


def _check(workdir: str, sigma_rels: Sequence[float], step: Optional[int]) -> tuple[list, int]:
    """``(snapshot steps, target step)``, or ConfigError naming the argument."""
    for s in sigma_rels:
        if not 0 < s <= phema.MAX_SIGMA_REL:
            raise ConfigError(f"--sigma_rel={s:g} is outside (0, {phema.MAX_SIGMA_REL:.4f}] "
                              "(longer power-function EMAs do not exist; EDM2 tracks 0.05, 0.1)")
    config = ckpt_lib.load_config(workdir)
    if config is None:
        raise ConfigError(f"--workdir={workdir} holds no run (no {ckpt_lib.CONFIG_FILE})")
    mode = config.training.get("ema", "classic")
    if mode != "power":
        raise ConfigError(f"--workdir={workdir} was trained with training.ema={mode!r}, which "
                          "saves no EMA snapshots; post-hoc EMA needs a run trained with "
                          "--config.training.ema=power")
    steps = power_ema.snapshot_steps(workdir)
    if not steps:
        raise ConfigError(f"--workdir={workdir} has no EMA snapshots in "
                          f"{os.path.join(workdir, power_ema.SNAPSHOT_DIR)}; train it (with "
                          "training.ema=power) past training.ema_snapshot_every steps first")
    step = steps[-1] if step is None else step
    if not 1 <= step <= steps[-1]:
        raise ConfigError(f"--step={step} is outside the snapshots' range [1, {steps[-1]}] "
                          f"of {workdir}")
    return steps, step


def _headers(workdir: str, steps: Sequence[int]) -> list[tuple[int, np.ndarray, int]]:
    """``(step, sigma_rels, updates)`` of each snapshot (its small arrays only)."""
    out = []
    for s in steps:
        with np.load(power_ema.snapshot_path(workdir, s)) as f:
            out.append((s, np.asarray(f["sigma_rels"]), int(f["updates"])))
    return out


def _updates_at(headers, step: int) -> int:
    """Applied updates at ``step``: a snapshot's count, plus the steps since (none skipped)."""
    before = [(s, u) for s, _, u in headers if s <= step]
    return before[-1][1] + step - before[-1][0] if before else step


def reconstruct(workdir: str, sigma_rels: Sequence[float],
                step: Optional[int] = None) -> list[tuple[float, str, bool, float]]:
    """Writes the EMA of each ``sigma_rel`` at ``step``; returns ``(sigma_rel, path, written,
    relative fit error of the averaging weights)`` per target (``written`` False: the file
    existed and was kept).

    Raises:
      ConfigError: bad arguments or no snapshots to reconstruct from (before any compute).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    steps, step = _check(workdir, sigma_rels, step)
    headers = _headers(workdir, steps)
    basis = [(phema.sigma_rel_to_gamma(float(r)), u) for _, rels, u in headers for r in rels]
    target_updates = _updates_at(headers, step)
    length = max(u for _, u in basis)
    coefficients, errors = [], []
    for s in sigma_rels:
        goal = (phema.sigma_rel_to_gamma(s), target_updates)
        x = phema.solve(basis, goal)
        fit = np.stack([phema.weights(g, u, length) for g, u in basis], 1) @ x
        truth = phema.weights(*goal, length)
        coefficients.append(x)
        errors.append(float(np.linalg.norm(fit - truth) / np.linalg.norm(truth)))

    sums: list[dict[str, np.ndarray]] = [{} for _ in sigma_rels]
    j = 0  # column of the basis: snapshot by snapshot, EMA by EMA
    for s, rels, _ in headers:
        with np.load(power_ema.snapshot_path(workdir, s)) as f:
            for i in range(len(rels)):
                prefix = f"ema{i}"
                for name in (n for n in f.files if n.startswith(prefix + "[")):
                    value = np.asarray(f[name], np.float64)
                    for acc, x in zip(sums, coefficients):
                        key = name[len(prefix):]
                        acc[key] = acc.get(key, 0.0) + x[j] * value
                        acc.setdefault("__dtype__" + key, np.asarray(f[name]).dtype)
                j += 1
    results = []
    for s, acc, err in zip(sigma_rels, sums, errors):
        flat = {k: v.astype(acc["__dtype__" + k]) for k, v in acc.items()
                if not k.startswith("__dtype__")}
        written = power_ema.save_reconstruction(workdir, s, step, flat)
        results.append((s, power_ema.reconstruction_path(workdir, s, step), written, err))
    return results


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diffjax.ema", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run trained with training.ema=power")
    parser.add_argument("--sigma_rel", required=True,
                        help="comma-separated EMA lengths, each in (0, 0.2887]")
    parser.add_argument("--step", type=int, default=None,
                        help="the training step the EMAs end at (default: newest snapshot)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        try:
            sigma_rels = [float(s) for s in args.sigma_rel.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--sigma_rel={args.sigma_rel!r} is not a comma-separated list of "
                              "numbers (e.g. 0.05,0.1,0.15)") from None
        if not sigma_rels:
            raise ConfigError("--sigma_rel is empty; give e.g. 0.05,0.1,0.15")
        results = reconstruct(args.workdir, sigma_rels, args.step)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    for s, path, written, err in results:
        what = "wrote" if written else "kept existing"
        print(f"sigma_rel={s:g}: {what} {path} (weights fit to {err:.1e} relative error); "
              f"sample it with --config.sampling.ema=sigma_rel:{s:g}", flush=True)
        if err > 0.05:
            print(f"  warning: the snapshots represent this EMA poorly ({err:.0%} error in its "
                  "averaging weights): reconstruct at a snapshot's step, or save snapshots "
                  "more often (training.ema_snapshot_every)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
