"""Training tasks: what the one train step minimises.

A task is an object with ``loss(params, batch, key, frozen, rows=None) -> (scalar, aux)``:

* ``params``: the trained parameters; ``batch``: ``{"x": [b, ...], "cond": {...}}`` (this
  call's rows); ``key``: the step's key, ``fold_in(state.key, step)``, the same on every
  device and micro-batch; ``frozen``: the parameters of other runs the task reads (a
  teacher, an autoencoder, a ControlNet's base), passed to the step as an argument, never
  baked into it or saved with the state (:mod:`diffjax.training.frozen`); ``aux``: a dict
  of scalar metrics, averaged like the loss.
* ``rows`` (:class:`Rows`) says where this call's rows sit in the global batch when the
  call sees only part of it (a pmap device, a micro-batch of gradient accumulation):
  random draws are made for the whole global batch and these rows cut out, so the numbers
  do not depend on how the batch is split.

:data:`TASKS` maps ``config.task`` to a :class:`TaskSpec`: how to build the task and which
config keys name the other runs it reads (``references``). ``denoise`` is the diffusion
objective of :mod:`diffjax.objectives`; the autoencoder, ControlNet and distillation tasks
register here too, sharing the step, the loop and the checkpoint format.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Protocol

import jax
import jax.numpy as jnp
import ml_collections

from diffjax.training.setup import Setup

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Rows:
    """This call's rows of the global batch.

    Attributes:
      total: rows in the global batch.
      take: ``a [total, ...] -> a [b, ...]``, this call's rows of a global-batch draw.
      index: int32 [], distinct for every (device, micro-batch): seeds per-call randomness
        (dropout masks) that cannot be drawn for the global batch.
    """

    total: int
    take: Callable[[Array], Array]
    index: Array


class Task(Protocol):
    def loss(self, params: Any, batch: Mapping[str, Any], key: Array, frozen: Any,
             rows: Optional[Rows] = None) -> tuple[Array, dict[str, Array]]:
        ...


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """``build(setup, references) -> Task``; ``references(config) -> {config key: workdir}``
    names the runs whose parameters the task reads frozen (``{}`` for none); ``initialize``
    edits a fresh (not a resumed) state. A task with ``reads_step = True`` finds the step
    number in ``batch["step"]`` (int32 ``[b]``)."""

    build: Callable[[Setup, Mapping[str, Any]], Task]
    references: Callable[[ml_collections.ConfigDict], dict[str, str]] = lambda config: {}
    # (fresh state, references) -> state: e.g. a distillation student starts as its teacher.
    initialize: Callable[[Any, Mapping[str, Any]], Any] = lambda state, references: state
    # (setup, config, mesh, progress) -> evaluate(params, workdir, name) -> metrics, for a
    # task whose model is not sampled (the autoencoder); None: sample and score.
    evaluator: Optional[Callable[..., Any]] = None
    # (config, sampling config) -> sampler options the task's model samples with unless the
    # sampling config sets them (a progressive-distillation student: its own time grid);
    # None: the sampler's own defaults.
    sampling_defaults: Optional[Callable[[ml_collections.ConfigDict, Any], dict]] = None


TASKS: dict[str, TaskSpec] = {}
# (config, spec) -> spec: a task as a config changes it (diffjax.autoencoder.latent trains
# any task on an autoencoder's latents when config.latent.autoencoder is set).
WRAPPERS: list[Callable[[ml_collections.ConfigDict, TaskSpec], TaskSpec]] = []


def register(name: str, spec: TaskSpec) -> None:
    """Adds (or replaces) ``config.task = name``."""
    TASKS[name] = spec


def get(name: str) -> TaskSpec:
    """The spec of ``config.task``; ValueError naming the valid tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"Unknown config.task {name!r}; valid choices: {', '.join(TASKS)}")
    return TASKS[name]


def for_config(config: ml_collections.ConfigDict) -> TaskSpec:
    """The spec of ``config.task`` with every :data:`WRAPPERS` entry applied."""
    spec = get(str(config.get("task", "denoise")))
    for wrap in WRAPPERS:
        spec = wrap(config, spec)
    return spec


def sampling_defaults(config: Optional[ml_collections.ConfigDict], sampling: Any) -> dict:
    """The sampler options ``config.task`` samples with by default (``{}`` for most tasks);
    the options ``sampling`` sets itself take precedence over these (the callers merge)."""
    spec = None if config is None else TASKS.get(str(config.get("task", "denoise")))
    fn = None if spec is None else spec.sampling_defaults
    return dict(fn(config, sampling)) if fn is not None else {}


def condition(setup: Setup, batch: Mapping[str, Any]) -> dict[str, Array]:
    """The kinds of ``batch["cond"]`` the network reads (:attr:`Setup.cond_kinds`)."""
    given = batch.get("cond", {})
    missing = [k for k in setup.cond_kinds if k not in given]
    if missing:
        raise KeyError(f"the network reads condition(s) {missing} but the batch's cond holds "
                       f"{sorted(given)}; batches are {{'x': ..., 'cond': {{...}}}}")
    return {k: given[k] for k in setup.cond_kinds}


def draws(objective, key: Array, x0: Array, cond: dict, rows: Optional[Rows]):
    """``(t, eps, cond)`` of :meth:`Objective.draw` for this call's rows, with the
    condition dropout of classifier-free guidance applied."""
    if rows is None:
        t, eps, masks = objective.draw(key, x0, cond)
    else:
        t, eps, masks = objective.draw(key, x0, cond, batch=rows.total)
        t, eps = rows.take(t), rows.take(eps)
        masks = {k: rows.take(m) for k, m in masks.items()}
    return t, eps, objective.null_values.apply_masks(cond, masks)


@dataclasses.dataclass(frozen=True)
class Denoise:
    """The denoising objective of the recipe (:class:`diffjax.objectives.Objective`)."""

    setup: Setup

    def loss(self, params, batch, key, frozen, rows=None):
        del frozen  # reads no other run
        draw_key, dropout_key = jax.random.split(key)
        if rows is not None:
            dropout_key = jax.random.fold_in(dropout_key, rows.index)
        x0 = batch["x"]
        t, eps, cond = draws(self.setup.objective, draw_key, x0, condition(self.setup, batch),
                             rows)

        def model(x, s, c):
            return self.setup.denoiser.apply({"params": params}, x, s, c, train=True,
                                             rngs={"dropout": dropout_key})

        return jnp.mean(self.setup.objective.per_example(model, x0, t, eps, cond)), {}


register("denoise", TaskSpec(build=lambda setup, references: Denoise(setup)))
