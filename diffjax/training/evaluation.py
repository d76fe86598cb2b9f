"""Evaluation during and after training: samples, figures and metrics of the EMA parameters.

Every sampling call goes through :meth:`Sampler.__call__`, one jitted function per run:
it is built once (not at every ``eval_every``), takes the parameters as traced arguments
(a new set of parameters does not recompile) and is data-parallel: the condition and the
samples are split over the mesh's data axis like a training batch, so each device
integrates its own rows. With JAX's partitionable threefry keys the initial noise does not
depend on the layout, so 8 devices give the samples of 1 up to float rounding.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from diffjax import configs, parallel, reporting
from diffjax.choices import DEFAULT_METRICS, metric_names  # noqa: F401  (re-exported)
from diffjax import data as data_lib
from diffjax.training.setup import Setup

Array = jax.Array
# config -> None, or decode(samples) -> samples in the data set's space, applied to every batch
# a Sampler returns (diffjax.autoencoder.latent decodes an autoencoder's latents).
DECODERS: list[Callable[[ml_collections.ConfigDict], Optional[Callable[[Array], Array]]]] = []


class Sampler:
    """``sampler(params, key, labels) -> x [batch_size, ...]`` from ``config.sampling``,
    compiled once, rows split over ``mesh``.

    ``batch_size`` is rounded up to a multiple of the device count. ``labels``
    (``[batch_size]`` ints, or None) condition a class-conditional model, guided with
    ``sampling_cfg.guidance_scale``; the sampler options set in ``sampling_cfg``
    (:data:`diffjax.configs.SAMPLER_OPTIONS`) are passed on.
    """

    def __init__(self, setup: Setup, sampling_cfg: ml_collections.ConfigDict, batch_size: int,
                 mesh: Optional[jax.sharding.Mesh] = None):
        self.setup, self.cfg = setup, sampling_cfg
        self.mesh = mesh or parallel.make_mesh()
        n = self.mesh.size
        self.batch_size = math.ceil(batch_size / n) * n
        self.rows = parallel.batch_sharding(self.mesh)
        self.traces = 0  # how often the sampler was traced (compiled): once per run
        self._fn = jax.jit(self._sample, in_shardings=(None, None, self.rows),
                           out_shardings=self.rows)
        self.decode = None if setup.config is None else next(
            (d for d in (f(setup.config) for f in DECODERS) if d is not None), None)

    def _sample(self, params, key, labels):
        from diffjax import sample  # deferred: the samplers are not needed to train

        self.traces += 1
        setup, cfg = self.setup, self.cfg
        options = configs.sampler_options(cfg)
        if cfg.grid is not None:
            options["grid"] = cfg.grid
        if labels is not None:
            options.update(label=labels, guidance_scale=cfg.guidance_scale,
                           num_classes=setup.data_info.num_classes)
        shape = (self.batch_size, *setup.data_info.shape)
        # Parameters are traced arguments of the network function (never constants of the
        # program): one compiled sampler serves every evaluation of the run.
        return sample(setup.denoiser.fn, setup.denoiser.path, shape, key, params=params,
                      target=setup.denoiser.target, sampler=cfg.sampler,
                      num_steps=cfg.num_steps, **options)

    def __call__(self, params: Any, key: Array, labels: Optional[np.ndarray] = None) -> Array:
        if labels is not None:
            labels = np.asarray(labels, np.int32)
            labels = jax.make_array_from_callback(labels.shape, self.rows,
                                                  lambda index: labels[index])
        x = self._fn(params, key, labels)
        return x if self.decode is None else self.decode(x)


def generate(setup: Setup, params: Any, sampling_cfg: ml_collections.ConfigDict,
             num_samples: int, batch_size: int, *, sampler: Optional[Sampler] = None,
             progress: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``num_samples`` samples (numpy, on every process) and their labels (cycling through
    the classes for a conditional model, else None), drawn from ``sampling_cfg.seed``.

    ``sampler`` reuses a compiled :class:`Sampler` (built here otherwise); ``progress``
    prints one line per batch on the main process.
    """
    sampler = sampler or Sampler(setup, sampling_cfg, min(batch_size, num_samples))
    b = sampler.batch_size
    key = jax.random.PRNGKey(sampling_cfg.seed)
    chunks, all_labels = [], []
    num_batches = math.ceil(num_samples / b)
    start = time.perf_counter()
    for i in range(num_batches):
        labels = None
        if setup.conditional:
            labels = (np.arange(i * b, (i + 1) * b) % setup.data_info.num_classes).astype(np.int32)
            all_labels.append(labels)
        chunks.append(parallel.to_host(sampler(params, jax.random.fold_in(key, i), labels)))
        if progress and parallel.is_main_process():
            print(f"sampling: batch {i + 1}/{num_batches} ({min((i + 1) * b, num_samples)}/"
                  f"{num_samples} samples, {time.perf_counter() - start:.1f}s)", flush=True)
    samples = np.concatenate(chunks)[:num_samples]
    return samples, (np.concatenate(all_labels)[:num_samples] if all_labels else None)


