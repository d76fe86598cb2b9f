"""The trainer: train state, the one train step, and the loop around it.

``TrainState`` is a pytree (params, EMA params, optax state, step, key, non-finite count).
:func:`make_train_step` builds ``train_step(state, batch) -> (state, metrics)`` from the
recipe (:mod:`diffjax.objectives`, :class:`diffjax.denoiser.Denoiser`); the same function
runs under ``jax.jit`` over a device mesh or under ``jax.pmap`` (:mod:`diffjax.parallel`).
Every random draw of step ``s`` (times, noise, label dropout, dropout masks) comes from
``fold_in(state.key, s)`` and is made for the global batch, so the numbers do not depend on
how many devices or hosts share the batch.

:func:`train` is the loop: it resumes from the newest valid checkpoint in the workdir, logs
to ``metrics.jsonl`` and TensorBoard, evaluates EMA samples, checkpoints, and on SIGTERM or
SIGINT saves and returns.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from typing import Any, Callable, Iterator, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from diffjax import checkpoint as ckpt_lib
from diffjax import data as data_lib
from diffjax import configs, models, objectives, parallel, paths, reporting
from diffjax.choices import (  # noqa: F401  (re-exported: their old home)
    DEFAULT_METRICS, LR_SCHEDULES, NONFINITE_MODES, OPTIMIZERS, metric_names)
from diffjax.denoiser import Denoiser
from diffjax.errors import NonFiniteError

Array = jax.Array

@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes.

    Attributes:
      step: int32 [], number of steps taken (skipped non-finite steps included).
      params: the network's parameters.
      ema_params: their exponential moving average (what is sampled from).
      opt_state: the optax state.
      key: uint32 [2], the run's key; step ``s`` uses ``fold_in(key, s)``.
      nonfinite_count: int32 [], steps whose update was skipped for non-finite values.
    """

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any
    key: Array
    nonfinite_count: Array


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The pieces of a run built from its config: network, model reading, loss, optimizer."""

    net: Any
    denoiser: Denoiser
    objective: objectives.Objective
    optimizer: optax.GradientTransformation
    lr_schedule: Callable[[Array], Array]
    data_info: Any
    conditional: bool
    ema_decay: float
    ema_warmup: bool


# --------------------------------------------------------------------------- building
def lr_schedule(optim_cfg: ml_collections.ConfigDict, num_steps: int) -> Callable[[Array], Array]:
    """``lr * min(1, (s+1)/warmup)``, times a cosine decay to ``end_lr_factor * lr`` if asked."""
    lr, warmup = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
    cosine = optim_cfg.schedule == "cosine"
    end = float(optim_cfg.end_lr_factor)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        rate = lr * jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))
        if cosine:
            progress = jnp.clip((step - warmup) / max(num_steps - warmup, 1), 0.0, 1.0)
            rate = rate * (end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress)))
        return rate

    return schedule


def make_optimizer(optim_cfg: ml_collections.ConfigDict,
                   num_steps: int) -> tuple[optax.GradientTransformation, Callable]:
    """Global-norm clipping then Adam/AdamW on the warm-up (+ cosine) schedule."""
    schedule = lr_schedule(optim_cfg, num_steps)
    adam_kwargs = dict(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)
    if optim_cfg.optimizer == "adamw":
        adam = optax.adamw(schedule, weight_decay=optim_cfg.weight_decay, **adam_kwargs)
    else:
        adam = optax.adam(schedule, **adam_kwargs)
    parts = [optax.clip_by_global_norm(optim_cfg.grad_clip)] if optim_cfg.grad_clip > 0 else []
    return optax.chain(*parts, adam), schedule


def build(config: ml_collections.ConfigDict, data_info: Optional[Any] = None) -> Recipe:
    """Builds network, denoiser, objective and optimizer from a (validated) config."""
    if data_info is None:
        data_info = data_lib.info(config.data.dataset, config.data.get("data_dir"))
    path = paths.get(config.path.name, **configs.path_kwargs(config.path))
    conditional = bool(config.model.get("class_conditional", False))
    num_classes = data_info.num_classes if conditional else 0
    net = models.from_config(config.model, data_shape=data_info.shape,
                             num_classes=data_info.num_classes)
    denoiser = Denoiser(net, path, config.model.target, config.model.preconditioning,
                        config.model.sigma_data)
    objective = objectives.from_config(path, config.model.target, config.loss,
                                       num_classes=num_classes)
    optimizer, schedule = make_optimizer(config.optim, config.training.num_steps)
    return Recipe(net, denoiser, objective, optimizer, schedule, data_info, conditional,
                  float(config.training.ema_decay), bool(config.training.ema_warmup))


def init_state(recipe: Recipe, seed: int) -> TrainState:
    """A fresh state (jit-friendly: wrap in ``jax.jit(..., out_shardings=...)`` to create it
    directly in its sharded layout)."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    x = jnp.zeros((1, *recipe.data_info.shape), jnp.float32)
    cond = {"label": jnp.zeros((1,), jnp.int32)} if recipe.conditional else {}
    params = recipe.net.init({"params": init_key}, x, jnp.zeros((1,)), cond)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=recipe.optimizer.init(params), key=train_key,
                      nonfinite_count=jnp.zeros((), jnp.int32))


