"""The loop: resume, step, log, evaluate, checkpoint, stop on request; and restoring a run.

:func:`train` resumes from the newest valid checkpoint in the workdir, logs to
``metrics.jsonl`` and TensorBoard, evaluates EMA samples, checkpoints, and on SIGTERM or
SIGINT saves and returns. It ends by printing where its outputs are.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any, Callable, Iterator, Optional

import jax
import ml_collections
import numpy as np

from diffjax import checkpoint as ckpt_lib
from diffjax import data as data_lib
from diffjax import parallel, reporting
from diffjax.training import backends, frozen, power_ema, tasks
from diffjax.training.evaluation import evaluator_for, headline
from diffjax.training.setup import Setup, build
from diffjax.training.state import NonFiniteError, TrainState, init_state, setup_state
from diffjax.training.step import describe_nonfinite, make_train_step

BatchesFn = Callable[[ml_collections.ConfigDict, int, int], Iterator[dict]]


def default_batches(config: ml_collections.ConfigDict, process_index: int,
                    process_count: int) -> Iterator[dict]:
    """This process's share of the training batches (a checkpointable grain iterator); a
    text-conditioned run's batches carry each caption's text condition, a latent run with
    ``config.latent.cache`` the cached posterior moments of each image."""
    from diffjax.text import conditioning  # deferred: only text runs need it

    text = conditioning.from_config(config)
    table = None if text is None else text.data_table(
        config.data.dataset, "train", config.data.get("data_dir"))
    if config.get("task") == "controlnet":  # each record's control map joins its text
        from diffjax.controlnet import maps

        table = maps.table(config.controlnet.kind, config.data.dataset, "train",
                           config.data.get("data_dir"), other=table)
    return data_lib.make_iterator(config.data, split="train", seed=config.seed,
                                  process_index=process_index, process_count=process_count,
                                  cond_table=table, source=_cached_latents(config))


def _cached_latents(config: ml_collections.ConfigDict):
    """The training split's cached latents with ``config.latent.cache``, else None."""
    from diffjax.autoencoder import cache, latent

    if not cache.enabled(config):
        return None
    reference = frozen.load(latent.KEY, latent.reference_value(config))
    return cache.records(config, reference, "train", int(config.eval.batch_size))


@contextlib.contextmanager
def _stop_requests():
    """Turns SIGTERM/SIGINT into a flag the loop polls (``flag["stop"]``)."""
    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: signals stay with their owner
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Logger:
    """Accumulates step metrics on device and writes their interval mean when asked; counts
    skipped steps in a row (``max_consecutive`` > 0: NonFiniteError when reached)."""

    def __init__(self, writer: reporting.MetricsWriter, global_batch: int, pbar,
                 max_consecutive: int, first_step: int):
        self.writer, self.global_batch, self.pbar = writer, global_batch, pbar
        self.max_consecutive, self.step = max_consecutive, first_step
        self.pending: list[dict] = []
        self.streak = 0
        self.t0 = time.perf_counter()

    def add(self, metrics: dict) -> None:
        self.pending.append({k: v for k, v in metrics.items() if k != "finite"})

    def flush(self) -> Optional[dict]:
        if not self.pending:
            return None
        host = jax.device_get(self.pending)
        first = self.step + 1
        self.step += len(host)
        elapsed = time.perf_counter() - self.t0
        record = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        record["lr"] = float(host[-1]["lr"])
        record["skipped"] = int(sum(m["skipped"] for m in host))
        record["nonfinite_count"] = int(host[-1]["nonfinite_count"])
        record["steps_per_sec"] = len(host) / elapsed
        record["examples_per_sec"] = record["steps_per_sec"] * self.global_batch
        self.writer.write(self.step, record, prefix="train/")
        self.pbar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
        self.pending, self.t0 = [], time.perf_counter()
        self._check_streak(first, [m["skipped"] for m in host])
        return record

    def _check_streak(self, first: int, skipped: list) -> None:
        for i, s in enumerate(skipped):
            self.streak = self.streak + 1 if s else 0
            if self.max_consecutive and self.streak >= self.max_consecutive:
                raise NonFiniteError(
                    f"training.max_consecutive_nonfinite={self.max_consecutive}: steps "
                    f"{first + i - self.streak + 1}-{first + i} were all skipped for non-finite "
                    f"values; stopped at step {first + i} (the last checkpoint is the state to "
                    "resume). Lower optim.lr, keep optim.grad_clip > 0, or check the data.")


