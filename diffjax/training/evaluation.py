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
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffjax import configs, parallel, reporting, xla_options
from diffjax.choices import DEFAULT_METRICS, metric_names  # noqa: F401  (re-exported)
from diffjax import data as data_lib
from diffjax.training import guide as guide_lib
from diffjax.training import tasks
from diffjax.training.setup import Setup

Array = jax.Array
# config -> None, or decode(samples) -> samples in the data set's space, applied to every batch
# a Sampler returns (diffjax.autoencoder.latent decodes an autoencoder's latents).
DECODERS: list[Callable[[ml_collections.ConfigDict], Optional[Callable[[Array], Array]]]] = []


class Sampler:
    """``sampler(params, key, cond) -> x [batch_size, ...]`` from ``config.sampling``,
    compiled once, rows split over ``mesh``.

    ``batch_size`` is rounded up to a multiple of the device count. ``cond`` (a condition
    dict of ``[batch_size, ...]`` numpy arrays, or ``[batch_size]`` labels, or None)
    conditions the model, guided with ``sampling_cfg.guidance_scale`` towards it from the
    null condition of each kind (:attr:`Setup.nulls`); the sampler options set in
    ``sampling_cfg`` (:data:`diffjax.configs.SAMPLER_OPTIONS`) are passed on. With
    ``sampling_cfg.guide_workdir`` the model is autoguided by that run
    (:mod:`diffjax.training.guide`, loaded here once; its parameters are traced too), and
    ``guidance_interval`` limits guidance to a noise range. ``sampling_cfg.micro_batch > 0``
    runs the rows that many at a time inside the program (:func:`_in_chunks`).
    """

    def __init__(self, setup: Setup, sampling_cfg: ml_collections.ConfigDict, batch_size: int,
                 mesh: Optional[jax.sharding.Mesh] = None, step_progress: bool = False):
        self.setup, self.cfg = setup, sampling_cfg
        # step_progress: the program reports each finished grid step (a scalar, no sample)
        # to ``self.on_step(i, n)`` when that is set (generate's progress bar).
        self.step_progress, self.on_step = step_progress, None
        self.mesh = mesh or parallel.make_mesh()
        n = self.mesh.size
        self.batch_size = math.ceil(batch_size / n) * n
        self.rows = parallel.batch_sharding(self.mesh)
        self.traces = 0  # how often the sampler was traced (compiled): once per run
        self.guide = guide_lib.load(sampling_cfg, setup.config.path, setup.data_info) \
            if setup.config is not None else None
        self._fn = xla_options.jit(self._sample, in_shardings=(None, None, self.rows, None),
                                   out_shardings=(self.rows, None))
        self.decode = None if setup.config is None else next(
            (d for d in (f(setup.config) for f in DECODERS) if d is not None), None)

    def _sample(self, params, key, cond, guide_params):
        from diffjax import sample  # deferred: the samplers are not needed to train

        self.traces += 1
        setup, cfg = self.setup, self.cfg
        options = {**tasks.sampling_defaults(setup.config, cfg), **configs.sampler_options(cfg)}
        if cfg.grid is not None:
            options["grid"] = cfg.grid
        if cond:
            options.update(cond=cond, guidance_scale=cfg.guidance_scale, nulls=setup.nulls)
        if self.guide is not None:
            options.update(guidance_scale=cfg.guidance_scale, guide_fn=self.guide.fn,
                           guide_params=guide_params, guide_target=self.guide.target)
        if cfg.get("guidance_interval") is not None:
            options["guidance_interval"] = tuple(cfg.guidance_interval)
        if self.step_progress:
            options["progress"] = self._stepped
        # Parameters are traced arguments of the network function (never constants of the
        # program): one compiled sampler serves every evaluation of the run.
        def draw(rows, key, cond):
            chunk = dict(options, cond=cond) if cond else options
            # ``finished``: False where an adaptive solve ran out of its budget (its rows are
            # then NaN); it cannot raise under this trace, so __call__ raises instead.
            x, info = sample(setup.denoiser.fn, setup.denoiser.path,
                             (rows, *setup.data_info.shape), key, params=params,
                             target=setup.denoiser.target, sampler=cfg.sampler,
                             num_steps=cfg.num_steps, return_info=True, **chunk)
            return x, jnp.asarray(info.finished, bool)

        micro = self.micro_batch
        if micro is None:
            return draw(self.batch_size, key, cond)
        return _in_chunks(draw, self.batch_size, micro, key, cond)

    def _stepped(self, i: int, n: int) -> None:
        if self.on_step is not None:
            self.on_step(i, n)

    @property
    def micro_batch(self) -> Optional[int]:
        """Rows per in-program chunk (:func:`_in_chunks`), None when the batch runs whole."""
        micro = int(self.cfg.get("micro_batch", 0) or 0)
        return micro if 0 < micro < self.batch_size else None

    @property
    def chunks(self) -> int:
        """Sampler calls inside one program: ``_in_chunks``' chunk count, 1 without them."""
        micro = self.micro_batch
        return 1 if micro is None else -(-self.batch_size // micro)

    def __call__(self, params: Any, key: Array, cond: Any = None) -> Array:
        if cond is not None and not isinstance(cond, dict):
            cond = {"label": np.asarray(cond, np.int32)}
        if cond:
            cond = {k: jax.make_array_from_callback(np.shape(v), self.rows,
                                                    lambda index, v=np.asarray(v): v[index])
                    for k, v in cond.items()}
        x, finished = self._fn(params, key, cond or None,
                               None if self.guide is None else self.guide.params)
        if not bool(finished):
            from diffjax.samplers import adaptive as adaptive_lib, registry  # as in _sample

            rtol, atol = (self.cfg.get(k) for k in ("rtol", "atol"))
            defaults = registry.get(self.cfg.sampler).options
            adaptive_lib.check_finished(
                finished, f"config.sampling.sampler={self.cfg.sampler!r}",
                f"config.sampling.num_steps={self.cfg.num_steps}",
                defaults["rtol"] if rtol is None else rtol,
                defaults["atol"] if atol is None else atol)
        return x if self.decode is None else self.decode(x)


def _in_chunks(draw: Callable[[int, Array, Any], tuple[Array, Array]], rows: int, micro: int,
               key: Array, cond: Any) -> tuple[Array, Array]:
    """``draw(micro, key_j, cond_j) -> (x_j, finished_j)`` for chunks j of ``micro`` rows,
    one after another (``lax.map``: one chunk's activations live at a time), reassembled
    into ``rows`` rows, and whether every chunk's solve finished.
    Chunk j holds rows j, j + k, j + 2k, ... (k chunks), so a chunk spans every device that
    holds rows; a last partial chunk is padded (its extra rows repeat the first
    conditions) and the padding dropped."""
    k = -(-rows // micro)
    pad = k * micro - rows

    def split(a):
        return parallel.interleaved_chunks(jnp.concatenate([a, a[:pad]]) if pad else a, k)

    conds = jax.tree_util.tree_map(split, cond) if cond else None
    keys = jax.random.split(key, k)
    xs, finished = jax.lax.map(lambda kc: draw(micro, kc[0], kc[1]), (keys, conds))
    return parallel.join_interleaved(xs)[:rows], jnp.all(finished)


def eval_conditions(setup: Setup, start: int, size: int,
                    prompts: Optional[np.ndarray] = None) -> tuple[Optional[dict], Any]:
    """The conditions of samples ``start .. start + size - 1`` of an evaluation and what
    they were (for the metrics): class labels cycling through the classes, and for a text
    model the test split's captions in order (or ``prompts``, cycled); ``(None, None)``
    for an unconditional model. With ``config.eval.prompt_set`` ``reordered`` or
    ``reworded`` the model is asked in paraphrases of the captions
    (:mod:`diffjax.data.shapes_paraphrase`) and scored against the captions' scenes."""
    if not setup.conditional:
        return None, None
    index = np.arange(start, start + size)
    cond, what = {}, None
    if "label" in setup.cond_kinds:
        what = (index % setup.data_info.num_classes).astype(np.int32)
        cond["label"] = what
    if setup.text is not None:
        config = setup.config
        if prompts is None and setup.text.name == "precomputed":
            table = setup.text.data_table(config.data.dataset, "test",
                                          config.data.get("data_dir"))
            rows = index % len(table.rows)
            cond.update({k: np.stack([table.lookup(i)[k] for i in rows])
                         for k in setup.text.keys})
            return cond, what
        asked = None
        if prompts is None:
            from diffjax.data import shapes_paraphrase
            from diffjax.text import conditioning
            prompts = conditioning.captions(config.data.dataset, "test",
                                            config.data.get("data_dir"))
            prompt_set = config.eval.get("prompt_set", "test")
            if prompt_set != "test":  # the same scenes, asked for in unseen wording
                asked = np.asarray(shapes_paraphrase.paraphrase(
                    prompts[index % len(prompts)], prompt_set), dtype=object)
        what = np.asarray(prompts, dtype=object)[index % len(prompts)]
        cond.update(setup.text.encode([str(p) for p in (what if asked is None else asked)]))
    return cond, what


def generate(setup: Setup, params: Any, sampling_cfg: ml_collections.ConfigDict,
             num_samples: int, batch_size: int, *, sampler: Optional[Sampler] = None,
             progress: bool = True, steps_bar: bool = False,
             prompts: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``num_samples`` samples (numpy, on every process) and what they were conditioned on
    (:func:`eval_conditions`: labels, prompts, or None), drawn from ``sampling_cfg.seed``.

    ``sampler`` reuses a compiled :class:`Sampler` (built here otherwise); ``progress``
    prints one line per batch on the main process; ``steps_bar`` (with ``progress``) shows
    a progress bar over the sampler's steps instead (``--mode=sample``: a long run moves
    while a batch is being drawn).
    """
    steps_bar = steps_bar and progress
    sampler = sampler or Sampler(setup, sampling_cfg, min(batch_size, num_samples),
                                 step_progress=steps_bar)
    b = sampler.batch_size
    key = jax.random.PRNGKey(sampling_cfg.seed)
    chunks, whats = [], []
    num_batches = math.ceil(num_samples / b)
    start = time.perf_counter()
    bar = None
    if steps_bar and sampler.step_progress and parallel.is_main_process():
        from tqdm import tqdm
        bar = tqdm(unit="step", desc=f"sampling {num_samples} ({num_batches} batch"
                   f"{'es' if num_batches > 1 else ''})", dynamic_ncols=True)
        calls = num_batches * sampler.chunks

        def on_step(i, n):
            if bar.total is None:
                bar.total = calls * n
            bar.update(1)
        sampler.on_step = on_step
    try:
        for i in range(num_batches):
            cond, what = eval_conditions(setup, i * b, b, prompts)
            if what is not None:
                whats.append(what)
            chunks.append(parallel.to_host(sampler(params, jax.random.fold_in(key, i), cond)))
            if progress and bar is None and parallel.is_main_process():
                print(f"sampling: batch {i + 1}/{num_batches} ({min((i + 1) * b, num_samples)}"
                      f"/{num_samples} samples, {time.perf_counter() - start:.1f}s)", flush=True)
    finally:
        if bar is not None:
            jax.effects_barrier()
            sampler.on_step = None
            bar.close()
    samples = np.concatenate(chunks)[:num_samples]
    return samples, (np.concatenate(whats)[:num_samples] if whats else None)


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
        samples, what = generate(setup, params, config.sampling, num, config.eval.batch_size,
                                 sampler=self.sampler, progress=self.progress)
        text = setup.text is not None
        labels = None if text or what is None else what[:config.eval.num_samples]
        prompts = list(what[:config.eval.num_samples]) if text and what is not None and \
            what.dtype == object else None
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
                labels=labels, prompts=prompts, data_dir=config.data.get("data_dir"),
                inception_weights=config.eval.inception_weights,
                image_size=config.data.get("image_size")))
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
    if setup.text is not None:
        raise ValueError(f"config.eval.metrics: {', '.join(names)} of a text-conditioned model "
                         "are not available (they condition on class labels); valid choices "
                         "here: the sample metrics, e.g. fd_shapes, shapes_eval")
    from diffjax.evaluate import nll

    x, labels = data_lib.load_arrays(config.data.dataset, "test", config.data.get("data_dir"),
                                     limit=config.eval.likelihood_examples,
                                     image_size=config.data.get("image_size"))
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
