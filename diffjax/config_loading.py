"""The one way to read a config file: ``configs/NAME.py[:ARG]`` plus overrides.

The command line (``python -m diffjax.main --config=FILE --config.group.key=value``), sweeps,
benchmarks and tests all go through :func:`load`, so an override means the same everywhere:
string overrides are parsed by ml_collections exactly as on the command line (typed by the
field they replace), and every key is checked against the reference config first, so a typo
is one line naming the key and its nearest valid neighbour.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence, Union

import ml_collections
from absl import flags
from ml_collections import config_flags

from diffjax.errors import ConfigError

Overrides = Union[Mapping[str, Any], Sequence[str]]


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"configs/digits.py:edm"`` -> ``("configs/digits.py", "edm")`` (the argument of
    ``get_config``; None when absent)."""
    path, _, arg = spec.partition(":")
    return path, (arg or None)


def _strings(overrides: Sequence[str]) -> list[str]:
    """``["training.num_steps=10", "--config.seed=3"]`` -> command-line flags."""
    out = []
    for item in overrides:
        item = item.lstrip("-")
        if item.startswith("config."):
            item = item[len("config."):]
        out.append(f"--config.{item}")
    return out


def _check_keys(keys: Sequence[str]) -> None:
    from diffjax import config_validation  # deferred: it imports the recipe modules

    for key in keys:
        error = config_validation.is_known_override(key)
        if error is not None:
            raise error


def _parent(config: ml_collections.ConfigDict, dotted: str) -> tuple[Any, str]:
    """``("a.b.c")`` -> ``(config.a.b, "c")``."""
    *groups, key = dotted.split(".")
    node = config
    for group in groups:
        node = node[group]
    return node, key


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    node, key = _parent(config, dotted)
    node[key] = value


def _unset_tuple(config: ml_collections.ConfigDict, flag: str) -> None:
    """``--config.key=None`` on a tuple field: ml_collections parses it as ``(None,)``; here
    it means unset, as on every other field that may be None (a command line clears a
    tuple that the config file set, e.g. ``--config.sampling.guidance_interval=None``)."""
    dotted, _, value = flag[len("--config."):].partition("=")
    if value.strip() != "None":
        return
    node, key = _parent(config, dotted)
    if isinstance(node[key], tuple) and tuple(node[key]) == (None,):
        try:
            node[key] = None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--config.{dotted}=None: this field cannot be unset ({e})") \
                from None


def load(spec: str, overrides: Overrides = (), *, check: bool = True,
         lock: bool = True) -> ml_collections.ConfigDict:
    """The config of ``spec`` (``path.py`` or ``path.py:arg``, ``get_config(arg)``) with
    ``overrides`` applied.

    Args:
      spec: the config file, optionally ``:recipe`` (whatever its ``get_config`` takes).
      overrides: ``{"training.num_steps": 10}`` (values as they are), or
        ``["training.num_steps=10", ...]`` (strings parsed as on the command line).
      check: refuse an override key that the reference config does not have.
      lock: the returned config refuses new keys (as on the command line). Mapping
        overrides may add keys the reference config has (another arch's model keys).

    Raises:
      ConfigError: no such file, a bad override key, or an override value that does not
        parse; one line.
    """
    path, _ = split_spec(spec)
    if not os.path.isfile(path):
        raise ConfigError(f"--config={spec}: no such config file {path!r}")
    mapping = isinstance(overrides, Mapping)
    argv = ["diffjax", f"--config={spec}", *([] if mapping else _strings(overrides))]
    if check:
        _check_keys([a.split("=", 1)[0][len("--config."):] for a in argv[2:]]
                    + (list(overrides) if mapping else []))
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, flag_values=values,
                                             lock_config=lock, sys_argv=argv)
    try:
        values(argv)
    except flags.Error as e:
        message = " ".join(str(e).replace("\\n", " ").split())
        raise ConfigError(f"--config={spec}: {message}") from None
    config = holder.value
    for item in ([] if mapping else _strings(overrides)):
        _unset_tuple(config, item)
    if mapping:
        # The keys were checked against the reference config, which has every arch's model
        # keys: a sweep may switch config.model.arch and set the new arch's keys.
        with config.unlocked():
            for dotted, value in overrides.items():
                try:
                    _set(config, dotted, value)
                except (TypeError, ValueError, KeyError, AttributeError) as e:
                    raise ConfigError(f"config.{dotted}={value!r}: {e}") from None
    return config
