"""Frozen parts from other runs, by reference (DESIGN §7).

A task that reads another run's parameters (a teacher, an autoencoder, a ControlNet's
base) names that run's workdir in a config key (``TaskSpec.references``). The trainer
loads the run's newest EMA parameters once, passes them to the step as its ``frozen``
argument, and never copies them into its own checkpoints. Instead it records each
reference's identity (workdir, checkpoint step, sha256 of its config and of its
parameters) in ``workdir/references.json`` when the run starts, and refuses to resume
against a reference whose identity changed: the resumed run would otherwise optimise a
different objective from the one its checkpoints were trained on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from diffjax import atomic
from diffjax import checkpoint as ckpt_lib
from diffjax import parallel
from diffjax.training import power_ema
from diffjax.training.setup import Setup, build
from diffjax.training.state import setup_state

REFERENCES_FILE = "references.json"


class ReferenceChangedError(ckpt_lib.WorkdirError):
    """A run's frozen reference is not the one it was started with."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """Another run, read frozen: its setup (networks, path), EMA params and identity."""

    key: str
    setup: Setup
    params: Any
    identity: dict


def params_digest(params: Any) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = np.ascontiguousarray(parallel.to_host(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# "<scheme>:<name>" references that are not workdirs (e.g. "analytic:digits", the exact
# mixture of diffjax.distill): scheme -> loader(key, reference) -> Reference.
SCHEMES: dict[str, Callable[[str, str], Reference]] = {}


def register_scheme(scheme: str, loader: Callable[[str, str], Reference]) -> None:
    """``config.<key> = "<scheme>:..."`` is loaded by ``loader(key, value)``."""
    SCHEMES[scheme] = loader


def restore_newest(config, workdir: str, step: Optional[int] = None,
                   what: str = "checkpoint step"):
    """``(setup, state, step)`` of the newest valid checkpoint of the run in ``workdir``
    (``state`` and ``step`` None when it has none), or of checkpoint ``step``; read-only.
    Shared by frozen references, guides and sampling/evaluation of a trained run. The
    run's stored EMA keys decide the state's layout (a power-EMA run holds more EMAs).
    A ``step`` that is not a checkpoint raises ``WorkdirError`` naming ``what`` and the
    steps there, before anything is built."""
    checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
    try:
        if step is not None and step not in checkpointer.steps():
            raise ckpt_lib.WorkdirError(
                f"{what}={step} is not a checkpoint of {workdir}; valid choices: "
                f"{', '.join(map(str, checkpointer.steps())) or '(none)'}")
        config = power_ema.with_stored_ema(config, ckpt_lib.load_config(workdir))
        setup = build(config)
        abstract, _ = setup_state(setup, config, parallel.make_mesh())
        if step is None:
            state, step = checkpointer.restore_latest(abstract)
        else:
            state = checkpointer.restore(step, abstract)
    finally:
        checkpointer.close()
    return setup, state, step


def load(key: str, workdir: str) -> Reference:
    """The newest checkpoint of the run in ``workdir`` (named by ``config.<key>``), or the
    reference a registered scheme (:data:`SCHEMES`) makes of ``"<scheme>:<name>"``.

    Raises:
      diffjax.checkpoint.WorkdirError: no config.json or no checkpoint there.
    """
    scheme = workdir.split(":", 1)[0] if ":" in workdir else None
    if scheme in SCHEMES:
        return SCHEMES[scheme](key, workdir)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config = ckpt_lib.load_config(workdir)
    if config is None:
        raise ckpt_lib.WorkdirError(f"config.{key}={workdir} holds no run (no "
                                    f"{ckpt_lib.CONFIG_FILE}); train that run first")
    setup, state, step = restore_newest(config, workdir)
    if state is None:
        raise ckpt_lib.WorkdirError(f"config.{key}={workdir} has no checkpoint; train it first")
    config_json = config.to_json(sort_keys=True).encode()
    identity = {"workdir": workdir, "step": int(step),
                "config_sha256": hashlib.sha256(config_json).hexdigest(),
                "params_sha256": params_digest(state.ema_params)}
    return Reference(key, setup, state.ema_params, identity)


def load_all(references: Mapping[str, str]) -> dict[str, Reference]:
    """``{config key: Reference}`` for ``{config key: workdir}``."""
    return {key: load(key, workdir) for key, workdir in references.items()}


def frozen_tree(references: Mapping[str, Reference]) -> dict[str, Any]:
    """What the step gets as ``frozen``: ``{config key: params}``."""
    return {key: ref.params for key, ref in references.items()}


def _recorded(workdir: str) -> dict | None:
    path = os.path.join(workdir, REFERENCES_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def record(workdir: str, references: Mapping[str, Reference]) -> None:
    """Writes the identities to ``workdir/references.json`` (process 0, atomically)."""
    if not parallel.is_main_process():
        return
    path = os.path.join(workdir, REFERENCES_FILE)
    atomic.write_json(path, {k: r.identity for k, r in references.items()}, indent=2,
                      sort_keys=True)


def check_unchanged(workdir: str, references: Mapping[str, Reference]) -> None:
    """Refuses to resume the run in ``workdir`` unless its references are the recorded ones.

    Raises:
      ReferenceChangedError: naming the key, the workdir and what changed.
    """
    recorded = _recorded(workdir) or {}
    current = {k: r.identity for k, r in references.items()}
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if old == new:
            continue
        if old is None or new is None:
            what = "was not recorded when this run started" if old is None else \
                "was recorded when this run started but is no longer set"
            raise ReferenceChangedError(f"--workdir={workdir}: config.{key} {what}; "
                                        "resuming would change the objective. Use a new --workdir.")
        changed = [f"{name}: {old.get(name)} -> {new.get(name)}"
                   for name in ("workdir", "step", "config_sha256", "params_sha256")
                   if old.get(name) != new.get(name)]
        raise ReferenceChangedError(
            f"--workdir={workdir} was trained against config.{key}={old['workdir']} at "
            f"step {old['step']}, which changed ({'; '.join(changed)}); resuming would "
            "optimise a different objective. Restore that run, or use a new --workdir.")
