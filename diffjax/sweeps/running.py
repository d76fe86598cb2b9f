"""Running a sweep: the workdir and its lock, which runs are finished, and the scheduler that
starts each training once, each evaluation after its training, at most ``max_parallel`` at a
time, re-attaching to jobs a previous sweep command left running.

* Everything is checked first (the sweep file, every trial's config, the launcher and its
  options, the workdir); a bad sweep fails before any job is submitted.
* A run is finished when its record (``result.json``/``train.json``) holds its current
  identity. A trial directory of an older identity (an edited config file, new code) is moved
  to ``DIR/_stale/`` and the trial runs again. ``retry_failed`` runs failed ones again.
* Jobs write their own records, so a sweep command may die: the next one re-attaches to the
  jobs recorded in ``job.json`` that are still alive, and never submits a finished or running
  run twice. The results tables are rewritten as trials finish.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from diffjax.sweeps import launchers, records
from diffjax.sweeps.declare import Sweep, SweepError, Trial, check, load_sweep, make_trials
from diffjax.sweeps.jobs import train_dir, train_job, trial_job, trial_identity
from diffjax.sweeps.report import write_outputs

POLL_S = {"local": 0.2, "submitit_local": 0.5, "slurm": 10.0}


def lock(workdir: str):
    """An exclusive lock on the workdir for this process (released when it exits): two
    sweep commands in one workdir would run the same trials twice."""
    import fcntl

    handle = open(os.path.join(workdir, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SweepError(f"--workdir={workdir} is in use by another sweep command; wait for "
                         "it or use another --workdir") from None
    return handle


def check_workdir(workdir: str, sweep_path: str, quick: bool, trials: Sequence[Trial]) -> None:
    os.makedirs(workdir, exist_ok=True)
    marker = os.path.join(workdir, records.SWEEP_FILE)
    mine = {"sweep": os.path.basename(sweep_path), "quick": bool(quick)}
    old = records.read_json(marker)
    if old is not None and {k: old.get(k) for k in mine} != mine:
        raise SweepError(f"--workdir={workdir} holds {'a --quick' if old['quick'] else 'a full'}"
                         f" run of {old['sweep']}; use another --workdir for "
                         f"{'--quick' if quick else 'full'} {mine['sweep']}")
    records.write_json(marker, {**mine, "path": os.path.abspath(sweep_path),
                                "trials": {t.name: {"train_key": t.train_key, "key": t.key}
                                           for t in trials}})


def run(sweep_path: str, workdir: str, *, quick: bool = False, workers: int = 1,
        retry_failed: bool = False, launcher: str = "local",
        slurm: Optional[Mapping[str, Any]] = None, max_parallel: Optional[int] = None,
        log: Callable[[str], None] = print) -> list[dict]:
    """Runs the unfinished trials of a sweep and writes its outputs; returns the table rows.

    ``max_parallel`` caps the jobs in flight (default: ``workers`` for the local launcher,
    no cap for the submitit ones); ``slurm`` holds the ``--slurm.*`` options.

    Raises:
      SweepError: a bad sweep file, trial config, launcher option or workdir (before any job
        is submitted).
    """
    if workers < 1:
        raise SweepError(f"--workers={workers} must be >= 1")
    if max_parallel is not None and max_parallel < 1:
        raise SweepError(f"--max_parallel={max_parallel} must be >= 1")
    slurm = dict(slurm or {})
    launchers.check_launcher(launcher, slurm)
    sweep = load_sweep(sweep_path)
    trials = make_trials(sweep, quick)
    check(sweep, trials)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    held = lock(workdir)
    try:
        check_workdir(workdir, sweep_path, quick, trials)
        cap = max_parallel or (workers if launcher == "local" else len(trials) * 2)
        runner = launchers.make_launcher(
            launcher, workdir, workers=cap, options=slurm,
            sweep_name=os.path.splitext(os.path.basename(sweep_path))[0])
        start = time.time()
        try:
            _Scheduler(sweep, trials, workdir, quick, runner, cap, POLL_S[launcher], log,
                       retry_failed, lambda: write_outputs(
                           sweep, trials, workdir, sweep_path, quick, time.time() - start,
                           plots=False, launcher=launcher)).run()
        finally:
            runner.close()
        rows = write_outputs(sweep, trials, workdir, sweep_path, quick, time.time() - start,
                             launcher=launcher)
        log(f"wrote {os.path.join(workdir, 'results.md')}")
        return rows
    finally:
        held.close()


@dataclasses.dataclass
class _Run:
    """A training (``trial`` = the first trial that needs it) or a trial's evaluation."""

    kind: str  # "train" | "trial"
    trial: Trial

    @property
    def key(self) -> str:
        return self.trial.train_key if self.kind == "train" else self.trial.key

    def label(self) -> str:
        return f"train {self.trial.train_key}" if self.kind == "train" else self.trial.name


