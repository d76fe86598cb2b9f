"""Annealed Langevin dynamics with the exact score of a Gaussian mixture."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import analytic, paths
from diffjax.evaluate import distances
from diffjax.samplers import langevin

RING = analytic.GaussianMixture.ring()


def test_step_sizes_follow_song_and_ermon_rule():
    path = paths.get("ve")
    ts = jnp.linspace(1.0, 0.0, 6)
    sigma = np.exp(np.log(path.sigma_min) + np.asarray(ts) * (np.log(path.sigma_max)
                                                                  - np.log(path.sigma_min)))
    expected = 2e-5 * sigma[1:] ** 2 / sigma[-1] ** 2  # eps * sigma_i^2 / sigma_L^2
    np.testing.assert_allclose(langevin.step_sizes(path, ts, 2e-5), expected, rtol=1e-5)


@pytest.mark.parametrize("path_name", ["ve", "vp_linear"])
def test_langevin_with_the_exact_score_samples_the_ring(x64, path_name):
    path = paths.get(path_name)
    n = 2000
    x, info = diffjax.sample(RING.model_fn(path, "eps"), path, (n, 2), jax.random.PRNGKey(0),
                             target="eps", sampler="langevin", num_steps=201,
                             steps_per_level=10, step_size=2e-5, return_info=True)
    assert info.nfe == 201  # 20 levels x 10 steps + the final denoise
    ref = np.asarray(RING.sample(jax.random.PRNGKey(1), n)[0])
    floor = distances.sliced_wasserstein(np.asarray(RING.sample(jax.random.PRNGKey(2), n)[0]), ref)
    sw = distances.sliced_wasserstein(np.asarray(x), ref)
    assert sw < 1.5 * floor, (sw, floor)
    prior = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (n, 2)))
    assert distances.sliced_wasserstein(prior, ref) > 3 * floor  # the test can fail


def test_bad_langevin_options_are_refused():
    path = paths.get("ve")
    run = lambda **o: diffjax.sample(RING.model_fn(path, "eps"), path, (4, 2),  # noqa: E731
                                     jax.random.PRNGKey(0), target="eps", sampler="langevin",
                                     num_steps=11, **o)
    with pytest.raises(ValueError, match="steps_per_level must be an int >= 1"):
        run(steps_per_level=0)
    with pytest.raises(ValueError, match="step_rule must be one of paper, snr"):
        run(step_rule="fixed")