# --------------------------------------------------------------------------- the step
def _draws(objective: objectives.Objective, key: Array, x0: Array, cond: dict,
           axis_name: Optional[str]) -> tuple[Array, Array, dict]:
    """``(t, eps, cond)`` for the rows of the global batch that this call sees, with the
    condition dropout of classifier-free guidance applied.

    Under jit the call sees the global batch. Under pmap it sees one device's rows: the
    draws are made for the whole global batch and this device's rows are cut out, so both
    backends use the same numbers.
    """
    if axis_name is None:
        t, eps, masks = objective.draw(key, x0, cond)
    else:
        b = x0.shape[0]
        t, eps, masks = objective.draw(key, x0, cond, batch=lax.axis_size(axis_name) * b)
        rows = lambda a: lax.dynamic_slice_in_dim(a, lax.axis_index(axis_name) * b, b)  # noqa: E731
        t, eps, masks = rows(t), rows(eps), {k: rows(m) for k, m in masks.items()}
    return t, eps, objective.null_values.apply_masks(cond, masks)


def _ema(ema: Any, params: Any, decay: Array) -> Any:
    return jax.tree_util.tree_map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)


def _apply_gradients(recipe: Recipe, state: TrainState, loss: Array,
                     grads: Any) -> tuple[TrainState, dict]:
    """Optimizer and EMA update, skipped (``lax.cond``) when anything is non-finite.

    A branch rather than ``jnp.where`` selects on every leaf: the selects make every output
    depend on one global predicate, and XLA's CPU compile time then grows many-fold on big
    U-Nets.
    """
    grad_finite = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
    ok = jnp.isfinite(loss) & jnp.all(grad_finite)
    decay = jnp.asarray(recipe.ema_decay, jnp.float32)
    if recipe.ema_warmup:
        step = state.step.astype(jnp.float32)
        decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))

    def update(operands):
        params, ema_params, opt_state = operands
        updates, opt_state = recipe.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, _ema(ema_params, params, decay), opt_state

    params, ema_params, opt_state = lax.cond(
        ok, update, lambda operands: operands,
        (state.params, state.ema_params, state.opt_state))
    new_state = state.replace(
        step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state,
        nonfinite_count=state.nonfinite_count + (~ok).astype(jnp.int32))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": recipe.lr_schedule(state.step), "skipped": (~ok).astype(jnp.float32),
               "finite": jnp.concatenate([jnp.isfinite(loss)[None], grad_finite])}
    return new_state, metrics


