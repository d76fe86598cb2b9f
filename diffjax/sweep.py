"""Sweeps: a grid of ordinary ``diffjax.main`` runs, their table and their plots.

    python -m diffjax.sweep --sweep=experiments/NAME.py --workdir=DIR [--quick] [--workers=N]

A sweep file is a Python module that defines ``SWEEP = Sweep(...)``: a base config (a config
file with its recipe, plus overrides), a grid of trials (one dict of ``--config.`` overrides
each; :func:`product` and ``+`` build it), the metrics to tabulate, what ``--quick`` changes,
and plots. ``experiments/*.py`` are examples.

How a sweep runs:

* Everything is checked first: the sweep file, every trial's config
  (:func:`diffjax.config_validation.validate`) and the workdir. A bad sweep fails here, with
  exit status 2, before any compute.
* Trials whose overrides differ only in ``sampling.*`` and ``eval.*`` keys share one model:
  each distinct training config is trained once (``diffjax.main --mode=train``, evaluation off)
  into ``DIR/_train/<hash>/``, and every trial is ``diffjax.main --mode=eval
  --restore_from=DIR/_train/<hash>`` writing to ``DIR/<trial>/``. A DDIM steps table over
  one model therefore trains once.
* A trial is finished when ``DIR/<trial>/result.json`` exists; it is written atomically (a
  temporary file renamed) after the run, with the metrics or the error (the last lines of
  the run's stderr). Re-running a sweep runs only unfinished trials and never touches a
  finished one; ``--retry_failed`` runs the failed ones again. An interrupted training resumes
  from its checkpoints.
* ``--workers=N`` runs N subprocesses at a time (first the trainings, then the evaluations).
  A failed training or trial is recorded and the others go on.
* Outputs: ``DIR/results.csv`` (every column), ``DIR/results.md`` (the table, with each
  metric's floor when the metric reports one, and the failures) and one PNG per plot.

A sweep can also run a script instead of ``diffjax.main`` (:class:`Script`), e.g. a benchmark
that needs no training; it then turns the script's own output into table rows.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import app, flags, logging

# Override groups that change sampling/evaluation only: trials differing in these share a model.
EVAL_GROUPS = ("sampling", "eval")
# Grid keys ``tag.<column>`` label a trial in the table and plots; they are not overrides.
TAG = "tag."
RESULT_FILE = "result.json"
# Reported next to a tabulated metric when the run reports them: its real-data floor (or
# ceiling), and its standard error.
COMPANIONS = ("_floor", "_real", "_stderr")
TRAIN_DIR = "_train"
USAGE_ERROR = 2
ERROR_LINES = 12

Overrides = Mapping[str, Any]


class SweepError(ValueError):
    """A sweep file, argument or workdir that cannot work; the message is one line."""


# --------------------------------------------------------------------------- declaring
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


# --------------------------------------------------------------------------- trials
@dataclasses.dataclass(frozen=True)
class Trial:
    name: str
    overrides: dict          # base + quick + the trial's own (not "name")
    varied: dict             # the trial's own grid entry (not "name"), for the table
    train_key: str           # hash of the training config ("" for script trials)


def load_sweep(path: str) -> Sweep:
    """Imports the sweep file and returns its ``SWEEP``."""
    if not os.path.isfile(path):
        raise SweepError(f"--sweep={path} does not exist")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo not in sys.path:  # sweep files import experiments.* helpers
        sys.path.insert(0, repo)
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


def _format(value: Any) -> str:
    """A value as text: hashed into the training key, shown in records."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return repr(tuple(value))
    return str(value)


