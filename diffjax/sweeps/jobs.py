"""One run of a sweep (a training, a trial's evaluation or a script) as a resumable job.

A :class:`RunJob` runs its command as a subprocess, its output to a log, and then writes the
run's record (``train.json`` or ``result.json``) atomically. It is called in a thread by the
``local`` launcher and pickled into a submitit job by the cluster launchers, where it follows
submitit's checkpoint protocol: on preemption or timeout submitit calls :meth:`checkpoint`,
which stops the run (the trainer checkpoints on SIGTERM and exits 0) and returns the same job
as a resubmission; the requeued job runs the same command, which resumes from the checkpoint.
A SIGTERM sent to the job itself is forwarded to the run and treated the same way.

A job with several tasks (a multi-node training) runs ``diffjax.main`` once per task, joined
through ``jax.distributed`` (``--coordinator_address``/``--num_processes``/``--process_id``
from submitit's view of the job); task 0 writes the record.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, Optional

from diffjax.sweeps import records
from diffjax.sweeps.declare import (REPO, TRAIN_DIR, Overrides, Sweep, Trial, build_config,
                                    format_value, repo_path)
from diffjax.sweeps.records import RESULT_FILE, TRAIN_RECORD

KINDS = ("train", "eval", "script")
_CONFIG_FILE = '''"""Written by diffjax.sweep: {spec} with the overrides below."""
from math import inf, nan  # noqa: F401  (values of the overrides)

from diffjax.sweep import build_config

OVERRIDES = {overrides}


def get_config():
    return build_config({spec!r}, OVERRIDES)
'''


class Interrupted(RuntimeError):
    """The run was stopped before it finished (its checkpoint is kept; re-running resumes)."""


@dataclasses.dataclass
class RunJob:
    """A run of ``cmd`` writing into ``run_dir``, recorded in ``record_path``.

    ``identity`` goes into the record (names and keys); a training is complete when its
    ``metrics.jsonl`` logs ``final_step``. ``seconds`` and ``attempts`` carry over requeues.
    """

    kind: str
    cmd: list
    run_dir: str
    record_path: str
    identity: dict
    final_step: int = 0
    seconds: float = 0.0
    attempts: int = 0

    @property
    def log(self) -> str:
        return os.path.join(self.run_dir, "train.log" if self.kind == "train" else "run.log")

    def __call__(self) -> Optional[dict]:
        rank, cmd = _task_command(self.cmd, self.attempts)
        self.attempts += 1
        self._start = time.time()
        stop = {"requested": False}
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log if rank == 0 else f"{self.log}.{rank}",
                  "a" if self.attempts > 1 else "w", encoding="utf-8") as f:
            self._proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                          cwd=REPO)
            with _forward_sigterm(self._proc, stop):
                status = self._proc.wait()
        self.seconds += time.time() - self._start
        self._start = None  # counted: a checkpoint() from here on adds nothing
        if rank != 0:
            return None
        unfinished = (self.kind == "train" and status == 0
                      and records.trained_to(self.run_dir) < self.final_step)
        if stop["requested"] or unfinished:
            return _requeue()
        record = self.record(status)
        records.write_json(self.record_path, record)
        return record

    def checkpoint(self) -> Any:
        """submitit's preemption/timeout hook: stop the run, resubmit the same job."""
        import submitit

        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()  # the trainer checkpoints and exits 0
            proc.wait()
        start = getattr(self, "_start", None)
        spent = 0.0 if start is None else time.time() - start
        return submitit.helpers.DelayedSubmission(
            dataclasses.replace(self, seconds=self.seconds + spent))

    def record(self, status: int) -> dict:
        metrics = records.last_eval(self.run_dir) if self.kind == "eval" else {}
        ok = status == 0 and (self.kind != "eval" or bool(metrics))
        error = "" if ok else (records.error_tail(self.log)
                               or f"exit status {status}, no eval record")
        return {**self.identity, "status": "ok" if ok else "failed", "seconds": self.seconds,
                "attempts": self.attempts, "command": " ".join(self.cmd), "error": error,
                **({"metrics": metrics} if self.kind != "train" else {})}


