"""Checkpoints of a run: orbax saves of the train state and the data iterator, and the
workdir's ``config.json`` that guards a run against being resumed with another model.

Layout of a workdir::

    config.json             the run's config (written before training starts)
    checkpoints/<step>/     orbax: state/ (the TrainState pytree), data/ (one grain
                            iterator state per process)
    checkpoints_broken/     checkpoints that failed to restore and saves that never
                            completed, moved here by the run's first save after it found
                            them (never deleted)

Restoring falls back to an older checkpoint only when a newer one is damaged: transient I/O
errors are retried with backoff and then stop the run, another number of processes or
changed data-loader settings are refused with the reason, and every process restores the
same step.

orbax writes each step into a temporary directory (``<step>.orbax-checkpoint-tmp``) and
renames it when complete, so a run killed mid-save leaves no half checkpoint under a step's
name, only that directory; saves are asynchronous and :meth:`Checkpointer.close` waits for
them.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from typing import Any, Optional

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from diffjax import atomic
from diffjax import parallel
from diffjax.config_compat import data_loader_changes, incompatibilities
from diffjax.errors import BrokenCheckpointWarning, CheckpointReadError, WorkdirError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
BROKEN_DIR = "checkpoints_broken"
# orbax's name for a step's directory while it is written (it renames it when complete).
PARTIAL_SUFFIX = ".orbax-checkpoint-tmp"


class _IteratorSnapshot:
    """The data iterator's state taken at save time.

    orbax may run handlers after ``save`` returns; by then the loop has read further, so the
    state is captured when the step is saved, not when the file is written.
    """

    def __init__(self, iterator: Any):
        self._state = iterator.get_state()

    def get_state(self) -> bytes:
        return self._state


# --------------------------------------------------------------------------- workdir
def check_workdir(workdir: str) -> None:
    """Creates ``workdir`` if needed and checks that it is writable, before any compute."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir} is not writable: {e.strerror or e}") from None


def load_config(workdir: str) -> Optional[ml_collections.ConfigDict]:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def check_compatible(workdir: str, config: ml_collections.ConfigDict, *,
                     resume: bool = True) -> None:
    """Refuses (WorkdirError) a config whose model, path, target or data shape differs from
    the run already in ``workdir``; changing e.g. ``training.num_steps`` is fine. With
    ``resume`` (training continues the run) the data-loader settings must be unchanged too:
    the checkpoints hold the iterator's position in the old sequence of batches."""
    old = load_config(workdir)
    if old is None:
        return
    found = incompatibilities(old, config)
    if found:
        raise WorkdirError(
            f"--workdir={workdir} holds a run with a different model/path/data "
            f"({'; '.join(found[:4])}{' ...' if len(found) > 4 else ''}); refusing to touch it. "
            "Use a new --workdir, or the config stored in its config.json.")
    changed = data_loader_changes(old, config) if resume else []
    if changed:
        raise WorkdirError(
            f"--workdir={workdir} was trained with other data-loader settings "
            f"({'; '.join(changed)}); its checkpoints hold a position in that sequence of "
            "batches, which cannot be resumed under the new settings. Resume with the old "
            "values (its config.json), or start a new --workdir.")


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes ``workdir/config.json`` atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    atomic.write_text(os.path.join(workdir, CONFIG_FILE),
                      config.to_json(indent=2, sort_keys=True))


# --------------------------------------------------------------------------- errors
_OK, _DAMAGED, _FATAL = 0, 1, 2
# errno values of a storage that may answer on a second try (network file systems, busy
# disks); ENOENT and friends mean the checkpoint is incomplete, which no retry changes.
_TRANSIENT_ERRNOS = frozenset({
    errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE,
    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ENETUNREACH,
    errno.EHOSTUNREACH, errno.ENETDOWN})
