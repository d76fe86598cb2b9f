"""Checks of an autoguidance guide run (``config.sampling.guide_workdir``/``guide_step``)
against the main model, before anything is restored (Karras et al. 2024 guide with a weaker
model of the same path and data)."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import ml_collections

from diffjax.errors import ConfigError


def guide_dir(sampling: ml_collections.ConfigDict) -> str:
    return os.path.abspath(os.path.expanduser(sampling.guide_workdir))


def check_guide(sampling: ml_collections.ConfigDict, path_cfg: ml_collections.ConfigDict,
                data_info: Any) -> Optional[ml_collections.ConfigDict]:
    """The config of the guide run that ``sampling`` names, checked against the main
    model's ``config.path`` and data (None without a guide).

    Raises:
      ConfigError: no run there, the requested step is not among its checkpoints, or it
        models another path or data shape; one line.
    """
    if not sampling.get("guide_workdir"):
        if sampling.get("guide_step") is not None:
            raise ConfigError(f"config.sampling.guide_step={sampling.guide_step} needs "
                              "config.sampling.guide_workdir (the guide's run)")
        return None
    from diffjax import checkpoint as ckpt_lib  # deferred: orbax is slow to import

    workdir = guide_dir(sampling)
    key = f"config.sampling.guide_workdir={sampling.guide_workdir}"
    guide_cfg = ckpt_lib.load_config(workdir)
    if guide_cfg is None:
        raise ConfigError(f"{key} holds no run (no {ckpt_lib.CONFIG_FILE}); valid choices: "
                          "the workdir of a trained run")
    norm = lambda d: json.loads(json.dumps(d.to_dict(), sort_keys=True))  # noqa: E731
    if norm(guide_cfg.path) != norm(path_cfg):
        raise ConfigError(f"{key} was trained on another path ({_path_text(guide_cfg.path)}; this "
                          f"model: {_path_text(path_cfg)}); the guide must share the path")
    from diffjax import data as data_lib

    shape = tuple(data_lib.info_of(guide_cfg.data).shape)
    if shape != tuple(data_info.shape):
        raise ConfigError(f"{key} models data of shape {shape} ({guide_cfg.data.dataset}); this "
                          f"model's data has shape {tuple(data_info.shape)}")
    folder = os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR)
    steps = sorted(int(n) for n in (os.listdir(folder) if os.path.isdir(folder) else [])
                   if n.isdigit())
    if not steps:
        raise ConfigError(f"{key} has no checkpoint; train it first")
    if sampling.get("guide_step") is not None and sampling.guide_step not in steps:
        raise ConfigError(f"config.sampling.guide_step={sampling.guide_step} is not a checkpoint "
                          f"of {workdir}; valid choices: {', '.join(map(str, steps))}")
    return guide_cfg


def _path_text(path_cfg: ml_collections.ConfigDict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in sorted(path_cfg.items())
                      if k != "name" and v is not None)
    return path_cfg.name + (f" ({extra})" if extra else "")
