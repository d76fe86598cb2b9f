"""Shared test fixtures."""
import jax
import pytest


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (closed-form checks at 1e-10 need it)."""
    with jax.enable_x64(True):
        yield