def _references(config: ml_collections.ConfigDict) -> dict[str, frozen.Reference]:
    return frozen.load_all(tasks.for_config(config).references(config))


def train(config: ml_collections.ConfigDict, workdir: str, *,
          batches_fn: BatchesFn = default_batches) -> TrainState:
    """Trains (or resumes) the run in ``workdir`` to ``config.training.num_steps``.

    Returns the final state. On SIGTERM/SIGINT it checkpoints the current step and returns
    early. ``batches_fn(config, process_index, process_count)`` supplies this process's
    batches ``{"x", "cond": {...}}`` (default: the grain pipeline); it must have
    ``get_state``/``set_state``.

    Raises:
      diffjax.checkpoint.WorkdirError: unwritable workdir, one holding another model, or
        one trained against a frozen reference that changed since
        (:class:`diffjax.training.frozen.ReferenceChangedError`).
      NonFiniteError: ``training.nonfinite="stop"`` and a loss or gradient is not finite,
        or ``training.max_consecutive_nonfinite`` steps in a row were skipped.
    """
    ckpt_lib.check_workdir(workdir)
    ckpt_lib.check_compatible(workdir, config)
    setup = build(config)
    spec = tasks.for_config(config)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.data.batch_size)
    _check_accumulation(config.data.batch_size, setup.grad_accum_steps)
    references = _references(config)
    abstract, shardings = setup_state(setup, config, mesh)
    iterator = batches_fn(config, jax.process_index(), jax.process_count())
    # Simulated CPU devices save synchronously: see backends.simulated_devices.
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.training.keep_checkpoints,
                                         async_save=not backends.simulated_devices())
    try:
        state, step = checkpointer.restore_latest(abstract, iterator)
        if step is None:
            state = jax.jit(lambda: init_state(setup, config.seed), out_shardings=shardings)()
            state = spec.initialize(state, references)
            step = 0
            frozen.record(workdir, references)
        else:
            frozen.check_unchanged(workdir, references)
            if parallel.is_main_process():
                print(f"resuming from step {step} ({checkpointer.directory}/{step})", flush=True)
        if setup.power_gammas:  # later snapshots are of a run that did not reach its checkpoint
            power_ema.set_aside_after(workdir, step)
        ckpt_lib.write_config(workdir, config)
        # Records after the restored step (all of them on a fresh start) were written by an
        # interrupted run after its last checkpoint; they are dropped and logged again.
        writer = reporting.MetricsWriter(workdir, enabled=parallel.is_main_process(),
                                         resume_step=step)
        try:
            task = spec.build(setup, references)
            return _loop(config, workdir, setup, task, references, mesh, shardings, state,
                         step, iterator, checkpointer, writer)
        finally:
            writer.close()
    finally:
        checkpointer.close()  # waits for asynchronous saves: no run ends with one half written


def _check_accumulation(batch_size: int, k: int) -> None:
    """Each micro-batch must split evenly over the devices: ``batch_size % (k * devices)``."""
    from diffjax.config_validation import ConfigError

    devices = jax.device_count()
    if batch_size % (k * devices):
        raise ConfigError(f"config.data.batch_size={batch_size} does not split into "
                          f"optim.grad_accum_steps={k} micro-batches over {devices} device(s); "
                          f"choose a multiple of {k * devices}")


def restore_for_inference(config: ml_collections.ConfigDict,
                          workdir: str) -> tuple[Setup, TrainState, int]:
    """``(setup, state, step)`` of the newest valid checkpoint in ``workdir`` (of checkpoint
    ``config.sampling.step`` when set); with
    ``config.sampling.ema = "sigma_rel:<s>"`` its ``ema_params`` are the newest post-hoc EMA
    of that length (:mod:`diffjax.ema`) and ``step`` that EMA's step.

    Raises:
      diffjax.checkpoint.WorkdirError: no checkpoint to read.
    """
    setup, state, step = frozen.restore_newest(config, workdir, config.sampling.get("step"),
                                               "config.sampling.step")
    if state is None:
        raise ckpt_lib.WorkdirError(f"--workdir={workdir} has no checkpoint to sample from; "
                                    "train first (--mode=train)")
    if config.sampling.get("ema"):  # a post-hoc EMA (python -m diffjax.ema) instead
        params, step = power_ema.load_reconstruction(workdir, config.sampling.ema,
                                                     state.ema_params)
        state = state.replace(ema_params=params)
    return setup, state, step