def make_train_step(recipe: Recipe, axis_name: Optional[str] = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``train_step(state, batch) -> (state, metrics)``, to be wrapped in jit or pmap.

    Args:
      recipe: from :func:`build`.
      axis_name: None when the step sees the global batch (``jax.jit``); the pmap axis
        name when it sees one device's rows, in which case loss and gradients are averaged
        over that axis. This is the only difference between the backends.

    ``batch``: ``{"x": float32 [B, ...], "label": int32 [B]}``. ``metrics``: loss,
    grad_norm, lr, skipped (1.0 if the update was dropped) and ``finite`` (bool
    ``[1 + num_param_arrays]``: the loss, then each gradient in ``tree_leaves`` order).
    """
    objective, denoiser = recipe.objective, recipe.denoiser

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        draw_key, dropout_key = jax.random.split(jax.random.fold_in(state.key, state.step))
        if axis_name is not None:  # one dropout stream per device: masks are per device
            dropout_key = jax.random.fold_in(dropout_key, lax.axis_index(axis_name))
        x0 = batch["x"]
        cond = {"label": batch["label"]} if recipe.conditional else {}
        t, eps, cond = _draws(objective, draw_key, x0, cond, axis_name)

        def loss_fn(params):
            model = lambda x, s, c: denoiser.apply(  # noqa: E731
                {"params": params}, x, s, c, train=True, rngs={"dropout": dropout_key})
            return jnp.mean(objective.per_example(model, x0, t, eps, cond))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        if axis_name is not None:
            loss, grads = lax.pmean((loss, grads), axis_name)
        return _apply_gradients(recipe, state, loss, grads)

    return train_step


def describe_nonfinite(finite: np.ndarray, params: Any) -> str:
    """Names the first non-finite quantity of a step from its ``metrics["finite"]``."""
    names = ["loss"] + ["gradient of params/" + jax.tree_util.keystr(p, simple=True, separator="/")
                        for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    bad = [n for n, ok in zip(names, np.asarray(finite)) if not ok]
    return bad[0] if bad else "none"


# --------------------------------------------------------------------------- sampling
def make_sampler(recipe: Recipe, sampling_cfg: ml_collections.ConfigDict,
                 batch_size: int) -> Callable[[Any, Array, Optional[Array]], Array]:
    """``sample(params, key, labels) -> x [batch_size, ...]``, jitted, from ``config.sampling``.

    ``labels`` ([batch_size] ints, or None) condition a class-conditional model, guided with
    ``sampling_cfg.guidance_scale``. The sampler options set in ``sampling_cfg``
    (:data:`diffjax.configs.SAMPLER_OPTIONS`, e.g. ``eta``, ``s_churn``) are passed on.
    """
    from diffjax import configs
    from diffjax import sample as diffjax_sample  # deferred: the samplers are not needed to train

    options = configs.sampler_options(sampling_cfg)
    if sampling_cfg.grid is not None:
        options["grid"] = sampling_cfg.grid
    if recipe.conditional:
        options.update(guidance_scale=sampling_cfg.guidance_scale,
                       num_classes=recipe.data_info.num_classes)
    shape = (batch_size, *recipe.data_info.shape)

    def sample(params, key, labels):
        model_fn = recipe.denoiser.model_fn({"params": params})
        label = {} if labels is None else {"label": labels}
        # The sampler evaluates its grid from Python constants while it is traced; this
        # keeps those values concrete while params, key and labels stay traced, so one
        # compiled sampler serves every evaluation (params are arguments, not constants).
        with jax.ensure_compile_time_eval():
            return diffjax_sample(model_fn, recipe.denoiser.path, shape, key,
                                  target=recipe.denoiser.target,
                                  sampler=sampling_cfg.sampler,
                                  num_steps=sampling_cfg.num_steps, **options, **label)

    return jax.jit(sample)


def generate(recipe: Recipe, params: Any, sampling_cfg: ml_collections.ConfigDict,
             num_samples: int, batch_size: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``num_samples`` samples (numpy, on every process) and their labels (cycling through
    the classes for a conditional model, else None), drawn from ``sampling_cfg.seed``."""
    batch_size = min(batch_size, num_samples)
    sampler = make_sampler(recipe, sampling_cfg, batch_size)
    key = jax.random.PRNGKey(sampling_cfg.seed)
    chunks, all_labels = [], []
    for i in range(math.ceil(num_samples / batch_size)):
        labels = None
        if recipe.conditional:
            labels = (np.arange(i * batch_size, (i + 1) * batch_size)
                      % recipe.data_info.num_classes).astype(np.int32)
            all_labels.append(labels)
        chunks.append(parallel.to_host(sampler(params, jax.random.fold_in(key, i), labels)))
    samples = np.concatenate(chunks)[:num_samples]
    return samples, (np.concatenate(all_labels)[:num_samples] if all_labels else None)


def evaluate(recipe: Recipe, params: Any, config: ml_collections.ConfigDict, workdir: str,
             name: str) -> dict[str, float]:
    """Samples from ``params`` (the EMA), writes figures ``samples/<name>*.png`` and
    returns ``config.eval.metrics``: sample metrics against held-out data, and model metrics
    (``nll``, ``bits_per_dim``) of held-out data."""
    from diffjax.evaluate import metrics as metrics_lib  # deferred: pulls in the classifier

    kind = recipe.data_info.kind
    sample_names, model_names = metrics_lib.split_metrics(metric_names(config, kind))
    results = _likelihood_metrics(recipe, params, config, model_names)
    num = max(config.eval.num_samples, config.sampling.num_samples)
    samples, labels = generate(recipe, params, config.sampling, num, config.eval.batch_size)
    if parallel.is_main_process():
        reference = None
        if kind == "points":
            reference, _ = data_lib.load_arrays(config.data.dataset, "test",
                                                config.data.get("data_dir"), limit=2000)
        reporting.save_figures(workdir, name, samples[:config.sampling.num_samples], kind,
                               reference)
    cache_dir = config.eval.cache_dir or os.path.expanduser("~/.cache/diffjax/eval")
    if sample_names:
        results.update(metrics_lib.evaluate_samples(
            samples[:config.eval.num_samples], metrics=sample_names,
            dataset=config.data.dataset, cache_dir=cache_dir,
            labels=None if labels is None else labels[:config.eval.num_samples],
            data_dir=config.data.get("data_dir"),
            inception_weights=config.eval.inception_weights))
    return {k: float(v) for k, v in dict(results).items()}


def _likelihood_metrics(recipe: Recipe, params: Any, config: ml_collections.ConfigDict,
                        names: list[str]) -> dict[str, float]:
    """``nll`` / ``bits_per_dim`` of the first ``eval.likelihood_examples`` test examples."""
    if not names:
        return {}
    from diffjax.evaluate import nll

    x, labels = data_lib.load_arrays(config.data.dataset, "test", config.data.get("data_dir"),
                                     limit=config.eval.likelihood_examples)
    return nll.likelihood_metrics(
        names, recipe.denoiser.model_fn({"params": params}), recipe.denoiser.path,
        recipe.denoiser.target, x, kind=recipe.data_info.kind,
        labels=labels if recipe.conditional else None,
        divergence=config.eval.likelihood_divergence, seed=config.sampling.seed)


# --------------------------------------------------------------------------- the loop
BatchesFn = Callable[[ml_collections.ConfigDict, int, int], Iterator[dict]]


def default_batches(config: ml_collections.ConfigDict, process_index: int,
                    process_count: int) -> Iterator[dict]:
    """This process's share of the training batches (a checkpointable grain iterator)."""
    return data_lib.make_iterator(config.data, split="train", seed=config.seed,
                                  process_index=process_index, process_count=process_count)


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


def setup_state(recipe: Recipe, config: ml_collections.ConfigDict,
                mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
    """``(abstract_state, shardings)``: shapes with their shardings, nothing computed."""
    abstract = jax.eval_shape(lambda: init_state(recipe, config.seed))
    shardings = parallel.state_shardings(abstract, mesh, config.parallel.param_sharding,
                                         config.parallel.fsdp_min_size)
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


class _Logger:
    """Accumulates step metrics on device and writes their interval mean when asked."""

    def __init__(self, writer: reporting.MetricsWriter, global_batch: int, pbar):
        self.writer, self.global_batch, self.pbar = writer, global_batch, pbar
        self.pending: list[dict] = []
        self.t0 = time.perf_counter()

    def add(self, metrics: dict) -> None:
        self.pending.append({k: v for k, v in metrics.items() if k != "finite"})

    def flush(self, step: int, nonfinite_count: int) -> Optional[dict]:
        if not self.pending:
            return None
        host = jax.device_get(self.pending)
        elapsed = time.perf_counter() - self.t0
        record = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        record["lr"] = float(host[-1]["lr"])
        record["skipped"] = int(sum(m["skipped"] for m in host))
        record["nonfinite_count"] = int(nonfinite_count)
        record["steps_per_sec"] = len(host) / elapsed
        record["examples_per_sec"] = record["steps_per_sec"] * self.global_batch
        self.writer.write(step, record, prefix="train/")
        self.pbar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
        self.pending, self.t0 = [], time.perf_counter()
        return record


def train(config: ml_collections.ConfigDict, workdir: str, *,
          batches_fn: BatchesFn = default_batches) -> TrainState:
    """Trains (or resumes) the run in ``workdir`` to ``config.training.num_steps``.

    Returns the final state. On SIGTERM/SIGINT it checkpoints the current step and returns
    early. ``batches_fn(config, process_index, process_count)`` supplies this process's
    batches (default: the grain pipeline); it must have ``get_state``/``set_state``.

    Raises:
      diffjax.checkpoint.WorkdirError: unwritable workdir, or one holding another model.
      NonFiniteError: ``training.nonfinite="stop"`` and a loss or gradient is not finite.
    """
    ckpt_lib.check_workdir(workdir)
    ckpt_lib.check_compatible(workdir, config)
    tcfg = config.training
    recipe = build(config)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.data.batch_size)
    abstract, shardings = setup_state(recipe, config, mesh)
    iterator = batches_fn(config, jax.process_index(), jax.process_count())
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=tcfg.keep_checkpoints)
    try:
        state, step = checkpointer.restore_latest(abstract, iterator)
        if step is None:
            state = jax.jit(lambda: init_state(recipe, config.seed), out_shardings=shardings)()
            step = 0
        elif parallel.is_main_process():
            print(f"resuming from step {step} ({checkpointer.directory}/{step})", flush=True)
        ckpt_lib.write_config(workdir, config)
        # Records after the restored step (all of them on a fresh start) were written by an
        # interrupted run after its last checkpoint; they are dropped and logged again.
        writer = reporting.MetricsWriter(workdir, enabled=parallel.is_main_process(),
                                         resume_step=step)
        try:
            return _loop(config, workdir, recipe, mesh, shardings, state, step, iterator,
                         checkpointer, writer)
        finally:
            writer.close()
    finally:
        checkpointer.close()  # waits for asynchronous saves: no run ends with one half written


