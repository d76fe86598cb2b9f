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
the valid choices, with exit status 2. The order matters for multi-host runs: the checks
that run no JAX computation come first, then the processes join
(``jax.distributed.initialize`` refuses to start after any JAX computation), then the
remaining checks, whose verdict all processes share before any of them computes.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from absl import app, flags, logging

from diffjax import config_loading, config_validation
from diffjax.choices import MODES
from diffjax.errors import ConfigError, NonFiniteError

USAGE_ERROR = 2

_CONFIG = flags.DEFINE_string("config", None, "Config file (configs/NAME.py[:recipe]); "
                              "override its keys with --config.group.key=value.")
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
_JAX_CACHE = flags.DEFINE_string("jax_cache_dir", None, "Persistent compilation cache directory "
                                  "(default $DIFFJAX_JAX_CACHE or ~/.cache/diffjax/jax; 'off').")
# The --config.group.key=value arguments, in order; parsed by diffjax.config_loading.
_OVERRIDES: list[str] = []


def _fail(message: str, status: int = USAGE_ERROR) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _is_override(arg: str) -> bool:
    return arg.lstrip("-").startswith(("config.", "noconfig."))


def _parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's parsing, with every problem turned into one line and exit status 2; the
    ``--config.*`` overrides are kept aside for :func:`diffjax.config_loading.load`."""
    _OVERRIDES.clear()
    for arg in argv[1:]:
        if _is_override(arg):
            bare = arg.lstrip("-")
            _OVERRIDES.append(bare[len("no"):] + "=false" if bare.startswith("no") else bare)
    try:
        rest = flags.FLAGS([a for a in argv if not _is_override(a)])
        # orbax and tfds log every file at INFO: warnings and up unless -v/--verbosity asks.
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        return rest
    except Exception as e:  # absl raises several types; all are usage errors
        message = " ".join(str(e).replace("\\n", " ").split())
        _fail(f"bad command line: {message}")


def _checked_flags() -> None:
    if not _CONFIG.value:
        _fail("--config is required (e.g. --config=configs/digits.py)")
    if not _WORKDIR.value:
        _fail("--workdir is required")
    if _MODE.value not in MODES:
        _fail(f"--mode={_MODE.value!r} is not valid; valid choices: {', '.join(MODES)}")
    if _RESTORE_FROM.value and _MODE.value == "train":
        _fail("--restore_from is for --mode=sample|eval; training resumes from --workdir")


def _headline(results: dict[str, float]) -> list[str]:
    """One line per metric, next to its floor (or the real data's value) where it has one:
    ``fd_classifier = 3.1 (floor 2.9: real data scores this)``."""
    lines = []
    for key, value in results.items():
        if key.endswith(("_floor", "_real", "_uncontrolled")):
            continue
        line = f"  {key} = {value:.5g}"
        for suffix, what in (("_floor", "floor"), ("_real", "real data"),
                             ("_uncontrolled", "base without control")):
            if key + suffix in results:
                line += f"   ({what}: {results[key + suffix]:.5g})"
        lines.append(line)
    return lines


def _read_prompts(sampling) -> Optional[list[str]]:
    """``config.sampling.prompt`` / ``prompts_file`` (one prompt per non-empty line)."""
    if sampling.get("prompt") is not None and sampling.get("prompts_file") is not None:
        raise ConfigError("set config.sampling.prompt or config.sampling.prompts_file, not both")
    if sampling.get("prompt") is not None:
        return [str(sampling.prompt)]
    if sampling.get("prompts_file") is None:
        return None
    path = os.path.expanduser(sampling.prompts_file)
    if not os.path.isfile(path):
        raise ConfigError(f"config.sampling.prompts_file={sampling.prompts_file!r} does not exist")
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ConfigError(f"config.sampling.prompts_file={sampling.prompts_file!r} holds no "
                          "prompt (one per line)")
    return prompts


def _sample(config, workdir: str, source: str) -> None:
    """Writes ``samples/sample_<step>.png`` and ``.npz`` (``x``, ``labels`` or ``prompts``)
    from the EMA of the newest checkpoint in ``source``; with prompts, a grid row of
    ``samples_per_prompt`` images per prompt, titled with it."""
    import numpy as np

    from diffjax import parallel, reporting, train
    from diffjax.text import conditioning

    prompts = _read_prompts(config.sampling)
    if prompts is not None:
        text = conditioning.from_config(config)
        if text is None:
            raise ConfigError("config.sampling.prompt(s_file) needs a text-conditioned model "
                              "(config.model.text_encoder: minilm, learned or precomputed)")
        try:  # an unknown word or a too-long prompt: refused before any restoring
            text.encode(prompts)
        except ValueError as e:
            raise ConfigError(f"config.sampling.prompt: {e}") from None
        per = int(config.sampling.samples_per_prompt)
        if per < 1:
            raise ConfigError(f"config.sampling.samples_per_prompt={per} must be >= 1")
    from diffjax.controlnet import editing

    if editing.requested(config):  # control, image-to-image, inpainting, a ControlNet run
        from diffjax.controlnet import cli
        return cli.run(config, workdir, source, prompts)
    recipe, state, step = train.restore_for_inference(config, source)
    bar = bool(config.training.get("progress_bar", True))  # over the sampler's steps
    if prompts is not None:
        expanded = np.repeat(np.asarray(prompts, dtype=object), per)
        samples, what = train.generate(recipe, state.ema_params, config.sampling,
                                       len(expanded), config.eval.batch_size, prompts=expanded,
                                       steps_bar=bar)
    else:
        samples, what = train.generate(recipe, state.ema_params, config.sampling,
                                       config.sampling.num_samples, config.eval.batch_size,
                                       steps_bar=bar)
    if parallel.is_main_process():
        name = f"sample_{step:07d}"
        if prompts is not None:  # one file per prompt set and scale: earlier grids stay
            import hashlib
            key = "\n".join(prompts) + f"|{config.sampling.guidance_scale}|{per}"
            name += "_" + hashlib.sha256(key.encode()).hexdigest()[:8]
        npz = os.path.join(workdir, "samples", f"{name}.npz")
        if prompts is not None:
            os.makedirs(os.path.dirname(npz), exist_ok=True)
            paths = [os.path.join(workdir, "samples", f"{name}_prompts.png")]
            reporting.save_prompt_grid(
                paths[0], samples, prompts, per,
                title=f"guidance {config.sampling.guidance_scale:g}, "
                      f"{config.sampling.sampler} x {config.sampling.num_steps}")
        else:
            paths = reporting.save_figures(workdir, name, samples, recipe.data_info.kind)
        extra = {} if what is None else (
            {"prompts": what.astype(str)} if what.dtype == object else {"labels": what})
        np.savez(npz, x=samples, **extra)
        finite = int(np.isfinite(samples.reshape(len(samples), -1)).all(axis=1).sum())
        print(f"sampled {len(samples)} from step {step} of {source} "
              f"(sampler={config.sampling.sampler}, num_steps={config.sampling.num_steps}); "
              f"{finite} of {len(samples)} finite\n  samples: {npz}\n  grid:    "
              f"{', '.join(paths)}\n  quality: python -m diffjax.main --mode=eval "
              "(same flags) scores them against the data's floor", flush=True)


def _eval(config, workdir: str, source: str) -> None:
    """Appends ``{"step", "mode": "eval", <metrics>}`` to ``workdir/metrics.jsonl`` for the
    newest checkpoint in ``source``."""
    from diffjax import parallel, reporting, train

    if config.get("task") == "controlnet":  # samples need the base, read by reference
        from diffjax.controlnet import evaluate as controlnet_eval
        results = controlnet_eval.score(config, source, num=int(config.eval.num_samples))
        step, grid = results.pop("step"), []
    else:
        recipe, state, step = train.restore_for_inference(config, source)
        results = train.evaluate(recipe, state.ema_params, config, workdir, f"eval_{step:07d}")
        grid = [f"  grid:    {os.path.join(workdir, 'samples')}/eval_{step:07d}*.png"]
    writer = reporting.MetricsWriter(workdir, enabled=parallel.is_main_process())
    writer.write(step, {"mode": "eval", **results}, prefix="eval/")
    writer.close()
    if parallel.is_main_process():
        print("\n".join([f"evaluated step {step} of {source}:", *_headline(results),
                         f"  metrics: {os.path.join(workdir, reporting.METRICS_FILE)}",
                         *grid]),
              flush=True)


def _agreed(error: Optional[ConfigError]) -> None:
    """Every process stops with status 2 if any found a config problem (all processes read
    the same config, but data and workdirs are per host)."""
    from diffjax import parallel

    if parallel.any_process(error is not None):
        _fail(str(error) if error is not None else
              "another process of this run found a config problem (see its output)")


def _prepare(config, workdir: str, source: str):
    """The checks that need the cluster: validation with JAX, workdir, devices."""
    import jax

    from diffjax import checkpoint

    config_validation.validate(config, process_count=jax.process_count())
    if _MODE.value == "train" or source != workdir:
        checkpoint.check_workdir(workdir)
    checkpoint.check_compatible(source, config, resume=_MODE.value == "train")
    config_validation.check_devices(config, jax.device_count(), jax.process_count())


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    _checked_flags()
    workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
    source = workdir
    if _RESTORE_FROM.value:
        source = os.path.abspath(os.path.expanduser(_RESTORE_FROM.value))
    try:
        config = config_loading.load(_CONFIG.value, _OVERRIDES)
        config_validation.validate_static(config)  # no JAX computation: before joining
    except ConfigError as e:
        _fail(str(e))
    from diffjax import checkpoint, compile_cache, data, parallel, train

    compile_cache.enable(_JAX_CACHE.value)
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    error = None
    try:
        _prepare(config, workdir, source)
    except (ConfigError, data.DatasetNotPreparedError) as e:
        error = ConfigError(str(e))
    _agreed(error)
    try:
        if _MODE.value == "train":
            train.train(config, workdir)
        else:
            if source != workdir:
                checkpoint.write_config(workdir, config)  # what was evaluated, beside its numbers
            (_sample if _MODE.value == "sample" else _eval)(config, workdir, source)
    except (ConfigError, data.DatasetNotPreparedError) as e:
        _fail(str(e))
    except NonFiniteError as e:
        _fail(str(e), status=1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
