"""Tests of diffjax.evaluate against closed forms, second methods and known answers."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

from diffjax import evaluate
from diffjax.data import load_arrays


# --------------------------------------------------------------------------- Fréchet

def _random_cov(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    factor = rng.standard_normal((dim, rank or dim))
    return factor @ factor.T / dim


def test_frechet_of_identical_stats_is_zero():
    rng = np.random.default_rng(0)
    mu, cov = rng.standard_normal(20), _random_cov(rng, 20)
    assert evaluate.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)


def test_frechet_of_shifted_gaussian_is_squared_shift():
    rng = np.random.default_rng(1)
    mu, cov, shift = rng.standard_normal(16), _random_cov(rng, 16), rng.standard_normal(16)
    value = evaluate.frechet_distance(mu, cov, mu + shift, cov)
    assert value == pytest.approx(np.sum(shift ** 2), rel=1e-9, abs=1e-9)


def test_frechet_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    s1, s2 = rng.uniform(0.1, 2.0, 10), rng.uniform(0.1, 2.0, 10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    value = evaluate.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    assert value == pytest.approx(expected, rel=1e-10)


def test_frechet_of_gaussians_with_shared_eigenvectors_matches_closed_form():
    # C1 = Q diag(a) Q^T, C2 = Q diag(b) Q^T commute, so tr((C1 C2)^{1/2}) = sum sqrt(a b)
    # and the distance is |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2 in any rotated basis.
    rng = np.random.default_rng(13)
    q, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    a, b = rng.uniform(0.05, 3.0, 9), rng.uniform(0.05, 3.0, 9)
    mu1, mu2 = rng.standard_normal(9), rng.standard_normal(9)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    value = evaluate.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert value == pytest.approx(expected, rel=1e-9)


def test_frechet_from_samples_of_two_gaussians_converges_to_the_closed_form():
    # Samples of N(0, diag(s1^2)) and N(m, diag(s2^2)); the estimate's error shrinks like
    # 1/sqrt(N) around |m|^2 + sum (s1 - s2)^2 (plus an O(D/N) bias).
    rng = np.random.default_rng(14)
    dim, n = 4, 40_000
    s1, s2, m = np.array([1.0, 0.5, 2.0, 1.0]), np.array([0.5, 0.5, 1.0, 1.5]), 0.3
    expected = dim * m ** 2 + np.sum((s1 - s2) ** 2)
    value = evaluate.frechet_from_samples(rng.standard_normal((n, dim)) * s1,
                                          m + rng.standard_normal((n, dim)) * s2)
    assert value == pytest.approx(expected, rel=0.03)
    assert evaluate.frechet_from_samples(rng.standard_normal((n, dim)) * s1,
                                         rng.standard_normal((n, dim)) * s1) < 0.01


@pytest.mark.parametrize("rank", [None, 5])
def test_frechet_matches_scipy_sqrtm_formula(rank):
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    cov1, cov2 = _random_cov(rng, 12, rank), _random_cov(rng, 12)
    cross = scipy.linalg.sqrtm(cov1 @ cov2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2.0 * cross)
    assert evaluate.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-6)


def test_gaussian_stats_match_numpy_mean_and_unbiased_cov():
    x = np.random.default_rng(4).standard_normal((50, 2, 3))
    mu, cov = evaluate.gaussian_stats(x)
    flat = x.reshape(50, 6)
    np.testing.assert_allclose(mu, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(flat, rowvar=False), rtol=1e-10)


# --------------------------------------------------------------------------- sliced W

def _shift_moment_mc(dim: int, p: int, num_projections: int) -> tuple[float, float]:
    """E and Monte Carlo standard error of |<u, theta>|^p, u a unit vector, theta uniform.

    <u, theta>^2 ~ Beta(1/2, (D - 1)/2), so E|<u, theta>|^q = B((q + 1)/2, (D - 1)/2) /
    B(1/2, (D - 1)/2), which gives 1/D for q = 2.
    """
    def moment(q):
        return math.exp(scipy.special.betaln((q + 1) / 2, (dim - 1) / 2)
                        - scipy.special.betaln(0.5, (dim - 1) / 2))
    mean = moment(p)
    return mean, math.sqrt((moment(2 * p) - mean ** 2) / num_projections)


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_wasserstein_of_translate_matches_sphere_average(p):
    # Projected, a translate by d is a 1-D shift by <d, theta>, whose W_p is |<d, theta>|
    # exactly, so SW_p^p = |d|^p E|<d/|d|, theta>|^p (|d|^2 / D for p = 2).
    rng = np.random.default_rng(5)
    dim, k = 6, 2000
    a = rng.standard_normal((300, dim))
    d = rng.standard_normal(dim)
    norm = np.linalg.norm(d)
    mean, stderr = _shift_moment_mc(dim, p, k)
    if p == 2:
        assert mean == pytest.approx(1.0 / dim)
    value = evaluate.sliced_wasserstein(a, a + d, num_projections=k, p=p) ** p
    assert abs(value - norm ** p * mean) < 4.0 * norm ** p * stderr


def test_sliced_wasserstein_of_identical_distributions_is_zero():
    a = np.random.default_rng(6).standard_normal((200, 3))
    assert evaluate.sliced_wasserstein(a, a) == pytest.approx(0.0, abs=1e-12)
    # Each point repeated twice is the same empirical distribution with a different N.
    assert evaluate.sliced_wasserstein(a, np.concatenate([a, a])) == pytest.approx(
        0.0, abs=1e-12)


def test_sliced_wasserstein_unequal_sizes_matches_scipy_in_1d():
    # In 1-D every direction is +-1, so SW_1 is the exact W_1 that scipy computes from CDFs.
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal(70), rng.exponential(size=45)
    value = evaluate.sliced_wasserstein(a[:, None], b[:, None], num_projections=3, p=1)
    assert value == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-10)


# --------------------------------------------------------------------------- MMD

def _gaussian_shift_mmd2(bandwidths, dim: int, shift_sq: float) -> float:
    """Population MMD^2 between N(0, I) and N(mu, I) for a sum of RBF kernels.

    With z = x - x' ~ N(m, 2I), E exp(-|z|^2 / (2h^2)) = (h^2 / (h^2 + 2))^{D/2}
    exp(-|m|^2 / (2 (h^2 + 2))).
    """
    return sum(2.0 * (h * h / (h * h + 2.0)) ** (dim / 2)
               * (1.0 - math.exp(-shift_sq / (2.0 * (h * h + 2.0)))) for h in bandwidths)


def test_mmd_of_identical_sets_is_within_its_diagonal_bound():
    # With b = a the unbiased estimator is (2/m)(mean_{i!=j} k - K), K = k(x, x) = number of
    # kernels: never positive and at most 2K/m in size.
    a = np.random.default_rng(8).standard_normal((400, 2))
    value = evaluate.mmd(a, a, bandwidths=(0.5, 1.0, 2.0))
    assert -2.0 * 3 / 400 <= value <= 1e-12


def test_mmd_separates_same_and_shifted_distributions_at_the_closed_form():
    rng = np.random.default_rng(9)
    dim, n, bandwidths = 2, 1500, (1.0, 2.0)
    shift = np.array([0.6, 0.0])
    a, b = rng.standard_normal((n, dim)), rng.standard_normal((n, dim))
    expected = _gaussian_shift_mmd2(bandwidths, dim, float(shift @ shift))
    same = evaluate.mmd(a, b, bandwidths=bandwidths)
    shifted = evaluate.mmd(a, b + shift, bandwidths=bandwidths)
    assert abs(same) < 0.1 * expected
    assert shifted == pytest.approx(expected, rel=0.15)


def test_mmd_default_bandwidths_follow_the_median_distance():
    # Scaling the data scales the median bandwidth too: the default MMD is scale-invariant.
    rng = np.random.default_rng(10)
    a, b = rng.standard_normal((300, 3)), rng.standard_normal((300, 3)) + 0.5
    assert evaluate.mmd(10.0 * a, 10.0 * b) == pytest.approx(evaluate.mmd(a, b), rel=1e-9)


# --------------------------------------------------------------------------- classifier

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("evaluate_cache"))


@pytest.fixture(scope="module")
def digits_classifier(cache_dir, optimized_xla):
    with optimized_xla():
        return evaluate.load_or_train("digits", cache_dir)


@pytest.fixture(scope="module")
def digits():
    return load_arrays("digits", "train"), load_arrays("digits", "test")


def test_classifier_reaches_95_percent_on_digits(digits_classifier, digits):
    _, (x_test, y_test) = digits
    assert digits_classifier.accuracy(x_test, y_test) > 0.95
    assert digits_classifier.features(x_test[:7]).shape == (7, 128)
    assert digits_classifier.predict(x_test[:7]).shape == (7,)


def test_classifier_cache_is_reloaded_without_touching_data(digits_classifier, cache_dir,
                                                            digits, monkeypatch):
    import diffjax.data

    def no_data(*args, **kwargs):
        raise AssertionError("a cached classifier must not reload or retrain")

    monkeypatch.setattr(diffjax.data, "load_arrays", no_data)
    again = evaluate.load_or_train("digits", cache_dir)
    _, (x_test, _) = digits
    np.testing.assert_array_equal(again.predict(x_test), digits_classifier.predict(x_test))
    assert sorted(os.listdir(cache_dir)) == ["classifier_digits"]  # no temp dirs left


def test_fd_classifier_floor_is_finite_and_below_noise(digits_classifier, digits, cache_dir):
    (x_train, _), (x_test, _) = digits
    noise = np.random.default_rng(11).uniform(-1, 1, (500, 8, 8, 1)).astype(np.float32)
    noisy = evaluate.evaluate_samples(noise, metrics=["fd_classifier"], dataset="digits",
                                      cache_dir=cache_dir)
    real = evaluate.evaluate_samples(x_train[:500], metrics=["fd_classifier"],
                                     dataset="digits", cache_dir=cache_dir)
    assert np.isfinite(noisy["fd_classifier_floor"])
    assert 0.0 < noisy["fd_classifier_floor"] < 0.1 * noisy["fd_classifier"]
    # Real train images are the floor's own kind of sample.
    assert real["fd_classifier"] < 2.0 * real["fd_classifier_floor"]


def test_class_accuracy_of_real_images_with_true_and_shuffled_labels(digits_classifier, digits,
                                                                    cache_dir):
    (x_train, y_train), _ = digits
    x, y = x_train[:400], y_train[:400]
    true = evaluate.evaluate_samples(x, metrics=["class_accuracy"], dataset="digits",
                                     cache_dir=cache_dir, labels=y)
    shuffled = evaluate.evaluate_samples(x, metrics=["class_accuracy"], dataset="digits",
                                         cache_dir=cache_dir, labels=np.roll(y, 1))
    assert true["class_accuracy"] > 0.95 and true["class_accuracy_real"] > 0.95
    assert shuffled["class_accuracy"] < 0.3


def test_non_finite_samples_give_nan_values_and_finite_floors(digits_classifier, cache_dir):
    samples = np.full((50, 8, 8, 1), np.nan, np.float32)
    out = evaluate.evaluate_samples(samples, metrics=["fd_classifier", "sliced_wasserstein"],
                                    dataset="digits", cache_dir=cache_dir)
    assert np.isnan(out["fd_classifier"]) and np.isnan(out["sliced_wasserstein"])
    assert np.isfinite(out["fd_classifier_floor"]) and np.isfinite(
        out["sliced_wasserstein_floor"])


# --------------------------------------------------------------------------- 2-D sets

def test_point_distances_reach_their_floor_on_real_data_only(tmp_path):
    x_train, _ = load_arrays("moons", "train")
    metrics = ["sliced_wasserstein", "mmd"]
    real = evaluate.evaluate_samples(x_train[-1000:], metrics=metrics, dataset="moons",
                                     cache_dir=str(tmp_path))
    shifted = evaluate.evaluate_samples(x_train[-1000:] + np.float32(0.3), metrics=metrics,
                                        dataset="moons", cache_dir=str(tmp_path))
    for name in metrics:
        floor = real[f"{name}_floor"]
        assert floor == shifted[f"{name}_floor"]
        assert shifted[name] > 5.0 * abs(floor)
        assert real[name] < abs(floor) + 0.2 * shifted[name]


# --------------------------------------------------------------------------- registry

def test_unknown_metric_is_refused_with_the_choices():
    with pytest.raises(ValueError) as err:
        evaluate.validate(["fd_classifier", "fidd"], "image")
    message = str(err.value)
    assert "'fidd'" in message
    for name in evaluate.METRICS:
        assert name in message


def test_feature_metrics_are_refused_on_points_with_a_reason():
    with pytest.raises(ValueError, match="does not apply to points.*sliced_wasserstein"):
        evaluate.validate(["fd_classifier"], "points")
    evaluate.validate(["sliced_wasserstein", "mmd"], "points")
    evaluate.validate(["sliced_wasserstein", "mmd"], "image")


def test_class_accuracy_needs_labels_and_model_metrics_are_routed_out(tmp_path):
    with pytest.raises(ValueError, match="class-conditional"):
        evaluate.validate(["class_accuracy"], "image", conditional=False)
    assert evaluate.split_metrics(["mmd", "bits_per_dim"]) == (["mmd"], ["bits_per_dim"])
    evaluate.validate(["bits_per_dim"], "image")
    with pytest.raises(ValueError, match="diffjax.likelihood"):
        evaluate.evaluate_samples(np.zeros((4, 8, 8, 1)), metrics=["bits_per_dim"],
                                  dataset="digits", cache_dir=str(tmp_path))


# --------------------------------------------------------------------------- diversity, NLL

def test_diversity_of_real_images_is_the_real_spread_and_collapse_is_zero(digits_classifier,
                                                                         digits, cache_dir):
    _, (x_test, y_test) = digits
    real = evaluate.evaluate_samples(x_test, metrics=["diversity"], dataset="digits",
                                     cache_dir=cache_dir, labels=y_test)
    assert real["diversity"] == pytest.approx(real["diversity_real"], rel=1e-6)
    first = {c: x_test[np.argmax(y_test == c)] for c in range(10)}
    collapsed = np.stack([first[c] for c in y_test])  # one image per class, repeated
    out = evaluate.evaluate_samples(collapsed, metrics=["diversity"], dataset="digits",
                                    cache_dir=cache_dir, labels=y_test)
    assert out["diversity"] < 1e-3 * real["diversity_real"]


def test_nll_metric_of_the_exact_ring_mixture_is_its_log_density(x64):
    """The bundled ring data set and GaussianMixture.ring() are the same distribution, so the
    metric, fed the exact model, must return the mixture's own mean -log p of the examples."""
    from diffjax import analytic, paths
    from diffjax.evaluate import nll

    ring = analytic.GaussianMixture.ring()
    path = paths.get("rectified_flow")
    x, _ = load_arrays("ring", "test", limit=64)
    out = nll.likelihood_metrics(["nll"], ring.model_fn(path, "velocity"), path, "velocity",
                                 x.astype(np.float64), kind="points")
    expected = -np.asarray(ring.log_prob(x.astype(np.float64)))
    assert out["nll"] == pytest.approx(expected.mean(), abs=0.02)
    assert out["nll_stderr"] == pytest.approx(expected.std(ddof=1) / 8.0, rel=0.05)
    assert set(out) == {"nll", "nll_stderr"}


def test_bits_per_dim_is_refused_on_points_and_needs_a_usable_path():
    from diffjax import paths
    from diffjax.evaluate import nll

    with pytest.raises(ValueError, match="use 'nll'"):
        evaluate.validate(["bits_per_dim"], "points")
    evaluate.validate(["nll"], "points")
    with pytest.raises(ValueError, match="t_max < 1"):
        nll.check(["nll"], "points", paths.get("rectified_flow"), "eps")
    nll.check(["nll"], "points", paths.get("rectified_flow", t_max=0.999), "eps")
