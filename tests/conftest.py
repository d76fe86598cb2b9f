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


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory):
    """A persistent XLA compilation cache for the tests that train the same tiny program
    several times (a resumed run compiles its step again): the second compile is a read."""
    from jax.experimental.compilation_cache import compilation_cache

    settings = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
                "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    old = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield
    for name, value in old.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