# The status codes of tensorstore/gRPC (cloud storage) for the same situation.
_TRANSIENT_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is an I/O failure that may pass:
    a transient errno, a timeout, a dropped connection, or a storage status saying so."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (TimeoutError, ConnectionError)):
            return True
        if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
            return True
        if any(status in str(error) for status in _TRANSIENT_STATUS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


# --------------------------------------------------------------------------- orbax
class Checkpointer:
    """Saves and restores ``(train state, data iterator state)`` under ``workdir/checkpoints``.

    Args:
      workdir: the run's directory.
      keep: number of most recent checkpoints kept.
      async_save: write checkpoints in the background (wait with :meth:`wait`/:meth:`close`).
      read_only: only restore (sample/eval modes): nothing is created or deleted.
      retries, backoff_s: a transient read error (:func:`is_transient`) is retried up to
        ``retries`` times, after ``backoff_s``, ``2 * backoff_s``, ... seconds.
    """

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False, retries: int = 4, backoff_s: float = 0.5):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=False)
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data"), options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()})
        self.broken_steps: list[int] = []
        self.partial_saves: list[str] = []
        # Transient read errors: retried this many times, waiting backoff_s * 2**attempt.
        self.retries, self.backoff_s = retries, backoff_s

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def find_partial_saves(self) -> list[str]:
        """Directories of saves that never completed (a run killed while writing them)."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(os.path.join(self.directory, name) for name in os.listdir(self.directory)
                      if PARTIAL_SUFFIX in name)

    def save(self, step: int, state: Any, iterator: Optional[Any]) -> None:
        """Saves ``state`` (and the iterator's position) as step ``step``; asynchronous.

        The first save moves what :meth:`restore_latest` skipped to ``checkpoints_broken/``:
        orbax would otherwise delete it (``keep`` prunes old steps; a new save of a step
        replaces its unfinished temporary directory).
        """
        if self.broken_steps or self.partial_saves:
            self._move_aside()
        if step in self._manager.all_steps():
            return  # already saved (e.g. a signal right after a periodic save)
        items = {"state": ocp.args.StandardSave(state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def _move_aside(self) -> None:
        """Broken checkpoints and unfinished saves: kept, under ``checkpoints_broken/``."""
        names = [str(step) for step in self.broken_steps] + [
            os.path.basename(path) for path in self.partial_saves]
        if jax.process_index() == 0:
            suffix = f".{int(time.time())}"
            broken = os.path.join(self.workdir, BROKEN_DIR)
            os.makedirs(broken, exist_ok=True)
            for name in names:
                source = os.path.join(self.directory, name)
                if os.path.exists(source):
                    shutil.move(source, os.path.join(broken, name + suffix))
            warnings.warn(f"moved {', '.join(names)} from {self.directory} to {broken} (kept, "
                          "never deleted; remove them yourself once inspected)",
                          BrokenCheckpointWarning, stacklevel=3)
        parallel.sync("diffjax_move_aside")
        self._manager.reload()
        self.broken_steps, self.partial_saves = [], []

    def restore(self, step: int, abstract_state: Any, iterator: Optional[Any] = None) -> Any:
        """The state saved at ``step`` (shapes/shardings of ``abstract_state``); if
        ``iterator`` is given its position is restored in place."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if iterator is not None:
            self._check_process_count(step)
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def _check_process_count(self, step: int) -> None:
        """Each process saved its own data position (``process_<i>-of-<n>.json``): under
        another number of processes they cannot be assigned, which is no damage."""
        folder = os.path.join(self.directory, str(step), "data")
        counts = {name.rsplit("-of-", 1)[1].split(".")[0] for name in
                  (os.listdir(folder) if os.path.isdir(folder) else [])
                  if name.startswith("process_") and "-of-" in name}
        if counts and counts != {str(jax.process_count())}:
            raise WorkdirError(
                f"checkpoint {step} in {self.directory} holds the data positions of "
                f"{'/'.join(sorted(counts))} processes; this run has {jax.process_count()}. "
                "Resume with the same number of processes, or start a new --workdir.")

    def _restore_with_retries(self, step: int, abstract_state: Any,
                              iterator: Optional[Any]) -> Any:
        """:meth:`restore`, retried with exponential backoff while the error is transient
        (:func:`is_transient`); other errors propagate at once."""
        for attempt in range(self.retries + 1):
            try:
                return self.restore(step, abstract_state, iterator)
            except Exception as e:  # classified below: only transient ones are retried
                if not is_transient(e) or attempt == self.retries:
                    raise
                delay = self.backoff_s * 2 ** attempt
                warnings.warn(f"reading checkpoint {step} failed ({_reason(e)}); retrying in "
                              f"{delay:.3g} s", BrokenCheckpointWarning, stacklevel=3)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _agreed_steps(self) -> list[int]:
        """The steps every process sees (on a shared file system they all see the same; one
        whose listing lags must not restore another step than the others)."""
        mine = self.steps()
        common = parallel.common_values(parallel.gather_ints(mine))
        if common != mine:
            warnings.warn(f"checkpoints {sorted(set(mine) - set(common))} are not seen by every "
                          "process; restoring from those all processes see",
                          BrokenCheckpointWarning, stacklevel=3)
        return common

    def restore_latest(self, abstract_state: Any,
                       iterator: Optional[Any] = None) -> tuple[Optional[Any], Optional[int]]:
        """The newest checkpoint that restores cleanly, as ``(state, step)``; ``(None, None)``
        if there is none. Every process restores the same step: the candidates are the steps
        all processes see, and a step damaged for any process is skipped by all. Damaged
        ones and unfinished saves are reported with a warning, skipped and left in place
        (until :meth:`save` moves them aside); only damage leads to an older checkpoint.

        Raises:
          CheckpointReadError: an I/O error that outlasted :attr:`retries` retries (an older
            checkpoint would silently undo training; the newest may be fine once readable).
          WorkdirError: the checkpoints hold the data positions of another number of
            processes; or there are checkpoints but none restores (e.g. another model's):
            starting afresh would overwrite them.
        """
        self.partial_saves = self.find_partial_saves()
        for path in self.partial_saves:
            warnings.warn(f"{path} is a checkpoint save that never completed (the run was "
                          "stopped while writing it); ignoring it",
                          BrokenCheckpointWarning, stacklevel=2)
        steps = self._agreed_steps()
        for step in reversed(steps):
            state, outcome, error = None, _OK, None
            try:
                state = self._restore_with_retries(step, abstract_state, iterator)
            except WorkdirError as e:
                outcome, error = _FATAL, e
            except Exception as e:  # damage (after retries, transient errors are fatal)
                outcome, error = (_FATAL if is_transient(e) else _DAMAGED), e
            outcomes = [o for row in parallel.gather_ints([outcome]) for o in row]
            if _FATAL in outcomes:
                if isinstance(error, WorkdirError):
                    raise error
                raise CheckpointReadError(
                    f"checkpoint {step} in {self.directory} could not be read "
                    f"({_reason(error) if error else 'on another process'}) after "
                    f"{self.retries} retries; not falling back to an older checkpoint. "
                    "Check the file system and resume again.") from error
            if _DAMAGED not in outcomes:
                return state, step
            self.broken_steps.append(step)
            warnings.warn(f"checkpoint {step} in {self.directory} does not restore "
                          f"({_reason(error) if error else 'on another process'}); skipping it",
                          BrokenCheckpointWarning, stacklevel=2)
        if steps:
            raise WorkdirError(
                f"none of the checkpoints {steps} in {self.directory} restores into this "
                "model; refusing to start over and overwrite them. Use a new --workdir.")
        return None, None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
