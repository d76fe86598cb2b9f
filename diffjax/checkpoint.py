"""Checkpoints of a run: orbax saves of the train state and the data iterator, and the
workdir's ``config.json`` that guards a run against being resumed with another model.

Layout of a workdir::

    config.json             the run's config (written before training starts)
    checkpoints/<step>/     orbax: state/ (the TrainState pytree), data/ (one grain
                            iterator state per process)
    checkpoints_broken/     checkpoints that failed to restore and had to make way for a
                            new save of the same step (moved here, never deleted)

orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves no half checkpoint under a step's name; saves are asynchronous and
:meth:`Checkpointer.close` waits for them.
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

from diffjax.config_validation import ConfigError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
BROKEN_DIR = "checkpoints_broken"
# config.model keys that change how the network computes, not what its parameters are.
_MODEL_KEYS_FREE_TO_CHANGE = ("dtype", "dropout")


class WorkdirError(ConfigError):
    """The workdir cannot be used for this run (unwritable, or holds an incompatible run)."""


class BrokenCheckpointWarning(UserWarning):
    """A checkpoint that does not restore was skipped."""


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

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, iterator: Optional[Any]) -> None:
        """Saves ``state`` (and the iterator's position) as step ``step``; asynchronous."""
        if step in self._manager.all_steps():
            if step not in self.broken_steps:
                return  # already saved (e.g. a signal right after a periodic save)
            self._move_aside(step)
        items = {"state": ocp.args.StandardSave(state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def _move_aside(self, step: int) -> None:
        """A broken checkpoint in the way of a new save: kept, under ``checkpoints_broken/``."""
        if jax.process_index() == 0:
            dest = os.path.join(self.workdir, BROKEN_DIR, f"{step}.{int(time.time())}")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), dest)
            warnings.warn(f"moved broken checkpoint {step} to {dest} to save step {step} anew",
                          BrokenCheckpointWarning, stacklevel=3)
        from diffjax import parallel
        parallel.sync(f"diffjax_move_aside_{step}")
        self._manager.reload()
        self.broken_steps.remove(step)

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
        if there is none. Broken ones are reported with a warning, skipped and left in place.

        Raises:
          WorkdirError: there are checkpoints but none restores (e.g. another model's):
            starting afresh would overwrite them.
        """
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