def _loop(config, workdir, setup, task, references, mesh, shardings, state, step, iterator,
          checkpointer, writer) -> TrainState:
    from tqdm import tqdm

    tcfg = config.training
    compiled = backends.compile_step(lambda axis: make_train_step(setup, axis, task),
                                     backend=config.parallel.backend, mesh=mesh,
                                     state_sharding=shardings)
    # A task's own arrays (reflow's couplings) travel with the frozen references: traced.
    frozen_params = compiled.put_frozen({**frozen.frozen_tree(references),
                                         **getattr(task, "frozen_arrays", {})})
    main = parallel.is_main_process()
    pbar = tqdm(total=tcfg.num_steps, initial=step, unit="step", dynamic_ncols=True,
                disable=not (main and tcfg.progress_bar))
    logger = _Logger(writer, config.data.batch_size, pbar,
                     int(tcfg.get("max_consecutive_nonfinite", 0)), step)
    evaluator = evaluator_for(setup, config, mesh, progress=main and tcfg.progress_bar)
    results: dict[str, float] = {}
    multi = jax.process_count() > 1
    device_state = compiled.put_state(state)
    saved = None
    try:
        with _stop_requests() as flag:
            while step < tcfg.num_steps:
                device_state, metrics = compiled.step(
                    device_state, compiled.put_batch(next(iterator)), frozen_params)
                step += 1
                pbar.update(1)
                logger.add(metrics)
                if tcfg.nonfinite == "stop":
                    _stop_if_nonfinite(metrics, step, state.params)
                last = step == tcfg.num_steps
                if step % tcfg.log_every == 0 or last:
                    logger.flush()
                # Checkpoint first: an evaluation that fails (a sampler out of its budget,
                # a metric's bad input) then loses no training.
                if step % tcfg.checkpoint_every == 0 or last:
                    checkpointer.save(step, compiled.get_state(device_state), iterator)
                    saved = step
                if tcfg.eval_every > 0 and (step % tcfg.eval_every == 0 or last):
                    state = compiled.get_state(device_state)
                    results = evaluator(state.ema_params, workdir, f"step_{step:07d}")
                    writer.write(step, results, prefix="eval/")
                if setup.power_gammas and (step % tcfg.ema_snapshot_every == 0 or last):
                    power_ema.save_snapshot(workdir, step, compiled.get_state(device_state),
                                            tcfg.ema_sigma_rels)
                # In multi-process runs every process must agree, which costs a collective:
                # poll at log steps only.
                if (not multi or step % tcfg.log_every == 0) and parallel.any_process(flag["stop"]):
                    logger.flush()
                    checkpointer.save(step, compiled.get_state(device_state), iterator)
                    pbar.write(f"stop requested: checkpointed step {step} in {workdir}")
                    saved = step
                    break
    finally:
        pbar.close()
    if main:
        _print_outputs(workdir, checkpointer, saved, evaluator.last_outputs, results)
    return compiled.get_state(device_state)


def _print_outputs(workdir: str, checkpointer, saved: Optional[int], figures: list[str],
                   results: dict[str, float]) -> None:
    lines = [f"done: {workdir}"]
    if saved is not None:
        lines.append(f"  checkpoint  {os.path.join(str(checkpointer.directory), str(saved))}")
    lines.append(f"  metrics     {os.path.join(workdir, reporting.METRICS_FILE)}")
    lines += [f"  samples     {path}" for path in figures]
    if results:
        lines.append(f"  {headline(results)}")
    print("\n".join(lines), flush=True)


def _stop_if_nonfinite(metrics: dict, step: int, params: Any) -> None:
    finite = np.asarray(jax.device_get(metrics["finite"]))
    if not finite.all():
        raise NonFiniteError(
            f"training.nonfinite='stop': non-finite {describe_nonfinite(finite, params)} at step "
            f"{step} (the update was not applied). Lower optim.lr, keep optim.grad_clip > 0, "
            "or set training.nonfinite='skip'.")
