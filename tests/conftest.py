"""Shared test fixtures."""
import os

import jax
import pytest

# diffjax.main (in-process or as a subprocess) must not fill the real ~/.cache/diffjax/jax.
os.environ.setdefault("DIFFJAX_JAX_CACHE", "off")


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (closed-form checks at 1e-10 need it)."""
    with jax.enable_x64(True):
        yield
