"""The XLA compile options diffjax's programs are compiled with, per backend, and ``jit``:
``jax.jit`` with them.

**CPU.** XLA:CPU (jaxlib 0.10) hands convolutions and reductions to YNNPACK by default
(``--xla_cpu_experimental_ynn_fusion_type``). Its convolutions run on one thread: a 3x3
convolution of the bench U-Net (32x32, 128 -> 64 channels, batch 32) kept 1.00 of the 2
cores of a development machine busy at 94 GFLOP/s, where XLA's own (Eigen) convolution kept
1.98 busy at 156 GFLOP/s. Its reductions are what it does well: with YNNPACK off altogether
the steps were no faster than XLA's default. diffjax therefore keeps YNNPACK for reductions
only, which made the training steps of the U-Nets and the autoencoder 6-32% faster on 2
cores and sampling 32% faster (README, "Convolutions on CPU";
``experiments/benchmarks/xla_cpu_options.py``).
The programs compute the same functions; sums run in another order (float32 rounding).

Your choice wins: if ``XLA_FLAGS`` sets ``--xla_cpu_experimental_ynn_fusion_type`` (e.g.
to XLA's default, ``LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_REDUCE``),
diffjax passes no option of its own; a jaxlib that does not know the option gets none.
Other backends get none. The evaluators (``diffjax.evaluate``) keep XLA's defaults: they
are measuring instruments, and their scores should not move with diffjax's choices.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {YNN_OPTION: "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.lru_cache(maxsize=None)
def _for(backend: str, xla_flags: str) -> tuple:
    if backend != "cpu" or YNN_OPTION in xla_flags:
        return ()
    try:  # the option is experimental: a jaxlib without it refuses to compile with it
        jax.jit(jnp.sum, compiler_options=CPU_OPTIONS).lower(jnp.zeros(2)).compile()
    except Exception as error:  # noqa: BLE001 (any refusal means: compile without it)
        warnings.warn(f"diffjax.xla_options: this jaxlib refused {CPU_OPTIONS} ({error}); "
                      "compiling with XLA's defaults", stacklevel=2)
        return ()
    return tuple(CPU_OPTIONS.items())


def compiler_options() -> dict:
    """The options for programs on the default backend ({} where diffjax adds none)."""
    return dict(_for(jax.default_backend(), os.environ.get("XLA_FLAGS", "")))


def _top_level() -> bool:
    """Whether no trace is active: JAX accepts compile options only on a ``jit`` called
    at the top level, not on one staged into another program (which takes the outer
    program's options)."""
    try:
        from jax._src import core
        return bool(core.trace_state_clean())
    except (ImportError, AttributeError):  # unknown: never risk options on a nested jit
        return False


class _Jit:
    """``jax.jit(fun, compiler_options=compiler_options(), **kwargs)`` when called (or
    lowered) at the top level, plain ``jax.jit(fun, **kwargs)`` inside another trace; each
    built at its first use (so that a module-level decorator does not start JAX's
    backends)."""

    def __init__(self, fun: Callable, kwargs: dict):
        functools.update_wrapper(self, fun)
        self._fun, self._kwargs, self._jitted = fun, kwargs, {}

    def _get(self):
        top = _top_level()
        if top not in self._jitted:
            options = compiler_options() if top else {}
            self._jitted[top] = jax.jit(self._fun, compiler_options=options or None,
                                        **self._kwargs)
        return self._jitted[top]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get()(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any):
        return self._get().lower(*args, **kwargs)


def jit(fun: Callable = None, **kwargs: Any):
    """``jax.jit`` with :func:`compiler_options`; also ``functools.partial(jit, ...)`` as a
    decorator."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    return _Jit(fun, kwargs)