class Evaluator:
    """Evaluation of one run: its :class:`Sampler` is built at the first call and reused."""

    def __init__(self, setup: Setup, config: ml_collections.ConfigDict,
                 mesh: Optional[jax.sharding.Mesh] = None, progress: bool = False):
        self.setup, self.config, self.mesh, self.progress = setup, config, mesh, progress
        self.sampler: Optional[Sampler] = None
        self.last_outputs: list[str] = []  # the figures the last evaluation wrote

    def __call__(self, params: Any, workdir: str, name: str) -> dict[str, float]:
        """Samples from ``params`` (the EMA), writes figures ``samples/<name>*.png`` and
        returns ``config.eval.metrics``: sample metrics against held-out data, and model
        metrics (``nll``, ``bits_per_dim``) of held-out data."""
        from diffjax.evaluate import metrics as metrics_lib  # deferred: pulls in the classifier

        setup, config = self.setup, self.config
        kind = setup.data_info.kind
        sample_names, model_names = metrics_lib.split_metrics(metric_names(config, kind))
        results = likelihood_metrics(setup, params, config, model_names)
        num = max(config.eval.num_samples, config.sampling.num_samples)
        if self.sampler is None:
            self.sampler = Sampler(setup, config.sampling, min(config.eval.batch_size, num),
                                   self.mesh)
        samples, labels = generate(setup, params, config.sampling, num, config.eval.batch_size,
                                   sampler=self.sampler, progress=self.progress)
        if parallel.is_main_process():
            reference = None
            if kind == "points":
                reference, _ = data_lib.load_arrays(config.data.dataset, "test",
                                                    config.data.get("data_dir"), limit=2000)
            self.last_outputs = reporting.save_figures(
                workdir, name, samples[:config.sampling.num_samples], kind, reference)
        cache_dir = config.eval.cache_dir or os.path.expanduser("~/.cache/diffjax/eval")
        if sample_names:
            if self.progress and parallel.is_main_process():
                print(f"evaluating: {', '.join(sample_names)} of {config.eval.num_samples} "
                      "samples", flush=True)
            results.update(metrics_lib.evaluate_samples(
                samples[:config.eval.num_samples], metrics=sample_names,
                dataset=config.data.dataset, cache_dir=cache_dir,
                labels=None if labels is None else labels[:config.eval.num_samples],
                data_dir=config.data.get("data_dir"),
                inception_weights=config.eval.inception_weights))
        return {k: float(v) for k, v in dict(results).items()}


def evaluator_for(setup: Setup, config: ml_collections.ConfigDict,
                  mesh: Optional[jax.sharding.Mesh] = None, progress: bool = False):
    """The task's own evaluator (``TaskSpec.evaluator``), else an :class:`Evaluator`."""
    from diffjax.training import tasks  # deferred: the registry is filled by diffjax.train

    factory = tasks.get(setup.task).evaluator or Evaluator
    return factory(setup, config, mesh, progress=progress)


def evaluate(setup: Setup, params: Any, config: ml_collections.ConfigDict, workdir: str,
             name: str) -> dict[str, float]:
    """One evaluation (see :class:`Evaluator`), for ``--mode=eval``."""
    return evaluator_for(setup, config, progress=True)(params, workdir, name)


def likelihood_metrics(setup: Setup, params: Any, config: ml_collections.ConfigDict,
                       names: list[str]) -> dict[str, float]:
    """``nll`` / ``bits_per_dim`` of the first ``eval.likelihood_examples`` test examples."""
    if not names:
        return {}
    from diffjax.evaluate import nll

    x, labels = data_lib.load_arrays(config.data.dataset, "test", config.data.get("data_dir"),
                                     limit=config.eval.likelihood_examples)
    return nll.likelihood_metrics(
        names, setup.denoiser.fn, setup.denoiser.path, setup.denoiser.target, x,
        params=params, kind=setup.data_info.kind,
        labels=labels if setup.conditional else None,
        divergence=config.eval.likelihood_divergence, seed=config.sampling.seed,
        sharding=_examples_sharding(x.shape[0]))


def _examples_sharding(n: int) -> Optional[jax.sharding.Sharding]:
    """The test examples split over the devices like a training batch, when they divide."""
    mesh = parallel.make_mesh()
    return parallel.batch_sharding(mesh) if n % mesh.size == 0 else None


def headline(results: dict[str, float]) -> Optional[str]:
    """``"name=value (floor f)"`` of the first metric with a floor, else the first metric."""
    for name, value in results.items():
        if f"{name}_floor" in results:
            return f"{name}={value:.4g} (real-data floor {results[name + '_floor']:.4g})"
    for name, value in results.items():
        return f"{name}={value:.4g}"
    return None