def _short(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else _format(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "", text)


def _trial_name(entry: Overrides, varying: Sequence[str]) -> str:
    if "name" in entry:
        return str(entry["name"])
    keys = [k for k in entry if k in varying] or list(entry)
    return ",".join(f"{k.split('.')[-1]}={_short(entry[k])}" for k in keys) or "base"


def _train_key(config: str, overrides: Overrides) -> str:
    train = {k: _format(v) for k, v in overrides.items() if k.split(".")[0] not in EVAL_GROUPS}
    text = json.dumps({"config": config, "overrides": train}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_trials(sweep: Sweep, quick: bool) -> list[Trial]:
    """The trials of the sweep (checked for names; configs are checked by :func:`check`)."""
    grid = list(sweep.quick_grid if quick and sweep.quick_grid is not None else sweep.grid)
    if not grid:
        raise SweepError("the sweep's grid is empty")
    for entry in grid:
        if not isinstance(entry, Mapping):
            raise SweepError(f"each grid entry must be a dict of overrides, got {entry!r}")
    varying = [k for k in dict.fromkeys(k for e in grid for k in e if k != "name")
               if len({_format(e.get(k)) for e in grid}) > 1]
    trials, seen = [], set()
    for entry in grid:
        name = _trial_name(entry, varying)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*", name) or name == TRAIN_DIR:
            raise SweepError(f"trial name {name!r} is not a valid directory name (letters, "
                             "digits and ._=,+- ; give the grid entry a 'name')")
        if name in seen:
            raise SweepError(f"two trials are named {name!r}; give them distinct 'name's")
        seen.add(name)
        own = {k: v for k, v in entry.items() if k != "name"}
        overrides = {**sweep.overrides, **(sweep.quick if quick else {}),
                     **{k: v for k, v in own.items() if not k.startswith(TAG)}}
        key = "" if sweep.script else _train_key(sweep.config, overrides)
        trials.append(Trial(name, overrides, own, key))
    return trials


def _repo_path(path: str) -> str:
    if os.path.isabs(path) or os.path.exists(path):
        return path
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(repo, path)


def build_config(config_spec: str, overrides: Overrides):
    """The run config of ``config_spec`` (``file.py[:arg]``) with ``overrides`` applied."""
    from diffjax import config_validation

    file, _, arg = config_spec.partition(":")
    file = _repo_path(file)
    if not os.path.isfile(file):
        raise SweepError(f"config file {file} does not exist")
    spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(file))}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    for key, value in overrides.items():
        error = config_validation.is_known_override(key)
        if error is not None:
            raise SweepError(str(error))
        *groups, leaf = key.split(".")
        node = config
        for g in groups:
            node = node[g]
        try:
            node[leaf] = value
        except (TypeError, ValueError, AttributeError) as e:
            raise SweepError(f"config.{key}={value!r}: {e}") from None
    return config


def check(sweep: Sweep, trials: Sequence[Trial]) -> None:
    """Validates every trial's config before any compute (SweepError naming the trial)."""
    from diffjax import config_validation

    if sweep.script is not None:
        if not os.path.isfile(_repo_path(sweep.script.path)):
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


# --------------------------------------------------------------------------- running
def _write_json(path: str, record: dict) -> None:
    """Atomic: a reader sees the old file or the whole new one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True, allow_nan=True)
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _error_tail(log: str) -> str:
    """The last meaningful lines of a run's stderr (progress bars dropped)."""
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = [ln.rstrip() for ln in f.read().replace("\r", "\n").split("\n")]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln.strip() and "it/s]" not in ln and "step/s]" not in ln
             and not ln.lstrip().startswith(("Shuffling", "Generating", "\x1b"))]
    return "\n".join(lines[-ERROR_LINES:])


def _run(cmd: list[str], log: str) -> tuple[int, float]:
    """Runs ``cmd`` with stdout+stderr to ``log``; returns (status, seconds)."""
    start = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w", encoding="utf-8") as f:
        status = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return status, time.time() - start


_CONFIG_FILE = '''"""Written by diffjax.sweep: {spec} with the overrides below."""
from math import inf, nan  # noqa: F401  (values of the overrides)

from diffjax.sweep import build_config

OVERRIDES = {overrides}


def get_config():
    return build_config({spec!r}, OVERRIDES)
'''


def _main_cmd(config: str, overrides: Overrides, workdir: str, mode: str,
              restore_from: Optional[str] = None) -> list[str]:
    """The diffjax.main command of a run, its config a file written into ``workdir``.

    A config file rather than ``--config.key=value`` flags: it takes any Python value exactly
    as :func:`check` validated it, and any trial can be re-run by hand from its directory.
    """
    if mode == "train":
        overrides = {**overrides, "training.eval_every": 0, "training.progress_bar": False}
    file, sep, arg = config.partition(":")
    spec = os.path.abspath(_repo_path(file)) + sep + arg
    lines = ",\n    ".join(f"{k!r}: {v!r}" for k, v in overrides.items())
    path = os.path.join(workdir, "sweep_config.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(_CONFIG_FILE.format(spec=spec, overrides="{\n    " + lines + ",\n}"
                                    if overrides else "{}"))
    cmd = [sys.executable, "-m", "diffjax.main", f"--config={path}", f"--workdir={workdir}",
           f"--mode={mode}"]
    return cmd + ([f"--restore_from={restore_from}"] if restore_from else [])