def _requeue() -> None:
    """A stopped run: inside a submitit job, requeue it through submitit's own signal path
    (which calls :meth:`RunJob.checkpoint`); elsewhere leave it unfinished."""
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        os.kill(os.getpid(), submitit.JobEnvironment._usr_sig())
        time.sleep(5)  # the handler requeues and exits; it returns only on a non-zero rank
    raise Interrupted("the run was stopped before it finished; re-running resumes it")


@contextlib.contextmanager
def _forward_sigterm(proc: subprocess.Popen, stop: dict) -> Iterator[None]:
    """A SIGTERM to this process (scheduler preemption, ``kill``) is passed on to the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        stop["requested"] = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _task_command(cmd: list, attempt: int) -> tuple[int, list]:
    """``(rank, command)`` of this task: with several tasks, diffjax.main joins the others."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return 0, list(cmd)
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks == 1 or "diffjax.main" not in cmd:
        return env.global_rank, list(cmd)
    # A fresh port per attempt: a requeued job may land where the old one's is still held.
    port = 20000 + (int(hashlib.sha256(env.job_id.encode()).hexdigest(), 16) + attempt) % 20000
    return env.global_rank, [*cmd, f"--coordinator_address={env.hostnames[0]}:{port}",
                             f"--num_processes={env.num_tasks}",
                             f"--process_id={env.global_rank}"]


# --------------------------------------------------------------------------- building jobs
def main_command(config: str, overrides: Overrides, workdir: str, mode: str,
                 restore_from: Optional[str] = None) -> list[str]:
    """The diffjax.main command of a run, its config a file written into ``workdir``.

    A config file rather than ``--config.key=value`` flags: it takes any Python value exactly
    as the sweep's check validated it, and any trial can be re-run by hand from its directory.
    """
    if mode == "train":
        overrides = {**overrides, "training.eval_every": 0, "training.progress_bar": False}
    file, sep, arg = config.partition(":")
    spec = os.path.abspath(repo_path(file)) + sep + arg
    lines = ",\n    ".join(f"{k!r}: {v!r}" for k, v in overrides.items())
    path = os.path.join(workdir, "sweep_config.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(_CONFIG_FILE.format(spec=spec, overrides="{\n    " + lines + ",\n}"
                                    if overrides else "{}"))
    cmd = [sys.executable, "-m", "diffjax.main", f"--config={path}", f"--workdir={workdir}",
           f"--mode={mode}"]
    return cmd + ([f"--restore_from={restore_from}"] if restore_from else [])


def train_dir(workdir: str, trial: Trial) -> str:
    return os.path.join(workdir, TRAIN_DIR, trial.train_key)


def train_job(sweep: Sweep, trial: Trial, workdir: str) -> RunJob:
    """The job that trains ``trial``'s model into ``DIR/_train/<train_key>``."""
    run_dir = train_dir(workdir, trial)
    os.makedirs(run_dir, exist_ok=True)
    steps = int(build_config(sweep.config, trial.overrides).training.num_steps)
    return RunJob("train", main_command(sweep.config, trial.overrides, run_dir, "train"),
                  run_dir, os.path.join(run_dir, TRAIN_RECORD),
                  {"train_key": trial.train_key, "for": trial.name}, final_step=steps)


def trial_job(sweep: Sweep, trial: Trial, workdir: str, quick: bool,
              train_seconds: Optional[float]) -> RunJob:
    """The job that evaluates ``trial`` (or runs its script) into ``DIR/<trial>``."""
    run_dir = os.path.join(workdir, trial.name)
    os.makedirs(run_dir, exist_ok=True)
    if sweep.script is not None:
        script = sweep.script
        cmd = [sys.executable, repo_path(script.path), script.out_flag, run_dir,
               *(script.quick_args if quick else ()), *script.args]
    else:
        cmd = main_command(sweep.config, trial.overrides, run_dir, "eval",
                           restore_from=train_dir(workdir, trial))
    return RunJob("script" if sweep.script else "eval", cmd, run_dir,
                  os.path.join(run_dir, RESULT_FILE),
                  trial_identity(trial, train_seconds))


def trial_identity(trial: Trial, train_seconds: Optional[float]) -> dict:
    return {"name": trial.name, "train_key": trial.train_key, "trial_key": trial.key,
            "overrides": {k: format_value(v) for k, v in trial.varied.items()},
            "train_seconds": train_seconds}
