"""Sample-quality metrics a run or a sweep can ask for.

Public API::

    METRICS                      # registry: fd_classifier, class_accuracy, diversity,
                                 #           sliced_wasserstein, mmd, fid_inception
    MODEL_METRICS                # nll, bits_per_dim: computed by diffjax.evaluate.nll
    validate(metrics, data_kind, *, conditional=None, inception_weights=None)  # before compute
    split_metrics(metrics) -> (sample_metrics, model_metrics)
    evaluate_samples(samples, *, metrics, dataset, cache_dir, labels=None, data_dir=None,
                     inception_weights=None, seed=0) -> dict[str, float]

    frechet_distance(mu1, cov1, mu2, cov2) -> float
    gaussian_stats(x) -> (mu, cov);  frechet_from_samples(a, b) -> float
    sliced_wasserstein(a, b, *, num_projections=256, seed=0, p=2) -> float
    mmd(a, b, *, bandwidths=None) -> float
    train_classifier(x, y, *, num_classes, ...) -> Classifier;  load_or_train(dataset, cache_dir)
    load_inception(path) -> InceptionFeatures  # local .pth / .npz only, never a download
    quantize(images) -> uint8                  # as saved PNGs hold them (the FID protocol)

See :mod:`diffjax.evaluate.metrics` for what each metric reports and its floor.
"""
from diffjax.evaluate.classifier import Classifier, load_or_train, train_classifier
from diffjax.evaluate.distances import mmd, sliced_wasserstein
from diffjax.evaluate.frechet import frechet_distance, frechet_from_samples, gaussian_stats
from diffjax.evaluate.inception import (
    InceptionFeatures,
    MissingInceptionWeights,
    expected_weight_shapes,
    load_inception,
    quantize,
)
from diffjax.evaluate.metrics import (
    DATA_KINDS,
    METRICS,
    MODEL_METRICS,
    evaluate_samples,
    split_metrics,
    validate,
)

__all__ = [
    "DATA_KINDS",
    "METRICS",
    "MODEL_METRICS",
    "Classifier",
    "InceptionFeatures",
    "MissingInceptionWeights",
    "evaluate_samples",
    "expected_weight_shapes",
    "frechet_distance",
    "frechet_from_samples",
    "gaussian_stats",
    "load_inception",
    "load_or_train",
    "mmd",
    "quantize",
    "sliced_wasserstein",
    "split_metrics",
    "train_classifier",
    "validate",
]
