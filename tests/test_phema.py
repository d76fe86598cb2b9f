"""Post-hoc EMA against EMAs tracked step by step."""
from __future__ import annotations

import numpy as np
import pytest

from diffjax import phema


def _track(thetas: np.ndarray, gamma: float) -> np.ndarray:
    """The power-function EMA after every step, by its update rule."""
    ema, out = np.zeros(thetas.shape[1]), []
    for t, theta in enumerate(thetas, start=1):
        b = phema.beta(t, gamma)
        ema = b * ema + (1 - b) * theta
        out.append(ema.copy())
    return np.array(out)


def test_sigma_rel_and_gamma_are_inverse_and_match_edm2_values():
    for s in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert phema.gamma_to_sigma_rel(phema.sigma_rel_to_gamma(s)) == pytest.approx(s, 1e-9)
    # EDM2 (Sec. 3.1): sigma_rel = 0.05 and 0.10 are gamma ~ 16.97 and ~ 6.94.
    assert phema.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert phema.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for bad in (0.0, -0.1, 0.31):
        with pytest.raises(ValueError, match="sigma_rel must be in"):
            phema.sigma_rel_to_gamma(bad)


def test_closed_form_weights_are_the_tracked_ema():
    rng = np.random.default_rng(0)
    thetas = rng.normal(size=(300, 3))
    gamma = phema.sigma_rel_to_gamma(0.1)
    tracked = _track(thetas, gamma)
    for end in (1, 17, 300):
        np.testing.assert_allclose(phema.weights(gamma, end) @ thetas[:end], tracked[end - 1],
                                   rtol=1e-10, atol=1e-12)
    assert phema.weights(gamma, 300).sum() == pytest.approx(1.0, abs=1e-12)


def test_reconstruction_recovers_a_tracked_ema_exactly_and_an_untracked_one_closely():
    rng = np.random.default_rng(1)
    steps, every = 2000, 100
    # A drifting random walk, like parameters in training.
    thetas = np.cumsum(rng.normal(size=(steps, 4)), axis=0) / 10
    gammas = [phema.sigma_rel_to_gamma(s) for s in phema.DEFAULT_SIGMA_RELS]
    tracks = [_track(thetas, g) for g in gammas]
    ends = list(range(every, steps + 1, every))
    snaps = [(g, e) for g in gammas for e in ends]
    values = [tracks[i][e - 1] for i in range(2) for e in ends]

    x = phema.solve(snaps, (gammas[0], steps))  # a tracked one: in the span, recovered exactly
    np.testing.assert_allclose(phema.combine(values, x), tracks[0][-1], rtol=1e-6, atol=1e-8)

    gamma_new = phema.sigma_rel_to_gamma(0.075)  # never tracked
    truth = _track(thetas, gamma_new)
    for end in (steps, 1500):
        got = phema.combine(values, phema.solve(snaps, (gamma_new, end)))
        spread = np.abs(tracks[0][end - 1] - tracks[1][end - 1]).max()
        # Much closer to the truth than the two tracked EMAs are to each other.
        assert np.abs(got - truth[end - 1]).max() < 0.05 * spread


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="no EMA snapshots"):
        phema.solve([], (1.0, 10))
    with pytest.raises(ValueError, match="outside the snapshots' range"):
        phema.solve([(1.0, 10)], (1.0, 11))
