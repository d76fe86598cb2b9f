"""Prompt adherence on `shapes`, measured exactly: GenEval's categories with our detector.

GenEval (Ghosh et al. 2023) scores a text-to-image model by detecting the objects in each
generated image and checking them against what the prompt asks for, per category. Here the
prompt is a `shapes` caption, parsed exactly (`diffjax.data.shapes_captions.parse`), and
the detector is the in-project `shapes_detector`; an image scores 1 when the detected
scene `satisfies` the prompt. Reported (all in [0, 1]):

* ``shapes_eval_<category>`` for every category of `shapes.CATEGORIES` (NaN where no
  prompt of that category was given), and ``shapes_eval``: the mean over the categories
  present (GenEval's ``overall``);
* ``shapes_eval_real``: ``shapes_eval`` of the real test split with its own captions, the
  ceiling a perfect generator would reach through this detector;
* ``fd_shapes`` / ``fd_shapes_floor``: Fréchet distance in the detector's pooled features
  between samples (resp. ``n`` train images) and the test split, as ``fd_classifier``.

`score` is the plain function; `shapes_eval_metric` and `fd_shapes_metric` are the
registry entries of :mod:`diffjax.evaluate.metrics` (they read its context object).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from diffjax.evaluate import frechet

if TYPE_CHECKING:
    from diffjax.evaluate import shapes_detector

DATASETS = ("shapes", "shapes_64")
DEFAULT_CACHE_DIR = "~/.cache/diffjax/eval"
# `diffjax.data.shapes.CATEGORIES` (a test checks they agree), written out so that importing
# the metric registry does not import diffjax.data, hence tfds.
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
CATEGORY_KEYS = tuple(f"shapes_eval_{c}" for c in CATEGORIES)
REPORTS = ("shapes_eval", "shapes_eval_real") + CATEGORY_KEYS


def evaluator(cache_dir: str | None = None) -> "shapes_detector.Detector":
    """The cached detector (``cache_dir`` defaults to `DEFAULT_CACHE_DIR`)."""
    return _evaluator(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR))


@functools.lru_cache(maxsize=4)
def _evaluator(cache_dir: str) -> "shapes_detector.Detector":
    from diffjax.evaluate import shapes_detector  # deferred: it imports diffjax.data
    return shapes_detector.load_or_train(cache_dir)


def _as_prompts(prompts: Sequence[str] | dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    from diffjax.data import shapes_captions  # deferred: diffjax.data imports tfds

    if isinstance(prompts, dict):
        parsed = prompts
    else:
        if isinstance(prompts, str):
            raise ValueError("prompts must be one caption per image, not a single string")
        parsed = shapes_captions.parse_batch(list(prompts))
    if len(parsed["category"]) != n:
        raise ValueError(f"got {n} images and {len(parsed['category'])} prompts; "
                         "each image needs its own prompt")
    return parsed


def adherence(images: np.ndarray, prompts: Sequence[str] | dict[str, np.ndarray], *,
              detector: "shapes_detector.Detector | None" = None) -> np.ndarray:
    """Whether each image shows what its prompt asks for. [N] bool.

    Args:
      images: [N, R, R, 3] in [-1, 1], R in (32, 64).
      prompts: N captions, or their `shapes_captions.parse_batch`.
      detector: defaults to `evaluator()`.
    """
    from diffjax.data import shapes_captions
    from diffjax.evaluate import shapes_detector

    images = np.asarray(images, np.float32)
    parsed = _as_prompts(prompts, len(images))  # parse errors come before any compute
    shapes_detector.to_input(images[:0])  # so do shape errors
    detector = detector or evaluator()
    return shapes_captions.satisfies(parsed, detector.detect(images))


def score(images: np.ndarray, prompts: Sequence[str] | dict[str, np.ndarray], *,
          detector: "shapes_detector.Detector | None" = None) -> dict[str, float]:
    """``shapes_eval`` and ``shapes_eval_<category>`` of images against their prompts.

    Args: as `adherence`. Returns every key of `CATEGORY_KEYS` and ``shapes_eval``.
    """
    from diffjax.data import shapes_captions

    parsed = _as_prompts(prompts, len(images))
    ok = adherence(images, parsed, detector=detector)
    per = shapes_captions.per_category(ok, parsed["category"])
    out = {key: per.get(c, float("nan")) for key, c in zip(CATEGORY_KEYS, CATEGORIES)}
    out["shapes_eval"] = per["overall"]
    return out


def chance(prompts: dict[str, np.ndarray], scenes: dict[str, np.ndarray],
           seed: int = 0) -> dict[str, float]:
    """Exact adherence of true ``scenes`` to a seeded shuffle of their ``prompts``: the
    score of a generator that ignores its prompt (per category and ``overall``)."""
    from diffjax.data import shapes_captions

    perm = np.random.default_rng(seed).permutation(len(prompts["category"]))
    shuffled = {k: v[perm] for k, v in prompts.items()}
    ok = shapes_captions.satisfies(shuffled, scenes)
    return shapes_captions.per_category(ok, shuffled["category"])


# --------------------------------------------------------------------------- registry entries

def check_dataset(dataset: str, metric: str) -> None:
    """Refuses metrics of `shapes` on other data sets (before any compute)."""
    if dataset not in DATASETS:
        raise ValueError(f"metric {metric!r} reads `shapes` scenes; dataset {dataset!r} is "
                         f"not one of {DATASETS}")


def _test_records(ctx: Any) -> dict[str, np.ndarray]:
    from diffjax.data import shapes_builder  # deferred: data loading pulls in tfds
    return shapes_builder.load_records(ctx.dataset, "test", ctx.data_dir)


def shapes_eval_metric(ctx: Any) -> dict[str, float]:
    """`REPORTS` for ``ctx.samples`` against ``ctx.prompts`` (a metrics `_Context`)."""
    check_dataset(ctx.dataset, "shapes_eval")
    if ctx.prompts is None:
        raise ValueError("metric 'shapes_eval' needs the prompts the samples were generated "
                         "from (evaluate_samples(..., prompts=[...]))")
    parsed = _as_prompts(ctx.prompts, len(ctx.samples))
    detector = evaluator(ctx.cache_dir)
    test = _test_records(ctx)
    real = score(test["image"].astype(np.float32) / 127.5 - 1.0, list(test["caption"]),
                 detector=detector)
    if ctx.finite:
        out = score(ctx.samples, parsed, detector=detector)
    else:
        out = {key: float("nan") for key in CATEGORY_KEYS + ("shapes_eval",)}
    return {**out, "shapes_eval_real": real["shapes_eval"]}


def fd_shapes(samples: np.ndarray, train: np.ndarray, test: np.ndarray, *,
              detector: "shapes_detector.Detector | None" = None) -> dict[str, float]:
    """``fd_shapes`` of ``samples`` and its floor ``fd_shapes_floor`` of ``train``, both
    against ``test`` (images [N, R, R, 3] in [-1, 1]); NaN for non-finite samples."""
    detector = detector or evaluator()
    reference = frechet.gaussian_stats(detector.features(test))

    def fd(x: np.ndarray) -> float:
        return frechet.frechet_distance(*frechet.gaussian_stats(detector.features(x)),
                                        *reference)

    value = fd(samples) if np.all(np.isfinite(samples)) else float("nan")
    return {"fd_shapes": value, "fd_shapes_floor": fd(train)}


def fd_shapes_metric(ctx: Any) -> dict[str, float]:
    """``fd_shapes`` of ``ctx.paired`` against ``ctx.test`` (a metrics `_Context`)."""
    check_dataset(ctx.dataset, "fd_shapes")
    samples, train = ctx.paired
    return fd_shapes(samples, train, ctx.test[0], detector=evaluator(ctx.cache_dir))