class _Scheduler:
    def __init__(self, sweep: Sweep, trials: Sequence[Trial], workdir: str, quick: bool,
                 runner, cap: int, poll_s: float, log: Callable[[str], None],
                 retry_failed: bool, on_trial: Callable[[], Any]):
        self.sweep, self.trials, self.workdir, self.quick = sweep, trials, workdir, quick
        self.runner, self.cap, self.poll_s, self.log = runner, cap, poll_s, log
        self.retry_failed, self.on_trial = retry_failed, on_trial
        self.ready: collections.deque = collections.deque()
        self.waiting: dict[str, list[Trial]] = {}   # train key -> trials after that training
        self.flight: dict[str, tuple[_Run, Any]] = {}
        self.train_records: dict[str, dict] = {}

    # ------------------------------------------------------------------ records
    def run_dir(self, r: _Run) -> str:
        if r.kind == "train":
            return train_dir(self.workdir, r.trial)
        return os.path.join(self.workdir, r.trial.name)

    def record_path(self, r: _Run) -> str:
        name = records.TRAIN_RECORD if r.kind == "train" else records.RESULT_FILE
        return os.path.join(self.run_dir(r), name)

    def record(self, r: _Run) -> Optional[dict]:
        """The run's record if it holds the run's identity (else None: not finished)."""
        found = records.read_json(self.record_path(r))
        key = "train_key" if r.kind == "train" else "trial_key"
        return found if found is not None and found.get(key) == r.key else None

    def _prepare(self, r: _Run) -> Optional[dict]:
        """Its record when finished; moves stale directories aside, drops failures to retry."""
        path, found = self.record_path(r), records.read_json(self.record_path(r))
        if found is None:
            return None
        if self.record(r) is None:
            if r.kind == "trial":
                self._move_aside(r.trial.name, found.get("trial_key") or "old")
            return None
        if self.retry_failed and found["status"] != "ok":
            os.remove(path)
            return None
        return found

    def _move_aside(self, name: str, old_key: str) -> None:
        stale = os.path.join(self.workdir, records.STALE_DIR)
        os.makedirs(stale, exist_ok=True)
        target = os.path.join(stale, f"{name}.{old_key}")
        while os.path.exists(target):
            target += "+"
        shutil.move(os.path.join(self.workdir, name), target)
        self.log(f"{name}: its config or the code changed since it ran; the old run is in "
                 f"{target}")

    # ------------------------------------------------------------------ scheduling
    def run(self) -> None:
        trainings: dict[str, Trial] = {}
        todo = []
        for t in self.trials:
            if self._prepare(_Run("trial", t)) is None:
                todo.append(t)
                if self.sweep.script is None:
                    trainings.setdefault(t.train_key, t)
        self.log(f"{len(self.trials)} trials, {len(self.trials) - len(todo)} finished, "
                 f"{len(todo)} to run")
        for key, t in trainings.items():
            found = self._prepare(_Run("train", t))
            if found is not None:
                self.train_records[key] = found
            else:
                self._queue(_Run("train", t))
        for t in todo:
            if self.sweep.script is not None or t.train_key in self.train_records:
                self._queue(_Run("trial", t))
            else:
                self.waiting.setdefault(t.train_key, []).append(t)
        while self.ready or self.flight:
            self._collect()
            while self.ready and len(self.flight) < self.cap:
                self._submit(self.ready.popleft())
            if self.flight:
                time.sleep(self.poll_s)

    def _queue(self, r: _Run) -> None:
        """Re-attaches to the run's live job if a previous sweep command submitted it."""
        info = records.read_json(os.path.join(self.run_dir(r), records.JOB_FILE))
        handle = launchers.attach(info)
        if handle is None:
            self.ready.append(r)
            return
        if info.get("key") != r.key:
            raise SweepError(f"{r.label()}: job {handle.job_id} of an earlier version of the "
                             "sweep is still running in its directory; wait for it or cancel "
                             "it (scancel)")
        self.log(f"{r.label()}: re-attached to job {handle.job_id}")
        self.flight[r.label()] = (r, handle)

    def _submit(self, r: _Run) -> None:
        if r.kind == "train":
            job = train_job(self.sweep, r.trial, self.workdir)
            self.log(f"train {r.trial.train_key} (for {r.trial.name}) ...")
        else:
            train = self.train_records.get(r.trial.train_key)
            job = trial_job(self.sweep, r.trial, self.workdir, self.quick,
                            None if train is None else train["seconds"])
            self.log(f"{r.trial.name} ...")
        self.flight[r.label()] = (r, self.runner.submit(job, r.key, r.kind == "train"))

    def _collect(self) -> None:
        for label, (r, handle) in list(self.flight.items()):
            alive = handle.alive()  # before the record: a job writes it, then exits
            found = self.record(r)
            if found is None and alive:
                continue
            del self.flight[label]
            if found is None:
                found = self._lost(r, handle.error())
            self.log(f"{label}: {found['status']} in {found.get('seconds') or 0:.0f}s")
            if r.kind == "train":
                self._trained(r.trial.train_key, found)
            else:
                self.on_trial()

    def _lost(self, r: _Run, error: str) -> dict:
        """The record of a job that ended without writing one (killed, crashed)."""
        identity = ({"train_key": r.key} if r.kind == "train"
                    else trial_identity(r.trial, None))
        found = {**identity, "status": "failed", "seconds": None, "metrics": {},
                 "error": error or "the job ended without a record"}
        records.write_json(self.record_path(r), found)
        return found

    def _trained(self, key: str, found: dict) -> None:
        self.train_records[key] = found
        for t in self.waiting.pop(key, []):
            if found["status"] == "ok":
                self._queue(_Run("trial", t))
                continue
            os.makedirs(os.path.join(self.workdir, t.name), exist_ok=True)
            record = {**trial_identity(t, found["seconds"]), "status": "failed",
                      "seconds": 0.0, "metrics": {},
                      "error": "training failed: " + (found.get("error") or "")}
            records.write_json(os.path.join(self.workdir, t.name, records.RESULT_FILE), record)
            self.log(f"{t.name}: failed (its training failed)")
            self.on_trial()