def _train(sweep: Sweep, trial: Trial, workdir: str, log) -> dict:
    """Trains the model of ``trial`` unless done; returns its ``train.json`` record."""
    train_dir = os.path.join(workdir, TRAIN_DIR, trial.train_key)
    marker = os.path.join(train_dir, "train.json")
    record = _read_json(marker)
    if record is not None:
        return record
    os.makedirs(train_dir, exist_ok=True)
    log(f"train {trial.train_key} (for {trial.name}) ...")
    cmd = _main_cmd(sweep.config, trial.overrides, train_dir, "train")
    status, seconds = _run(cmd, os.path.join(train_dir, "train.log"))
    record = {"status": "ok" if status == 0 else "failed", "seconds": seconds,
              "command": " ".join(cmd),
              "error": "" if status == 0 else _error_tail(os.path.join(train_dir, "train.log"))}
    _write_json(marker, record)
    log(f"train {trial.train_key}: {record['status']} in {seconds:.0f}s")
    return record


def _last_eval(trial_dir: str) -> dict:
    found = {}
    try:
        with open(os.path.join(trial_dir, "metrics.jsonl"), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    if record.get("mode") == "eval":
                        found = record
    except OSError:
        pass
    return {k: v for k, v in found.items() if k not in ("mode",)}


def _evaluate(sweep: Sweep, trial: Trial, workdir: str, quick: bool, train: Optional[dict],
              log) -> dict:
    """Runs one trial (unless finished) and writes its result record."""
    trial_dir = os.path.join(workdir, trial.name)
    os.makedirs(trial_dir, exist_ok=True)
    record = {"name": trial.name, "overrides": {k: _format(v) for k, v in trial.varied.items()},
              "train_key": trial.train_key}
    if train is not None and train["status"] != "ok":
        record.update(status="failed", seconds=0.0, metrics={},
                      error="training failed: " + train["error"],
                      train_seconds=train["seconds"])
        _write_json(os.path.join(trial_dir, RESULT_FILE), record)
        log(f"{trial.name}: failed (its training failed)")
        return record
    if sweep.script is not None:
        script = sweep.script
        cmd = [sys.executable, _repo_path(script.path), script.out_flag, trial_dir,
               *(script.quick_args if quick else ()), *script.args]
    else:
        cmd = _main_cmd(sweep.config, trial.overrides, trial_dir, "eval",
                        restore_from=os.path.join(workdir, TRAIN_DIR, trial.train_key))
    log(f"{trial.name} ...")
    status, seconds = _run(cmd, os.path.join(trial_dir, "run.log"))
    metrics = _last_eval(trial_dir) if sweep.script is None else {}
    ok = status == 0 and (sweep.script is not None or bool(metrics))
    record.update(status="ok" if ok else "failed", seconds=seconds, metrics=metrics,
                  command=" ".join(cmd),
                  error="" if ok else (_error_tail(os.path.join(trial_dir, "run.log"))
                                       or f"exit status {status}, no eval record"),
                  train_seconds=None if train is None else train["seconds"])
    _write_json(os.path.join(trial_dir, RESULT_FILE), record)
    log(f"{trial.name}: {record['status']} in {seconds:.0f}s")
    return record


def _lock(workdir: str):
    """An exclusive lock on the workdir for this process (released when it exits): two
    sweeps in one workdir would run the same trials twice."""
    import fcntl

    handle = open(os.path.join(workdir, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SweepError(f"--workdir={workdir} is in use by another sweep; wait for it or use "
                         "another --workdir") from None
    return handle


def _check_workdir(workdir: str, sweep_path: str, quick: bool) -> None:
    os.makedirs(workdir, exist_ok=True)
    marker = os.path.join(workdir, "sweep.json")
    mine = {"sweep": os.path.basename(sweep_path), "quick": bool(quick)}
    old = _read_json(marker)
    if old is not None and old != mine:
        raise SweepError(f"--workdir={workdir} holds {'a --quick' if old['quick'] else 'a full'}"
                         f" run of {old['sweep']}; use another --workdir for "
                         f"{'--quick' if quick else 'full'} {mine['sweep']}")
    _write_json(marker, mine)


def run(sweep_path: str, workdir: str, *, quick: bool = False, workers: int = 1,
        retry_failed: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    """Runs the unfinished trials of a sweep and writes its outputs; returns the table rows.

    Raises:
      SweepError: a bad sweep file, trial config or workdir (before any compute).
    """
    if workers < 1:
        raise SweepError(f"--workers={workers} must be >= 1")
    sweep = load_sweep(sweep_path)
    trials = make_trials(sweep, quick)
    check(sweep, trials)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    lock = _lock(workdir)
    try:
        _check_workdir(workdir, sweep_path, quick)
        return _run_trials(sweep, trials, workdir, sweep_path, quick, workers, retry_failed, log)
    finally:
        lock.close()


def _run_trials(sweep: Sweep, trials: Sequence[Trial], workdir: str, sweep_path: str,
                quick: bool, workers: int, retry_failed: bool,
                log: Callable[[str], None]) -> list[dict]:
    start = time.time()

    def finished(trial: Trial) -> bool:
        record = _read_json(os.path.join(workdir, trial.name, RESULT_FILE))
        if record is not None and retry_failed and record["status"] != "ok":
            os.remove(os.path.join(workdir, trial.name, RESULT_FILE))
            if trial.train_key:
                marker = os.path.join(workdir, TRAIN_DIR, trial.train_key, "train.json")
                if (_read_json(marker) or {}).get("status") == "failed":
                    os.remove(marker)
            return False
        return record is not None

    todo = [t for t in trials if not finished(t)]
    log(f"{len(trials)} trials, {len(trials) - len(todo)} finished, {len(todo)} to run")
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        trains: dict[str, dict] = {}
        if sweep.script is None:
            firsts: dict[str, Trial] = {}
            for t in todo:  # each training once, for the first trial that needs it
                firsts.setdefault(t.train_key, t)
            futures = {k: pool.submit(_train, sweep, t, workdir, log) for k, t in firsts.items()}
            trains = {k: f.result() for k, f in futures.items()}
        futures = [pool.submit(_evaluate, sweep, t, workdir, quick, trains.get(t.train_key), log)
                   for t in todo]
        for f in futures:
            f.result()
    rows = write_outputs(sweep, trials, workdir, sweep_path, quick, time.time() - start)
    log(f"wrote {os.path.join(workdir, 'results.md')}")
    return rows


# --------------------------------------------------------------------------- reporting
def _rows(sweep: Sweep, trials: Sequence[Trial], workdir: str) -> list[dict]:
    rows = []
    for trial in trials:
        record = _read_json(os.path.join(workdir, trial.name, RESULT_FILE)) or {
            "status": "missing", "metrics": {}, "error": "", "seconds": None}
        if sweep.script is not None and record["status"] == "ok":
            for row in sweep.script.rows(os.path.join(workdir, trial.name)):
                rows.append({**({"trial": trial.name} if len(trials) > 1 else {}), **row})
            continue
        row = {"trial": trial.name, **trial.varied}
        metrics = record.get("metrics", {})
        for m in sweep.metrics:
            row[m] = metrics.get(m, math.nan)
            for companion in (f"{m}{suffix}" for suffix in COMPANIONS):
                if companion in metrics:
                    row[companion] = metrics[companion]
        row["status"] = record["status"]
        row["train_s"] = record.get("train_seconds")
        row["eval_s"] = record.get("seconds")
        row["error"] = (record.get("error") or "").strip().split("\n")[-1][:160]
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value).replace("|", "\\|")


def _label(column: str) -> str:
    """``sampling.eta`` -> ``eta``; ``path.name`` -> ``path``."""
    parts = column.split(".")
    return parts[-2] if len(parts) > 1 and parts[-1] == "name" else parts[-1]


def markdown_table(rows: Sequence[dict], columns: Optional[Sequence[str]] = None) -> str:
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    head = [_label(c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_outputs(sweep: Sweep, trials: Sequence[Trial], workdir: str, sweep_path: str,
                  quick: bool, seconds: float) -> list[dict]:
    """``results.csv``, ``results.md`` and the plots, from the trials' result records."""
    rows = _rows(sweep, trials, workdir)
    varied = [k for t in trials for k in t.varied]
    columns = [c for c in dict.fromkeys(["trial", *varied] + [k for r in rows for k in r])
               if any(c in r for r in rows)]
    with open(os.path.join(workdir, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in columns if c not in ("error",)
             and not (c == "train_s" and all(r.get(c) is None for r in rows))]
    if any(r.get("error") for r in rows):
        shown.append("error")
    cpu = f"{os.cpu_count()} CPU cores"
    command = (f"python -m diffjax.sweep --sweep={os.path.relpath(sweep_path)} "
               f"--workdir=DIR{' --quick' if quick else ''}")
    records = [_read_json(os.path.join(workdir, t.name, RESULT_FILE)) or {} for t in trials]
    trainings = {t.train_key: r.get("train_seconds") or 0.0 for t, r in zip(trials, records)}
    evals = sum(r.get("seconds") or 0.0 for r in records)
    text = [f"# {os.path.splitext(os.path.basename(sweep_path))[0]}"
            f"{' (quick)' if quick else ''}", "", sweep.description, "",
            f"`{command}` on {cpu}: {len(trials)} trials, "
            + (f"{len(trainings)} training run(s) {sum(trainings.values()) / 60:.1f} min + "
               if not sweep.script else "")
            + f"{evals / 60:.1f} min of trial runs (wall time of the subprocesses, all "
            f"invocations; this one {seconds / 60:.1f} min). train_s is the trial's shared "
            "training, eval_s its own run.", "",
            markdown_table(rows, shown), ""]
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        text += ["## Failed trials", ""]
        for r in failed:
            record = _read_json(os.path.join(workdir, r["trial"], RESULT_FILE)) or {}
            text += [f"### {r['trial']}", "", "```", record.get("error", ""), "```", ""]
    pngs = []
    if sweep.script is not None:
        pngs += _copy_images(sweep.script, trials, workdir)
    for plot in sweep.plots:
        try:
            pngs.append(make_plot(plot, rows, workdir))
        except (KeyError, ValueError, TypeError) as e:
            text += [f"plot {plot.name} not drawn: {e}", ""]
    text += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs]
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(text).strip() + "\n")
    return rows


def _copy_images(script: Script, trials: Sequence[Trial], workdir: str) -> list[str]:
    import shutil

    out = []
    for trial in trials:
        for image in script.images:
            source = os.path.join(workdir, trial.name, image)
            if os.path.isfile(source):
                name = image if len(trials) == 1 else f"{trial.name}_{image}"
                shutil.copyfile(source, os.path.join(workdir, name))
                out.append(os.path.join(workdir, name))
    return out


def make_plot(plot: Plot, rows: Sequence[dict], workdir: str) -> str:
    """Draws ``plot`` from the table rows into ``DIR/<plot.name>.png``; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if r.get("status", "ok") == "ok" and plot.x in r and plot.y in r]
    groups: dict[tuple, list[dict]] = {}
    for r in good:
        groups.setdefault(tuple(r.get(s) for s in plot.series), []).append(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, group in groups.items():
        if all(isinstance(r[plot.x], (int, float)) for r in group):
            group = sorted(group, key=lambda r: r[plot.x])
        name = ", ".join(f"{_label(s)}={_short(v)}" for s, v in zip(plot.series, label)
                         if v not in (None, ""))
        ax.plot([r[plot.x] for r in group], [r[plot.y] for r in group], "o-",
                label=name or None)
    floors = [r[f"{plot.y}_floor"] for r in good if f"{plot.y}_floor" in r]
    if floors:
        ax.axhline(sum(floors) / len(floors), color="k", ls="--", lw=1,
                   label="floor (real data)")
    ax.set_xlabel(plot.x)
    ax.set_ylabel(plot.y)
    if plot.logx:
        ax.set_xscale("log")
    if plot.logy:
        ax.set_yscale("log")
    if plot.title:
        ax.set_title(plot.title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, f"{plot.name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- command line
def _define_flags() -> None:
    """Defined only when run as a program: sweep configs import this module inside
    diffjax.main, whose flags (``--workdir``) must not be defined twice."""
    flags.DEFINE_string("sweep", None, "Sweep file (experiments/NAME.py).")
    flags.DEFINE_string("workdir", None, "Directory of the sweep's trials and outputs.")
    flags.DEFINE_bool("quick", False, "The sweep's quick mode (minutes on a CPU; CI).")
    flags.DEFINE_integer("workers", 1, "Trials run at a time (local processes).")
    flags.DEFINE_bool("retry_failed", False, "Run failed trials again.")


def main(argv: Sequence[str]) -> None:
    args = flags.FLAGS
    if not args["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        _exit(f"unexpected arguments: {' '.join(argv[1:])}")
    if not args.sweep:
        _exit("--sweep is required (e.g. --sweep=experiments/ddim_steps.py)")
    if not args.workdir:
        _exit("--workdir is required")
    try:
        run(args.sweep, args.workdir, quick=args.quick, workers=args.workers,
            retry_failed=args.retry_failed, log=lambda m: print(m, flush=True))
    except SweepError as e:
        _exit(str(e))


def _exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


if __name__ == "__main__":
    # Sweep files import diffjax.sweep: let them get this module, not a second copy whose
    # Sweep class would be a different object.
    sys.modules["diffjax.sweep"] = sys.modules[__name__]
    _define_flags()
    app.run(main)
