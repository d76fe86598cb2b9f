"""Command line: train, sample from or evaluate a run.

    python -m diffjax.main --config=configs/digits.py --workdir=runs/digits \
        [--mode=train|sample|eval] [--config.group.key=value ...]

``train`` resumes from the newest valid checkpoint in ``--workdir``. ``sample`` writes a grid
and an ``.npz`` of ``config.sampling.num_samples`` samples from the EMA parameters of the
newest checkpoint; ``eval`` appends ``config.eval.metrics`` of such samples to
``metrics.jsonl``. With ``--restore_from=RUN`` they read RUN's checkpoint and write to
``--workdir`` (one trained model, many sampling settings). Multi-host: start one process
per host with ``--coordinator_address``, ``--num_processes`` and ``--process_id`` (or the
``JAX_*`` environment variables, or a SLURM/Open MPI job).

A config problem is reported before any compute as one line naming the key, the value and
the valid choices, with exit status 2.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from diffjax import config_validation
from diffjax.config_validation import ConfigError

MODES = ("train", "sample", "eval")
USAGE_ERROR = 2

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/NAME.py[:recipe]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (checkpoints, metrics, "
                               "samples).")
_MODE = flags.DEFINE_string("mode", "train", f"One of {', '.join(MODES)}.")
_RESTORE_FROM = flags.DEFINE_string(
    "restore_from", None, "sample/eval only: read the checkpoint from this run directory and "
    "write the outputs to --workdir (several evaluations of one trained model, e.g. a sweep).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 in a multi-host run ('auto': let "
    "JAX detect the cluster).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, "
                                   "num_processes).")


def _fail(message: str, status: int = USAGE_ERROR) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's parsing, with every problem turned into one line and exit status 2."""
    for arg in argv[1:]:
        if arg.startswith("--config.") and "=" in arg:
            error = config_validation.is_known_override(arg[len("--config."):].split("=")[0])
            if error is not None:
                _fail(str(error))
    try:
        rest = flags.FLAGS(list(argv))
        # orbax and tfds log every file at INFO: warnings and up unless -v/--verbosity asks.
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        return rest
    except Exception as e:  # absl/ml_collections raise several types; all are usage errors
        message = " ".join(str(e).replace("\\n", " ").split())
        _fail(f"bad command line: {message}")


def _checked_config():
    config = _CONFIG.value
    if config is None:
        _fail("--config is required (e.g. --config=configs/digits.py)")
    if not _WORKDIR.value:
        _fail("--workdir is required")
    if _MODE.value not in MODES:
        _fail(f"--mode={_MODE.value!r} is not valid; valid choices: {', '.join(MODES)}")
    if _RESTORE_FROM.value and _MODE.value == "train":
        _fail("--restore_from is for --mode=sample|eval; training resumes from --workdir")
    return config


def _sample(config, workdir: str, source: str) -> None:
    """Writes ``samples/sample_<step>.png`` and ``.npz`` (``x``, ``labels``) from the EMA of
    the newest checkpoint in ``source``."""
    import numpy as np

    from diffjax import parallel, reporting, train

    recipe, state, step = train.restore_for_inference(config, source)
    samples, labels = train.generate(recipe, state.ema_params, config.sampling,
                                     config.sampling.num_samples, config.eval.batch_size)
    if parallel.is_main_process():
        name = f"sample_{step:07d}"
        paths = reporting.save_figures(workdir, name, samples, recipe.data_info.kind)
        npz = os.path.join(workdir, "samples", f"{name}.npz")
        np.savez(npz, x=samples, **({} if labels is None else {"labels": labels}))
        print(f"wrote {npz} and {', '.join(paths)}")


def _eval(config, workdir: str, source: str) -> None:
    """Appends ``{"step", "mode": "eval", <metrics>}`` to ``workdir/metrics.jsonl`` for the
    newest checkpoint in ``source``."""
    from diffjax import parallel, reporting, train

    recipe, state, step = train.restore_for_inference(config, source)
    results = train.evaluate(recipe, state.ema_params, config, workdir, f"eval_{step:07d}")
    writer = reporting.MetricsWriter(workdir, enabled=parallel.is_main_process())
    writer.write(step, {"mode": "eval", **results}, prefix="eval/")
    writer.close()
    if parallel.is_main_process():
        print(" ".join(f"{k}={v:.5g}" for k, v in results.items()))


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _checked_config()
    workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
    from diffjax import checkpoint, data, parallel, train

    try:
        config_validation.validate(config, process_count=_NUM_PROCESSES.value or 1)
        source = workdir
        if _RESTORE_FROM.value:
            source = os.path.abspath(os.path.expanduser(_RESTORE_FROM.value))
        if _MODE.value == "train" or source != workdir:
            checkpoint.check_workdir(workdir)
        checkpoint.check_compatible(source, config)
        parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        import jax

        config_validation.check_devices(config, jax.device_count(), jax.process_count())
        if _MODE.value == "train":
            train.train(config, workdir)
        else:
            if source != workdir:
                checkpoint.write_config(workdir, config)  # what was evaluated, beside its numbers
            (_sample if _MODE.value == "sample" else _eval)(config, workdir, source)
    except (ConfigError, data.DatasetNotPreparedError) as e:
        _fail(str(e))
    except train.NonFiniteError as e:
        _fail(str(e), status=1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
