"""The metric registry: the one way a run or a sweep turns samples into numbers.

Every sample metric compares generated samples with the held-out ``test`` split of the
data set the model was trained on, except ``fid_inception``, which follows the published
protocol (below). A distance estimated from finitely many samples is not
0 even for a perfect model, so each distance comes with its *floor*: the same distance,
at the same sample size, between real ``train`` data and the same ``test`` split. A model
is as good as real data when its value reaches the floor.

==================  ============  ===========================================================
name                data kinds    reports
==================  ============  ===========================================================
fd_classifier       image         ``fd_classifier``, ``fd_classifier_floor``: Fréchet distance
                                  in the penultimate features of the data set's own CNN
                                  (`classifier.load_or_train`)
class_accuracy      image         ``class_accuracy``: that CNN's accuracy on class-conditional
                                  samples against the labels they were conditioned on;
                                  ``class_accuracy_real``: its accuracy on the test split
                                  (the ceiling)
diversity           image         ``diversity``: RMS within-class spread of the CNN's features
                                  of class-conditional samples, grouped by the label they were
                                  conditioned on (``sqrt(mean_c tr Cov_c / d)``);
                                  ``diversity_real``: the same of the test split by its labels
sliced_wasserstein  points, image ``sliced_wasserstein``, ``sliced_wasserstein_floor``: SW_2
mmd                 points, image ``mmd``, ``mmd_floor``: unbiased MMD^2, sum of RBF kernels
fid_inception       image         ``fid_inception``: FID as papers report it, with the
                                  Inception weights of ``config.eval.inception_weights``:
                                  samples clipped and quantised to uint8, against the
                                  statistics of the whole *train* split (no floor)
shapes_eval         image         ``shapes_eval`` (+ ``_<category>``, ``_real``): GenEval-style
                                  prompt adherence on ``shapes`` (`shapes_eval`); needs
                                  the ``prompts`` the samples were generated from
fd_shapes           image         ``fd_shapes``, ``fd_shapes_floor``: Fréchet distance in the
                                  ``shapes`` detector's features
==================  ============  ===========================================================

Decisions:

* ``sliced_wasserstein`` and ``mmd`` also run on images, on raw pixels. They are weak judges
  of images but need no learned feature space, so they are a cheap cross-check of the
  feature-space numbers; their floors keep them honest. The MMD bandwidths come from the
  median heuristic on real data (train subset and test pooled) and are shared by value and
  floor, so that both use one kernel.
* The feature-space metrics are refused on 2-D points: the classifier and Inception are
  image networks, and for points the distances above compare the points themselves.
* Sizes: with ``N`` samples and ``T`` train examples, ``n = min(N, T)``. Distances use ``n``
  samples (a seeded subset if ``N > T``) and the floor ``n`` train examples, both against
  the whole test split, except ``mmd``, whose cost is quadratic: it compares with one
  seeded test subset of at most ``n`` points, shared by value and floor.
  ``class_accuracy`` and ``fid_inception`` use all ``N`` samples.
* Non-finite samples (a diverged sampler) give NaN values; floors are still reported.
* ``fid_inception`` is the number papers report (Heusel et al. 2017; e.g. CIFAR-10: 50k
  samples against the 50k training images): samples are clipped to [-1, 1] and quantised to
  uint8 (`inception.quantize`, as saved PNGs hold them) before the network; the reference
  is every image of the ``train`` split through the same quantisation, its statistics
  cached in ``cache_dir`` per (data set, image size, split, SHA-256 of the weights file).
  Callers pass float samples as for every other metric.

Model metrics: ``nll`` (nats) and ``bits_per_dim`` judge the *model*, not samples, so they
are not computed here. Their names are in `MODEL_METRICS` (so one ``config.eval.metrics``
list can name both kinds and `validate` checks them); `split_metrics` separates them, and
the caller computes them with :mod:`diffjax.evaluate.nll` on the test split and merges the
dicts (``diffjax.train.evaluate`` does). `evaluate_samples` refuses them with a pointer there.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, Sequence

import numpy as np

from diffjax.evaluate import classifier as classifier_lib
from diffjax.evaluate import control as control_lib, distances, frechet
from diffjax.evaluate import inception as inception_lib
from diffjax.evaluate import shapes_eval as shapes_eval_lib

__all__ = ["DATA_KINDS", "METRICS", "MODEL_METRICS", "Metric", "evaluate_samples",
           "split_metrics", "validate"]

# The data kinds of `diffjax.data.info(...).kind`.
DATA_KINDS = ("image", "points")

# Model metrics computed by `diffjax.likelihood`, not from samples (see module docstring).
MODEL_METRICS: Mapping[str, str] = {
    "nll": "diffjax.likelihood on the test split (diffjax.evaluate.nll; nats per example)",
    "bits_per_dim": "diffjax.likelihood on the test split (diffjax.evaluate.nll; 8-bit images)",
}


@dataclasses.dataclass(frozen=True)
class Metric:
    """A registered sample metric.

    Attributes:
      kinds: data kinds it applies to.
      refusal: why it does not apply to the other kinds (shown by `validate`).
      compute: ``compute(ctx) -> {key: value}``; the keys are listed in `reports`.
      reports: the keys it adds to the result.
      needs_labels: whether it needs the labels the samples were conditioned on.
      needs_prompts: whether it needs the captions the samples were generated from.
      datasets: the only data sets it applies to; None for any.
    """

    kinds: tuple[str, ...]
    refusal: str
    compute: Callable[["_Context"], dict[str, float]]
    reports: tuple[str, ...]
    needs_labels: bool = False
    needs_prompts: bool = False
    datasets: tuple[str, ...] | None = None


def _subset(size: int, n: int, seed: Sequence[int]) -> np.ndarray:
    """Sorted indices of ``n`` of ``range(size)`` drawn without replacement."""
    return np.sort(np.random.default_rng(seed).choice(size, n, replace=False))


class _Context:
    """What the metrics of one call share, each piece loaded once and only when needed."""

    def __init__(self, samples: np.ndarray, labels: np.ndarray | None, dataset: str,
                 cache_dir: str, data_dir: str | None, inception_weights: str | None,
                 seed: int, prompts: Sequence[str] | None = None,
                 image_size: int | None = None):
        self.samples = samples
        self.image_size = image_size
        self.prompts = prompts
        self.labels = labels
        self.dataset = dataset
        self.cache_dir = cache_dir
        self.data_dir = data_dir
        self.inception_weights = inception_weights
        self.seed = seed
        self.finite = bool(np.all(np.isfinite(samples)))

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        from diffjax.data import load_arrays  # Deferred: data loading pulls in tfds.
        return load_arrays(self.dataset, split, self.data_dir, image_size=self.image_size)

    @functools.cached_property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self._split("test")

    @functools.cached_property
    def paired(self) -> tuple[np.ndarray, np.ndarray]:
        """``(samples [n, ...], train [n, ...])`` with ``n = min(N, T)``, seeded subsets.

        Each subset has its own random stream, so the floor's train subset depends only on
        ``(seed, n)`` and trials of a sweep with equal sample counts share their floors.
        """
        train_x, _ = self._split("train")
        n = min(self.samples.shape[0], train_x.shape[0])
        train = train_x[_subset(train_x.shape[0], n, [self.seed, 0])]
        samples = self.samples
        if samples.shape[0] > n:
            samples = samples[_subset(samples.shape[0], n, [self.seed, 1])]
        return samples, train

    @functools.cached_property
    def classifier(self) -> classifier_lib.Classifier:
        return classifier_lib.load_or_train(self.dataset, self.cache_dir,
                                            data_dir=self.data_dir)

    @functools.cached_property
    def test_features(self) -> np.ndarray:
        return self.classifier.features(self.test[0])

    def on_samples(self, fn: Callable[..., float], *args) -> float:
        """``fn(*args)`` of sample-dependent inputs, or NaN when the samples are not finite."""
        return float(fn(*args)) if self.finite else float("nan")


def _fd_classifier(ctx: _Context) -> dict[str, float]:
    samples, train = ctx.paired
    reference = frechet.gaussian_stats(ctx.test_features)

    def fd(x: np.ndarray) -> float:
        return frechet.frechet_distance(
            *frechet.gaussian_stats(ctx.classifier.features(x)), *reference)

    return {"fd_classifier": ctx.on_samples(fd, samples),
            "fd_classifier_floor": fd(train)}


def _class_accuracy(ctx: _Context) -> dict[str, float]:
    test_x, test_y = ctx.test
    return {"class_accuracy": ctx.on_samples(ctx.classifier.accuracy, ctx.samples, ctx.labels),
            "class_accuracy_real": ctx.classifier.accuracy(test_x, test_y)}


def _spread(features: np.ndarray, labels: np.ndarray) -> float:
    """``sqrt(mean_c tr Cov(features | class c) / d)``: the RMS within-class spread."""
    traces = [np.var(features[labels == c], axis=0).sum() for c in np.unique(labels)
              if np.sum(labels == c) > 1]
    return float(np.sqrt(np.mean(traces) / features.shape[1]))


def _diversity(ctx: _Context) -> dict[str, float]:
    test_x, test_y = ctx.test
    return {"diversity": ctx.on_samples(
                lambda x, y: _spread(ctx.classifier.features(x), y), ctx.samples, ctx.labels),
            "diversity_real": _spread(ctx.test_features, test_y)}


def _sliced_wasserstein(ctx: _Context) -> dict[str, float]:
    samples, train = ctx.paired
    test_x = ctx.test[0]
    sw = functools.partial(distances.sliced_wasserstein, seed=ctx.seed)
    return {"sliced_wasserstein": ctx.on_samples(sw, samples, test_x),
            "sliced_wasserstein_floor": sw(train, test_x)}


def _mmd(ctx: _Context) -> dict[str, float]:
    samples, train = ctx.paired
    test_x = ctx.test[0]
    if test_x.shape[0] > samples.shape[0]:
        # Quadratic cost: the reference shrinks to the sample size too (one subset, shared).
        test_x = test_x[_subset(test_x.shape[0], samples.shape[0], [ctx.seed, 2])]
    median = distances.median_bandwidth(train, test_x)
    bandwidths = [median * s for s in distances.BANDWIDTH_SCALES]
    mmd = functools.partial(distances.mmd, bandwidths=bandwidths)
    return {"mmd": ctx.on_samples(mmd, samples, test_x), "mmd_floor": mmd(train, test_x)}


# The FID protocol of Heusel et al. 2017 as papers report it (e.g. Karras et al. 2022):
# generated images as saved 8-bit files against the statistics of the whole training split.
FID_REFERENCE_SPLIT = "train"


def _fid_inception(ctx: _Context) -> dict[str, float]:
    extractor = inception_lib.load_inception(ctx.inception_weights)
    size = "" if ctx.image_size is None else f"_{ctx.image_size}px"
    reference = inception_lib.reference_stats(
        extractor, ctx.cache_dir, f"{ctx.dataset}{size}_{FID_REFERENCE_SPLIT}",
        lambda: ctx._split(FID_REFERENCE_SPLIT)[0])

    def fid(x: np.ndarray) -> float:
        features = extractor(inception_lib.quantize(x))
        return frechet.frechet_distance(*frechet.gaussian_stats(features), *reference)

    return {"fid_inception": ctx.on_samples(fid, ctx.samples)}

_FEATURE_REFUSAL = ("it embeds samples with an image network; for 2-D points use "
                    "sliced_wasserstein or mmd, which compare the points themselves")

METRICS: dict[str, Metric] = {
    "fd_classifier": Metric(("image",), _FEATURE_REFUSAL, _fd_classifier,
                            ("fd_classifier", "fd_classifier_floor")),
    "class_accuracy": Metric(("image",), "the in-project classifier is an image CNN",
                             _class_accuracy, ("class_accuracy", "class_accuracy_real"),
                             needs_labels=True),
    "diversity": Metric(("image",), "the in-project classifier is an image CNN", _diversity,
                        ("diversity", "diversity_real"), needs_labels=True),
    "sliced_wasserstein": Metric(DATA_KINDS, "", _sliced_wasserstein,
                                 ("sliced_wasserstein", "sliced_wasserstein_floor")),
    "mmd": Metric(DATA_KINDS, "", _mmd, ("mmd", "mmd_floor")),
    "fid_inception": Metric(("image",), _FEATURE_REFUSAL, _fid_inception, ("fid_inception",)),
    "shapes_eval": Metric(("image",), "it detects shapes objects in images",
                          shapes_eval_lib.shapes_eval_metric, shapes_eval_lib.REPORTS,
                          needs_prompts=True, datasets=shapes_eval_lib.DATASETS),
    "fd_shapes": Metric(("image",), _FEATURE_REFUSAL, shapes_eval_lib.fd_shapes_metric,
                        ("fd_shapes", "fd_shapes_floor"), datasets=shapes_eval_lib.DATASETS),
    **{n: Metric(("image",), "it finds edges and objects in images", control_lib.metric_fn(n),
                 control_lib.REPORTS[n]) for n in control_lib.REPORTS},  # control_f1, _iou
}


def _as_names(metrics: Sequence[str] | str) -> list[str]:
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    return list(dict.fromkeys(names))  # Drops repeats, keeps order.


def split_metrics(metrics: Sequence[str] | str) -> tuple[list[str], list[str]]:
    """``(sample metrics for evaluate_samples, model metrics for diffjax.likelihood)``."""
    names = _as_names(metrics)
    return ([m for m in names if m not in MODEL_METRICS],
            [m for m in names if m in MODEL_METRICS])


def validate(metrics: Sequence[str] | str, data_kind: str, *,
             conditional: bool | None = None,
             inception_weights: str | None = None) -> None:
    """Checks a metric list before any compute; raises ValueError naming the problem.

    Args:
      metrics: metric names (`METRICS` or `MODEL_METRICS`).
      data_kind: ``"image"`` or ``"points"``, as ``diffjax.data.info(dataset).kind``.
      conditional: whether the samples will carry class labels; ``None`` skips the check.
      inception_weights: the ``config.eval.inception_weights`` path, checked only when
        ``fid_inception`` is asked for.

    Raises:
      ValueError: unknown name (the message lists the choices), a metric that does not
        apply to ``data_kind`` (with the reason), or ``class_accuracy`` without labels.
      MissingInceptionWeights: ``fid_inception`` without a weights file.
    """
    if data_kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {data_kind!r}; choices: {list(DATA_KINDS)}")
    for name in _as_names(metrics):
        if name in MODEL_METRICS:
            from diffjax.evaluate import nll  # deferred: pulls in the likelihood solver
            if data_kind not in nll.MODEL_METRIC_KINDS[name]:
                nll.check([name], data_kind, None, "")
            continue
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choices: "
                             f"{sorted(METRICS) + sorted(MODEL_METRICS)}")
        metric = METRICS[name]
        if data_kind not in metric.kinds:
            raise ValueError(f"metric {name!r} does not apply to {data_kind} data: "
                             f"{metric.refusal}")
        if metric.needs_labels and conditional is False:
            raise ValueError(f"metric {name!r} needs class-conditional samples and the "
                             "labels they were conditioned on")
        if name == "fid_inception":
            inception_lib.check_weights_path(inception_weights)


def evaluate_samples(samples: np.ndarray, *, metrics: Sequence[str], dataset: str,
                     cache_dir: str, labels: np.ndarray | None = None,
                     data_dir: str | None = None, inception_weights: str | None = None,
                     seed: int = 0, prompts: Sequence[str] | None = None,
                     image_size: int | None = None) -> dict[str, float]:
    """Computes the requested sample metrics against the test split of ``dataset``.

    Args:
      samples: ``[N, *shape]`` generated samples, in the data's range (images in [-1, 1]).
      metrics: names from `METRICS`; see the module docstring for what each reports.
      dataset: the data set name known to ``diffjax.data``.
      cache_dir: where the classifier and Inception reference statistics are cached.
      labels: ``[N]`` int class labels the samples were conditioned on (``class_accuracy``).
      data_dir: ``config.data.data_dir``.
      inception_weights: ``config.eval.inception_weights`` (``fid_inception``).
      seed: seeds the subsets and the sliced-Wasserstein directions.
      prompts: ``[N]`` captions the samples were generated from (``shapes_eval``).
      image_size: ``config.data.image_size``: the data's images are ADM's centre crops of
        that size (the reference statistics too).

    Returns:
      ``{key: float}`` with every key of every requested metric (values and floors).
    """
    from diffjax.data import info  # Deferred: data loading pulls in tfds.

    sample_metrics, model_metrics = split_metrics(metrics)
    if model_metrics:
        raise ValueError(f"{model_metrics} judge the model, not samples: compute them with "
                         f"{[MODEL_METRICS[m] for m in model_metrics]}")
    data_info = info(dataset, data_dir, image_size)
    validate(sample_metrics, data_info.kind, conditional=labels is not None,
             inception_weights=inception_weights)
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim < 2 or tuple(samples.shape[1:]) != tuple(data_info.shape):
        raise ValueError(f"samples of {dataset!r} must have shape [N, "
                         f"{', '.join(map(str, data_info.shape))}], got {samples.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != samples.shape[:1]:
            raise ValueError(f"labels must have shape [{samples.shape[0]}], got {labels.shape}")
    for name in sample_metrics:
        if METRICS[name].needs_prompts and prompts is None:
            raise ValueError(f"metric {name!r} needs prompts=[one caption per sample]")
        if METRICS[name].datasets and dataset not in METRICS[name].datasets:
            raise ValueError(f"metric {name!r} applies to {METRICS[name].datasets} only, "
                             f"not to dataset {dataset!r}")
    ctx = _Context(samples, labels, dataset, cache_dir, data_dir, inception_weights, seed,
                   prompts, image_size)
    results: dict[str, float] = {}
    for name in sample_metrics:
        results.update(METRICS[name].compute(ctx))
    return results