def restore_for_inference(config: ml_collections.ConfigDict,
                          workdir: str) -> tuple[Recipe, TrainState, int]:
    """``(recipe, state, step)`` of the newest valid checkpoint in ``workdir``.

    Raises:
      diffjax.checkpoint.WorkdirError: no checkpoint to read.
    """
    recipe = build(config)
    abstract, _ = setup_state(recipe, config, parallel.make_mesh())
    checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
    try:
        state, step = checkpointer.restore_latest(abstract)
    finally:
        checkpointer.close()
    if state is None:
        raise ckpt_lib.WorkdirError(f"--workdir={workdir} has no checkpoint to sample from; "
                                    "train first (--mode=train)")
    return recipe, state, step


def _loop(config, workdir, recipe, mesh, shardings, state, step, iterator, checkpointer,
          writer) -> TrainState:
    from tqdm import tqdm

    tcfg = config.training
    step_fn, put_batch = parallel.compile_step(
        lambda axis_name: make_train_step(recipe, axis_name), backend=config.parallel.backend,
        mesh=mesh, state_sharding=shardings)
    main = parallel.is_main_process()
    pbar = tqdm(total=tcfg.num_steps, initial=step, unit="step", dynamic_ncols=True,
                disable=not (main and tcfg.progress_bar))
    logger = _Logger(writer, config.data.batch_size, pbar)
    multi = jax.process_count() > 1
    try:
        with _stop_requests() as flag:
            while step < tcfg.num_steps:
                state, metrics = step_fn(state, put_batch(next(iterator)))
                step += 1
                pbar.update(1)
                logger.add(metrics)
                if tcfg.nonfinite == "stop":
                    _stop_if_nonfinite(metrics, step, state.params)
                last = step == tcfg.num_steps
                if step % tcfg.log_every == 0 or last:
                    logger.flush(step, int(state.nonfinite_count))
                if tcfg.eval_every > 0 and (step % tcfg.eval_every == 0 or last):
                    writer.write(step, evaluate(recipe, state.ema_params, config, workdir,
                                                f"step_{step:07d}"), prefix="eval/")
                if step % tcfg.checkpoint_every == 0 or last:
                    checkpointer.save(step, state, iterator)
                # In multi-process runs every process must agree, which costs a collective:
                # poll at log steps only.
                if (not multi or step % tcfg.log_every == 0) and parallel.any_process(flag["stop"]):
                    logger.flush(step, int(state.nonfinite_count))
                    checkpointer.save(step, state, iterator)
                    pbar.write(f"stop requested: checkpointed step {step} in {workdir}")
                    break
    finally:
        pbar.close()
    return state


def _stop_if_nonfinite(metrics: dict, step: int, params: Any) -> None:
    finite = np.asarray(jax.device_get(metrics["finite"]))
    if not finite.all():
        raise NonFiniteError(
            f"training.nonfinite='stop': non-finite {describe_nonfinite(finite, params)} at step "
            f"{step} (the update was not applied). Lower optim.lr, keep optim.grad_clip > 0, "
            "or set training.nonfinite='skip'.")
