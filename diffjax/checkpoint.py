"""Checkpoints of a run: orbax saves of the train state and the data iterator, and the
workdir's ``config.json`` that guards a run against being resumed with another model.

Layout of a workdir::

    config.json             the run's config (written before training starts)
    checkpoints/<step>/     orbax: state/ (the TrainState pytree), data/ (one grain
                            iterator state per process)
    checkpoints_broken/     checkpoints that failed to restore and saves that never
                            completed, moved here by the run's first save after it found
                            them (never deleted)

orbax writes each step into a temporary directory (``<step>.orbax-checkpoint-tmp``) and
renames it when complete, so a run killed mid-save leaves no half checkpoint under a step's
name, only that directory; saves are asynchronous and :meth:`Checkpointer.close` waits for
them.
"""
from __future__ import annotations

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

from diffjax.errors import BrokenCheckpointWarning, CheckpointReadError, WorkdirError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
BROKEN_DIR = "checkpoints_broken"
# orbax's name for a step's directory while it is written (it renames it when complete).
PARTIAL_SUFFIX = ".orbax-checkpoint-tmp"
# config.model keys that change how the network computes, not what its parameters are.
_MODEL_KEYS_FREE_TO_CHANGE = ("dtype", "dropout")


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


def _data_signature(config: ml_collections.ConfigDict) -> Optional[tuple]:
    from diffjax import data  # deferred: tfds is slow to import

    try:
        info = data.info(config.data.dataset, config.data.get("data_dir"))
    except Exception:  # a stored dataset that is not known here: compare names instead
        return None
    return tuple(info.shape), info.num_classes


def _differences(old: dict, new: dict, prefix: str) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{prefix}.{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
            for k in keys if old.get(k) != new.get(k)]


def incompatibilities(old: ml_collections.ConfigDict,
                      new: ml_collections.ConfigDict) -> list[str]:
    """What makes a checkpoint of ``old`` unusable for ``new``: model, path, target, data shape."""
    old_model = {k: v for k, v in old.model.to_dict().items() if k not in _MODEL_KEYS_FREE_TO_CHANGE}
    new_model = {k: v for k, v in new.model.to_dict().items() if k not in _MODEL_KEYS_FREE_TO_CHANGE}
    found = _differences(_jsonable(old_model), _jsonable(new_model), "model")
    found += _differences(_jsonable(old.path.to_dict()), _jsonable(new.path.to_dict()), "path")
    old_data, new_data = _data_signature(old), _data_signature(new)
    if old_data is None or new_data is None:
        if old.data.dataset != new.data.dataset:
            found.append(f"data.dataset: {old.data.dataset!r} -> {new.data.dataset!r}")
    elif old_data != new_data:
        found.append(f"data (shape, num_classes): {old_data} -> {new_data}")
    return found


def _jsonable(d: dict) -> dict:
    # Tuples from config files and lists from JSON compare equal after a round trip.
    return json.loads(json.dumps(d))


def load_config(workdir: str) -> Optional[ml_collections.ConfigDict]:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses (WorkdirError) a config whose model, path, target or data shape differs from
    the run already in ``workdir``; changing e.g. ``training.num_steps`` is fine."""
    old = load_config(workdir)
    if old is None:
        return
    found = incompatibilities(old, config)
    if found:
        raise WorkdirError(
            f"--workdir={workdir} holds a run with a different model/path/data "
            f"({'; '.join(found[:4])}{' ...' if len(found) > 4 else ''}); refusing to touch it. "
            "Use a new --workdir, or the config stored in its config.json.")


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes ``workdir/config.json`` atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, CONFIG_FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(config.to_json(indent=2, sort_keys=True))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- orbax
class Checkpointer:
    """Saves and restores ``(train state, data iterator state)`` under ``workdir/checkpoints``.

    Args:
      workdir: the run's directory.
      keep: number of most recent checkpoints kept.
      async_save: write checkpoints in the background (wait with :meth:`wait`/:meth:`close`).
      read_only: only restore (sample/eval modes): nothing is created or deleted.
    """

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
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
        from diffjax import parallel
        parallel.sync("diffjax_move_aside")
        self._manager.reload()
        self.broken_steps, self.partial_saves = [], []

    def restore(self, step: int, abstract_state: Any, iterator: Optional[Any] = None) -> Any:
        """The state saved at ``step`` (shapes/shardings of ``abstract_state``); if
        ``iterator`` is given its position is restored in place."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def restore_latest(self, abstract_state: Any,
                       iterator: Optional[Any] = None) -> tuple[Optional[Any], Optional[int]]:
        """The newest checkpoint that restores cleanly, as ``(state, step)``; ``(None, None)``
        if there is none. Broken ones and unfinished saves are reported with a warning,
        skipped and left in place (until :meth:`save` moves them aside).

        Raises:
          WorkdirError: there are checkpoints but none restores (e.g. another model's):
            starting afresh would overwrite them.
        """
        self.partial_saves = self.find_partial_saves()
        for path in self.partial_saves:
            warnings.warn(f"{path} is a checkpoint save that never completed (the run was "
                          "stopped while writing it); ignoring it",
                          BrokenCheckpointWarning, stacklevel=2)
        steps = self.steps()
        for step in reversed(steps):
            try:
                return self.restore(step, abstract_state, iterator), step
            except Exception as e:  # any failure to read a step means: try an older one
                self.broken_steps.append(step)
                reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                warnings.warn(f"checkpoint {step} in {self.directory} does not restore "
                              f"({type(e).__name__}: {reason}); skipping it",
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
