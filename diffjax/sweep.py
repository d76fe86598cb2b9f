"""Sweeps: a grid of ordinary ``diffjax.main`` runs, their table and their plots.

    python -m diffjax.sweep --sweep=experiments/NAME.py --workdir=DIR [--quick]
        [--launcher=local|slurm|submitit_local] [--max_parallel=N] [--slurm.KEY=VALUE ...]
    python -m diffjax.sweep --workdir=DIR --status

A sweep file defines ``SWEEP = Sweep(...)`` (:mod:`diffjax.sweeps.declare`); each distinct
training is run once and every trial evaluates its model (:mod:`diffjax.sweeps.running`), as
local subprocesses or as submitit jobs on a SLURM cluster (:mod:`diffjax.sweeps.launchers`);
``DIR/results.csv``, ``DIR/results.md`` and the plots are written as trials finish
(:mod:`diffjax.sweeps.report`). Re-running a sweep runs only what is unfinished, re-attaching
to jobs still running; ``--status`` prints each trial's state. A bad sweep, config or option
fails with exit status 2 before any job is submitted.

This module is the command line; sweep files import their names from it
(``from diffjax.sweep import Plot, Sweep, product``).
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags, logging

from diffjax.sweeps.declare import (TAG, TRAIN_DIR, Plot, Script, Sweep, SweepError,  # noqa: F401
                                    Trial, build_config, check, load_sweep, make_trials,
                                    product)
from diffjax.sweeps.identity import EVAL_GROUPS, code_version  # noqa: F401
from diffjax.sweeps.launchers import LAUNCHERS, parse_slurm_options
from diffjax.sweeps.records import RESULT_FILE  # noqa: F401
from diffjax.sweeps.report import make_plot, markdown_table, write_outputs  # noqa: F401
from diffjax.sweeps.running import run  # noqa: F401
from diffjax.sweeps.status import format_states, trial_states

USAGE_ERROR = 2
SLURM_PREFIX = "--slurm."
_slurm_args: list[str] = []


def _define_flags() -> None:
    """Defined only when run as a program: sweep configs import this module inside
    diffjax.main, whose flags (``--workdir``) must not be defined twice."""
    flags.DEFINE_string("sweep", None, "Sweep file (experiments/NAME.py).")
    flags.DEFINE_string("workdir", None, "Directory of the sweep's trials and outputs.")
    flags.DEFINE_bool("quick", False, "The sweep's quick mode (minutes on a CPU; CI).")
    flags.DEFINE_enum("launcher", "local", LAUNCHERS,
                      "local: subprocesses of this command; slurm: submitit jobs on a SLURM "
                      "cluster; submitit_local: the slurm code path on this machine.")
    flags.DEFINE_integer("max_parallel", None, "Jobs in flight at a time (default: --workers "
                         "for local, no cap for the submitit launchers).")
    flags.DEFINE_integer("workers", 1, "Local launcher: trials run at a time.")
    flags.DEFINE_bool("retry_failed", False, "Run failed trials again.")
    flags.DEFINE_bool("status", False, "Print each trial's state in --workdir and exit.")


def _parse(argv: Sequence[str]) -> list[str]:
    """absl parses everything but ``--slurm.KEY=VALUE``, whose keys are checked here."""
    _slurm_args.extend(a for a in argv[1:] if a.startswith(SLURM_PREFIX))
    return flags.FLAGS([a for a in argv if not a.startswith(SLURM_PREFIX)])


def main(argv: Sequence[str]) -> None:
    args = flags.FLAGS
    if not args["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        _exit(f"unexpected arguments: {' '.join(argv[1:])}")
    if not args.workdir:
        _exit("--workdir is required")
    try:
        if args.status:
            print(format_states(trial_states(args.workdir)), flush=True)
            return
        if not args.sweep:
            _exit("--sweep is required (e.g. --sweep=experiments/ddim_steps.py)")
        run(args.sweep, args.workdir, quick=args.quick, workers=args.workers,
            retry_failed=args.retry_failed, launcher=args.launcher,
            slurm=parse_slurm_options(_slurm_args), max_parallel=args.max_parallel,
            log=lambda m: print(m, flush=True))
    except SweepError as e:
        _exit(str(e))


def _exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


if __name__ == "__main__":
    # Sweep files import diffjax.sweep: let them get this module, not a second copy.
    sys.modules["diffjax.sweep"] = sys.modules[__name__]
    _define_flags()
    app.run(main, flags_parser=_parse)
