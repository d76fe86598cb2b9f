"""The persistent compilation cache (diffjax.compile_cache): where it lives, and that its keys
follow the program, so a changed config value compiles anew instead of reusing a stale program.

Every test writes into a tmp directory, never the real ~/.cache.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import compilation_cache

from diffjax import compile_cache, config_loading, data, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")


def test_directory_is_the_flag_then_the_environment_then_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    assert compile_cache.cache_dir() == str(tmp_path / ".cache" / "diffjax" / "jax")
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    assert compile_cache.cache_dir() == str(tmp_path / "env")
    assert compile_cache.cache_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert compile_cache.cache_dir("off") is None
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.cache_dir() is None


@pytest.fixture
def events(tmp_path):
    """A cache in tmp_path/jax, and the list of its hit/miss events; restores JAX's settings."""
    saved = {name: getattr(jax.config, name) for name in _SETTINGS}
    seen: list[str] = []

    def listen(event, **kwargs):
        if event.startswith("/jax/compilation_cache/cache_"):
            seen.append(event.rsplit("_", 1)[-1])

    compilation_cache.reset_cache()
    assert compile_cache.enable(str(tmp_path / "jax")) == str(tmp_path / "jax")
    jax.monitoring.register_event_listener(listen)
    yield seen
    jax.monitoring.unregister_event_listener(listen)
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def _compile_train_step(lr: float) -> None:
    """Compiles (not runs) the toy MLP's train step with ``optim.lr = lr``, as a fresh process
    would: JAX's in-memory caches are cleared first."""
    config = config_loading.load(os.path.join(REPO, "configs", "toy2d.py"), lock=False)
    config.data.batch_size = 8
    config.model.hidden = 16
    config.model.depth = 1
    config.optim.lr = lr
    setup = train.build(config, data.info(config.data.dataset))
    state = jax.eval_shape(lambda: train.init_state(setup, 0))
    batch = {"x": jax.ShapeDtypeStruct((8, 2), jnp.float32), "cond": {}}
    jax.clear_caches()
    jax.jit(train.make_train_step(setup)).lower(state, batch).compile()


def test_a_changed_config_value_recompiles_and_an_unchanged_one_hits(events, tmp_path):
    _compile_train_step(1e-3)
    assert events[-1] == "misses"
    entries = set(os.listdir(tmp_path / "jax"))
    assert entries, "nothing was written to the cache"
    _compile_train_step(1e-3)
    assert events[-1] == "hits"
    assert set(os.listdir(tmp_path / "jax")) == entries
    # Same shapes, one number of the config changed (a constant of the program): a new entry.
    _compile_train_step(2e-3)
    assert events[-1] == "misses"
    assert len(set(os.listdir(tmp_path / "jax")) - entries) >= 1


def test_a_program_read_from_the_cache_computes_what_a_compiled_one_does(events):
    f = jax.jit(lambda x: jnp.sin(x) @ x.T)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)), jnp.float32)
    fresh = np.asarray(f(x))
    jax.clear_caches()
    cached = np.asarray(f(x))
    assert events[-1] == "hits"
    np.testing.assert_array_equal(cached, fresh)
