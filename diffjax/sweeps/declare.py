"""Declaring a sweep: the sweep-file format, loading it, and expanding it into trials.

A sweep file is a Python module that defines ``SWEEP = Sweep(...)``: a base config (a config
file with its recipe, plus overrides), a grid of trials (one dict of ``--config.`` overrides
each; :func:`product` and ``+`` build it), the metrics to tabulate, what ``--quick`` changes,
and plots. :func:`make_trials` turns it into :class:`Trial` s, each with its identity
(:mod:`diffjax.sweeps.identity`); :func:`check` validates every trial's config before any
compute.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import os
import re
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

from diffjax.sweeps import identity

# Grid keys ``tag.<column>`` label a trial in the table and plots; they are not overrides.
TAG = "tag."
# Directories of the workdir that are not trials (trial names start with a letter or digit).
TRAIN_DIR = "_train"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

Overrides = Mapping[str, Any]


class SweepError(ValueError):
    """A sweep file, argument or workdir that cannot work; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Plot:
    """One PNG: metric ``y`` against column ``x``, one line per value of ``series``.

    ``x`` and ``series`` name override keys (``"sampling.num_steps"``) or row columns; the
    metric's floor, when reported, is drawn as a dashed line.
    """

    x: str
    y: str
    series: Sequence[str] = ()
    name: str = "plot"
    logx: bool = False
    logy: bool = False
    title: str = ""


@dataclasses.dataclass(frozen=True)
class Script:
    """A trial that runs ``python <path> <out_flag> DIR/<trial> [args]`` instead of diffjax.main.

    ``rows(trial_dir) -> list of dicts`` turns the script's output into table rows.
    """

    path: str
    rows: Callable[[str], list[dict]]
    args: Sequence[str] = ()
    quick_args: Sequence[str] = ("--quick",)
    out_flag: str = "--out"
    images: Sequence[str] = ()  # PNGs the script writes, copied next to results.md


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What a sweep file declares.

    Attributes:
      config: ``"configs/NAME.py[:recipe]"``, relative to the repository root or absolute.
      grid: one dict of overrides per trial (dotted config keys, Python values); an optional
        ``"name"`` entry names the trial's directory (default: its varying overrides), and
        ``"tag.<column>"`` entries label it in the table without changing its config.
      metrics: result keys to tabulate; ``<metric>_floor``, ``_real`` and ``_stderr`` are
        added when the run reports them.
      overrides: applied to every trial.
      quick: overrides added in ``--quick`` mode (fewer steps, samples).
      quick_grid: the grid in ``--quick`` mode (default: ``grid``).
      plots: :class:`Plot` specs.
      description: one line for the top of ``results.md``.
      script: run this instead of diffjax.main (``config`` is then unused).
    """

    config: str = ""
    grid: Sequence[Overrides] = ({},)
    metrics: Sequence[str] = ()
    overrides: Overrides = dataclasses.field(default_factory=dict)
    quick: Overrides = dataclasses.field(default_factory=dict)
    quick_grid: Optional[Sequence[Overrides]] = None
    plots: Sequence[Plot] = ()
    description: str = ""
    script: Optional[Script] = None


def product(axes: Mapping[str, Sequence[Any]]) -> list[dict]:
    """The trials of every combination of ``axes`` (``{key: values}``), the last key fastest.

    ``product({"sampling.eta": [0.0, 1.0], "sampling.num_steps": [10, 20]})`` is four trials;
    concatenate lists (``product(...) + [{...}]``) for grids that are not products.
    """
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


@dataclasses.dataclass(frozen=True)
class Trial:
    """One row of the sweep.

    ``train_key`` names the trial's training (trials differing only in ``sampling.*`` and
    ``eval.*`` share it; ``""`` for script trials); ``key`` is the whole trial's identity.
    Both hash the resolved config, the config file's contents and the code version, so an
    edited config file or new code never reuses old results.
    """

    name: str
    overrides: dict          # base + quick + the trial's own (not "name")
    varied: dict             # the trial's own grid entry (not "name"), for the table
    train_key: str
    key: str


def load_sweep(path: str) -> Sweep:
    """Imports the sweep file and returns its ``SWEEP``."""
    if not os.path.isfile(path):
        raise SweepError(f"--sweep={path} does not exist")
    if REPO not in sys.path:  # sweep files import experiments.* helpers
        sys.path.insert(0, REPO)
    spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the file is the user's code: any error is a bad sweep file
        raise SweepError(f"--sweep={path} failed to import: {type(e).__name__}: {e}") from None
    sweep = getattr(module, "SWEEP", None)
    if not isinstance(sweep, Sweep):
        raise SweepError(f"--sweep={path} must define SWEEP = diffjax.sweep.Sweep(...), "
                         f"got {type(sweep).__name__}")
    return sweep


def format_value(value: Any) -> str:
    """A value as text, as shown in records and trial names."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return repr(tuple(value))
    return str(value)


