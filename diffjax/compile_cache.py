"""JAX's persistent compilation cache: a program compiled by one process is reused by the next.

``python -m diffjax.main`` turns it on (and so every trial and evaluation of a sweep, which run
``diffjax.main``): a sweep's second and later evaluations of a model read the sampler's program
from disk instead of compiling it again. The directory is, in order of precedence, the
``--jax_cache_dir`` flag, the ``DIFFJAX_JAX_CACHE`` environment variable, or
``~/.cache/diffjax/jax``; ``off`` (or an empty value) disables the cache.

Correctness: JAX keys an entry by a hash of the program (its HLO module: every static config value
and every line of traced code is in it), the compile options, the devices
and the jax/jaxlib versions; parameters are arguments, not part of the program. A change of code
or of a config value that changes the program is therefore a new entry, never a stale hit.
Several processes: with a size limit set, JAX reads and writes entries under a file lock
(``filelock``), so concurrent runs never read a half-written entry; the least recently used
entries are evicted beyond :data:`MAX_BYTES`.
"""
from __future__ import annotations

import os
from typing import Optional

import jax

ENV = "DIFFJAX_JAX_CACHE"
DEFAULT_DIR = os.path.join("~", ".cache", "diffjax", "jax")
OFF = ("", "off", "none", "0", "false")
MAX_BYTES = 8 * 2**30


def cache_dir(directory: Optional[str] = None) -> Optional[str]:
    """The cache directory chosen by ``directory`` (a flag), ``$DIFFJAX_JAX_CACHE`` or the default;
    None when the chosen value is one of :data:`OFF`."""
    value = directory if directory is not None else os.environ.get(ENV, DEFAULT_DIR)
    if value.strip().lower() in OFF:
        return None
    return os.path.abspath(os.path.expanduser(value))


def enable(directory: Optional[str] = None, min_compile_seconds: float = 0.0) -> Optional[str]:
    """Turns the persistent cache on (before the first compilation) and returns its directory,
    or None when disabled.

    ``min_compile_seconds``: programs that compile faster are not stored. 0 stores every program:
    a process's start-up is many small compilations, and together they are what a warm start saves.
    """
    path = cache_dir(directory)
    if path is None:
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # enables the file lock
    return path
