"""The XLA flags of the test suite's processes (pytest's, its xdist workers', and the
``python -m diffjax.main`` and helper processes the tests start).

XLA:CPU's newer fusion emitters (the default since XLA 2025) take longer to compile a
program than its legacy ones, and the suite compiles hundreds of small programs that each
run a few steps: ``--xla_cpu_use_fusion_emitters=false`` compiles the tiny text-to-image
train step in 3.9 s instead of 5.4 s and took ``python -m pytest -n 2 tests`` from 13:04 to
10:11 (837 passed, 2-core development VM, 2026-12-01). The programs' HLO is the same; only
the CPU code generated for their fusions differs. At run time the legacy emitters are
slower (configs/shapes_t2i.py trains at 58-60 examples/s against 67-68 with the default,
``experiments/benchmarks/train_throughput.py --steps=20`` on the same VM), so this is for the tests
only, never a diffjax default.

An XLA that no longer knows the flag aborts on it, so :func:`configure` tries it once in a
subprocess first and leaves it out if that fails. Your ``XLA_FLAGS`` wins: if it already
names the flag, nothing is added.
"""
from __future__ import annotations

import os
import subprocess
import sys

ENV = "DIFFJAX_TEST_XLA_FLAGS"  # what configure() chose; inherited by xdist workers
FLAG = "--xla_cpu_use_fusion_emitters=false"
_PROBE = "import jax; jax.numpy.zeros(2).block_until_ready()"


def _accepted(flags: str) -> bool:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, timeout=300,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def configure() -> None:
    """Before JAX starts its backend: chooses the suite's flags once per session (stored in
    ``$DIFFJAX_TEST_XLA_FLAGS``; set it to "" to test XLA's defaults) and appends them to
    this process's ``XLA_FLAGS``."""
    if ENV not in os.environ:
        user = os.environ.get("XLA_FLAGS", "")
        chosen = ""
        if "xla_cpu_use_fusion_emitters" not in user and _accepted(f"{user} {FLAG}".strip()):
            chosen = FLAG
        os.environ[ENV] = chosen
        if chosen:
            os.environ["XLA_FLAGS"] = f"{user} {chosen}".strip()


def subprocess_flags(*extra: str) -> str:
    """``XLA_FLAGS`` for a process a test starts: ``extra`` and the suite's flags (not the
    flags of the shell that ran pytest, e.g. a device count)."""
    return " ".join(f for f in (*extra, os.environ.get(ENV, "")) if f)


def subprocess_env(env: dict) -> dict:
    """``env`` with ``XLA_FLAGS`` set to :func:`subprocess_flags` (removed if empty)."""
    flags = subprocess_flags()
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    return env