def short(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else format_value(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "", text)


def _trial_name(entry: Overrides, varying: Sequence[str]) -> str:
    if "name" in entry:
        return str(entry["name"])
    keys = [k for k in entry if k in varying] or list(entry)
    return ",".join(f"{k.split('.')[-1]}={short(entry[k])}" for k in keys) or "base"


def repo_path(path: str) -> str:
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(REPO, path)


def build_config(config_spec: str, overrides: Overrides):
    """The run config of ``config_spec`` (``file.py[:arg]``) with ``overrides`` applied, through
    the one config loader (:func:`diffjax.config_loading.load`)."""
    from diffjax import config_loading
    from diffjax.errors import ConfigError

    file, sep, arg = config_spec.partition(":")
    file = repo_path(file)
    if not os.path.isfile(file):
        raise SweepError(f"config file {file} does not exist")
    try:
        return config_loading.load(file + sep + arg, dict(overrides), lock=False)
    except ConfigError as e:
        raise SweepError(str(e)) from None


def _grid(sweep: Sweep, quick: bool) -> list[Overrides]:
    grid = list(sweep.quick_grid if quick and sweep.quick_grid is not None else sweep.grid)
    if not grid:
        raise SweepError("the sweep's grid is empty")
    for entry in grid:
        if not isinstance(entry, Mapping):
            raise SweepError(f"each grid entry must be a dict of overrides, got {entry!r}")
    return grid


def make_trials(sweep: Sweep, quick: bool) -> list[Trial]:
    """The trials of the sweep with their identities (configs are validated by :func:`check`)."""
    grid = _grid(sweep, quick)
    varying = [k for k in dict.fromkeys(k for e in grid for k in e if k != "name")
               if len({format_value(e.get(k)) for e in grid}) > 1]
    trials, seen = [], set()
    for entry in grid:
        name = _trial_name(entry, varying)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*", name):
            raise SweepError(f"trial name {name!r} is not a valid directory name (letters, "
                             "digits and ._=,+- ; give the grid entry a 'name')")
        if name in seen:
            raise SweepError(f"two trials are named {name!r}; give them distinct 'name's")
        seen.add(name)
        own = {k: v for k, v in entry.items() if k != "name"}
        overrides = {**sweep.overrides, **(sweep.quick if quick else {}),
                     **{k: v for k, v in own.items() if not k.startswith(TAG)}}
        if sweep.script is not None:
            script = sweep.script
            key = identity.script_key(repo_path(script.path),
                                      [*(script.quick_args if quick else ()), *script.args])
            trials.append(Trial(name, overrides, own, "", key))
            continue
        try:
            config = build_config(sweep.config, overrides)
        except SweepError as e:
            raise SweepError(f"trial {name!r}: {e}") from None
        file = repo_path(sweep.config.partition(":")[0])
        train_key, key = identity.trial_keys(file, config.to_dict())
        trials.append(Trial(name, overrides, own, train_key, key))
    return trials


def check(sweep: Sweep, trials: Sequence[Trial]) -> None:
    """Validates every trial's config before any compute (SweepError naming the trial)."""
    from diffjax import config_validation

    if sweep.script is not None:
        if not os.path.isfile(repo_path(sweep.script.path)):
            raise SweepError(f"script {sweep.script.path} does not exist")
        return
    if not sweep.config:
        raise SweepError("the sweep names no config (Sweep(config='configs/NAME.py:recipe'))")
    if not sweep.metrics:
        raise SweepError("the sweep names no metrics to tabulate (Sweep(metrics=[...]))")
    from diffjax import train
    from diffjax.evaluate import METRICS, nll

    for trial in trials:
        try:
            config = build_config(sweep.config, trial.overrides)
            data_info = config_validation.validate(config)
        except (SweepError, config_validation.ConfigError) as e:
            raise SweepError(f"trial {trial.name!r}: {e}") from None
        names = train.metric_names(config, data_info.kind)
        reported = {k for n in names for k in (METRICS[n].reports if n in METRICS
                                               else nll.REPORTS[n])}
        missing = [m for m in sweep.metrics if m not in reported]
        if missing:
            raise SweepError(f"trial {trial.name!r}: the sweep tabulates {missing}, which "
                             f"config.eval.metrics={','.join(names)!r} does not report (it "
                             f"reports {', '.join(sorted(reported))})")
