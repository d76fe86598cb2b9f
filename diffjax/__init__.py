"""diffjax — DDPM, score-based SDE models and flow matching as one recipe.

A Gaussian path ``x_t = alpha(t) x0 + sigma(t) eps``, a regression target and a loss
weighting; trained by one jitted step and sampled by any SDE or ODE sampler.
"""
from diffjax import paths, targets  # noqa: F401

__version__ = "0.1.0"


def sample(*args, **kwargs):
    """Draws samples; see :func:`diffjax.samplers.sample` for the full contract."""
    from diffjax.samplers import sample as _sample
    return _sample(*args, **kwargs)
