"""The files a sweep keeps in its workdir, and reading and writing them safely.

Layout of ``DIR``::

    sweep.json                  which sweep (and mode) the workdir holds, its trials
    .lock                       held by the running sweep command
    <trial>/result.json         the trial's record (metrics or error): it is finished
    <trial>/job.json            the job that runs it (launcher, job id, trial key)
    _train/<train_key>/train.json, job.json   the same for a shared training
    _submitit/                  submitit's pickles and logs (cluster launchers)
    _stale/                     trial directories of an earlier identity, moved aside
"""
from __future__ import annotations

import json
from typing import Optional

from diffjax import atomic
from diffjax.reporting import read_metrics

RESULT_FILE = "result.json"
TRAIN_RECORD = "train.json"
JOB_FILE = "job.json"
SWEEP_FILE = "sweep.json"
SUBMITIT_DIR = "_submitit"
STALE_DIR = "_stale"
ERROR_LINES = 12


def write_json(path: str, record: dict) -> None:
    """Atomic: a reader sees the old file or the whole new one."""
    atomic.write_json(path, record, indent=1, sort_keys=True, allow_nan=True)


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def error_tail(log: str, lines: int = ERROR_LINES) -> str:
    """The last meaningful lines of a run's log (progress bars dropped)."""
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            text = [ln.rstrip() for ln in f.read().replace("\r", "\n").split("\n")]
    except OSError:
        return ""
    text = [ln for ln in text if ln.strip() and "it/s]" not in ln and "step/s]" not in ln
            and not ln.lstrip().startswith(("Shuffling", "Generating", "\x1b"))]
    return "\n".join(text[-lines:])


def last_eval(run_dir: str) -> dict:
    """The metrics of the run's last evaluation (``{}`` when it logged none)."""
    found = {}
    for record in read_metrics(run_dir):
        if record.get("mode") == "eval":
            found = record
    return {k: v for k, v in found.items() if k != "mode"}


def trained_to(run_dir: str) -> int:
    """The last training step the run logged (training logs its final step)."""
    steps = [r.get("step", 0) for r in read_metrics(run_dir) if "mode" not in r]
    return max(steps, default=0)
