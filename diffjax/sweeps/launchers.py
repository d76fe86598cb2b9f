"""Where a sweep's jobs run: threads of the sweep command (``local``), or submitit jobs on a
SLURM cluster (``slurm``) or on this machine through submitit's local executor
(``submitit_local``: the cluster code path, for tests and for one big machine).

A launcher's ``submit(job)`` starts a :class:`~diffjax.sweeps.jobs.RunJob` and records the
job in its run directory (``job.json``: launcher, job id, the run's identity key), so a later
sweep command re-attaches to it (:func:`attach`) instead of submitting it again. A handle
says whether its job is still alive; the job's own record file says how it ended.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
from typing import Any, Mapping, Optional, Sequence

from diffjax.sweeps import records
from diffjax.sweeps.declare import REPO, SweepError
from diffjax.sweeps.jobs import RunJob

LAUNCHERS = ("local", "slurm", "submitit_local")
SUBMITIT_LAUNCHERS = ("slurm", "submitit_local")
EXTRA = "pip install 'diffjax[slurm]'"
# --slurm.KEY=VALUE options: their types (repeatable ones collect a list).
SLURM_KEYS = {"partition": str, "account": str, "qos": str, "time": str, "nodes": int,
              "gpus_per_node": int, "tasks_per_node": int, "cpus_per_task": int,
              "mem_gb": float, "setup": list, "additional": list}
DEFAULT_TIME_MIN = {"slurm": 240, "submitit_local": 7 * 24 * 60}
# Requeues after a timeout (each continues the training from its checkpoint).
MAX_TIMEOUTS = 100


def parse_slurm_options(args: Sequence[str]) -> dict:
    """``["--slurm.nodes=2", ...]`` -> ``{"nodes": 2, ...}``; one-line SweepError when bad."""
    options: dict = {}
    for arg in args:
        key, sep, value = arg[len("--slurm."):].partition("=")
        if key not in SLURM_KEYS:
            raise SweepError(f"unknown option --slurm.{key}; valid keys: "
                             f"{', '.join(sorted(SLURM_KEYS))}")
        if not sep or not value:
            raise SweepError(f"--slurm.{key} needs a value (--slurm.{key}=VALUE)")
        kind = SLURM_KEYS[key]
        if kind is list:
            if key == "additional" and not re.fullmatch(r"[A-Za-z_][\w-]*=.+", value):
                raise SweepError(f"--slurm.additional={value!r} must be KEY=VALUE (an sbatch "
                                 "option, e.g. --slurm.additional=constraint=a100)")
            options.setdefault(key, []).append(value)
            continue
        try:
            options[key] = kind(value)
        except ValueError:
            raise SweepError(f"--slurm.{key}={value!r} must be {kind.__name__}") from None
        if kind in (int, float) and options[key] <= 0:
            raise SweepError(f"--slurm.{key}={value} must be > 0")
    if "time" in options:
        options["time"] = time_minutes(options["time"])
    return options


def time_minutes(text: str) -> int:
    """SLURM's time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if match is None:
        raise SweepError(f"--slurm.time={text!r} is not a SLURM time (minutes, HH:MM:SS or "
                         "D-HH:MM:SS)")
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is not None:
        hours, minutes, seconds = a, b or 0, c or 0
    elif c is not None:
        hours, minutes, seconds = a, b, c
    else:
        hours, minutes, seconds = 0, a, b or 0
    total = (days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    if total <= 0:
        raise SweepError(f"--slurm.time={text!r} must be positive")
    return total


def import_submitit(launcher: str) -> Any:
    try:
        import submitit
    except ImportError:
        raise SweepError(f"--launcher={launcher} needs submitit, which is not installed: "
                         f"{EXTRA}") from None
    return submitit


def check_launcher(launcher: str, options: Mapping[str, Any]) -> None:
    """Everything about the launcher that can be wrong, before any submission."""
    if launcher not in LAUNCHERS:
        raise SweepError(f"--launcher={launcher!r} is not valid; valid choices: "
                         f"{', '.join(LAUNCHERS)}")
    unknown = sorted(set(options) - set(SLURM_KEYS))
    if unknown:
        raise SweepError(f"unknown option --slurm.{unknown[0]}; valid keys: "
                         f"{', '.join(sorted(SLURM_KEYS))}")
    if launcher == "local":
        if options:
            raise SweepError(f"--slurm.{next(iter(options))} needs --launcher=slurm or "
                             "submitit_local")
        return
    import_submitit(launcher)
    if launcher == "slurm" and shutil.which("srun") is None:
        raise SweepError("--launcher=slurm needs SLURM's srun, which is not on PATH: run the "
                         "sweep on the cluster's login node (--launcher=submitit_local runs "
                         "the same code path on this machine)")
    if launcher == "submitit_local" and options.get("nodes", 1) > 1:
        raise SweepError(f"--slurm.nodes={options['nodes']}: submitit's local executor runs "
                         "one node; use --slurm.tasks_per_node to run several processes")


# --------------------------------------------------------------------------- handles
class ThreadHandle:
    def __init__(self, future: concurrent.futures.Future):
        self.future = future

    def alive(self) -> bool:
        return not self.future.done()

    def error(self) -> str:
        e = self.future.exception() if self.future.done() else None
        return f"{type(e).__name__}: {e}" if e is not None else ""


class SubmititHandle:
    """A submitit job, submitted by this command (``job``) or found in a ``job.json``."""

    def __init__(self, info: Mapping[str, Any], job: Any = None):
        self.info = dict(info)
        self.job = job

    @property
    def job_id(self) -> str:
        return str(self.info["job_id"])

    def alive(self) -> bool:
        if self.info["launcher"] == "submitit_local":
            process = getattr(self.job, "_process", None)
            if process is not None:
                return process.poll() is None
            return _local_controller_alive(int(self.job_id))
        submitit = import_submitit("slurm")
        job = self.job or submitit.SlurmJob(folder=self.info["folder"], job_id=self.job_id)
        self.job = job
        return not job.done()

    def error(self) -> str:
        from submitit.core.utils import JobPaths

        paths = JobPaths(self.info["folder"], job_id=self.job_id, task_id=0)
        tail = records.error_tail(str(paths.stderr))
        return f"job {self.job_id} ended without a record" + (f":\n{tail}" if tail else "")


def _local_controller_alive(pid: int) -> bool:
    """Whether ``pid`` is a live submitit local controller (not a zombie, not a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return state != "Z" and b"submitit.local._local" in cmdline


def attach(info: Optional[Mapping[str, Any]]) -> Optional[SubmititHandle]:
    """The handle of a recorded submitit job that is still alive (else None)."""
    if not info or info.get("launcher") not in SUBMITIT_LAUNCHERS:
        return None
    handle = SubmititHandle(info)
    return handle if handle.alive() else None


# --------------------------------------------------------------------------- launchers
class LocalLauncher:
    """Runs jobs in threads of this process (each job is a subprocess)."""

    name = "local"

    def __init__(self, workers: int):
        self.pool = concurrent.futures.ThreadPoolExecutor(workers)

    def submit(self, job: RunJob, key: str, multi_node: bool) -> ThreadHandle:
        records.write_json(os.path.join(job.run_dir, records.JOB_FILE),
                           {"launcher": self.name, "pid": os.getpid(), "key": key})
        return ThreadHandle(self.pool.submit(job))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class SubmititLauncher:
    """Submits jobs through submitit: SLURM's executor, or its local one."""

    def __init__(self, name: str, workdir: str, options: Mapping[str, Any], sweep_name: str):
        submitit = import_submitit(name)
        self.name = name
        self.options = dict(options)
        self.sweep_name = sweep_name
        self.folder = os.path.join(workdir, records.SUBMITIT_DIR, "%j")
        # The job's Python imports this diffjax (the pickled job refers to its classes).
        path = os.environ.get("PYTHONPATH", "")
        if REPO not in path.split(os.pathsep):
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, path) if p)
        if name == "submitit_local":
            self.executor = submitit.LocalExecutor(self.folder, max_num_timeout=MAX_TIMEOUTS)
        else:
            self.executor = submitit.SlurmExecutor(self.folder, max_num_timeout=MAX_TIMEOUTS)

    def _parameters(self, multi_node: bool, job_name: str) -> dict:
        o = self.options
        nodes = o.get("nodes", 1) if multi_node else 1
        tasks = o.get("tasks_per_node", 1) if multi_node else 1
        minutes = o.get("time", DEFAULT_TIME_MIN[self.name])
        if self.name == "submitit_local":
            return {"timeout_min": minutes, "tasks_per_node": tasks,
                    "gpus_per_node": o.get("gpus_per_node", 0)}
        params = {"time": minutes, "nodes": nodes, "ntasks_per_node": tasks,
                  "job_name": job_name,
                  "additional_parameters": dict(a.split("=", 1) for a in o.get("additional", ())),
                  "setup": list(o.get("setup", ()))}
        for key in ("partition", "account", "qos", "gpus_per_node", "cpus_per_task"):
            if key in o:
                params[key] = o[key]
        if "mem_gb" in o:
            params["mem"] = f"{int(o['mem_gb'] * 1024)}M"
        return params

    def submit(self, job: RunJob, key: str, multi_node: bool) -> SubmititHandle:
        name = f"{self.sweep_name}:{os.path.basename(job.run_dir)}"
        self.executor.update_parameters(**self._parameters(multi_node, name))
        submitted = self.executor.submit(job)
        info = {"launcher": self.name, "job_id": str(submitted.job_id), "key": key,
                "folder": self.folder}
        records.write_json(os.path.join(job.run_dir, records.JOB_FILE), info)
        return SubmititHandle(info, submitted)

    def close(self) -> None:
        pass


def make_launcher(name: str, workdir: str, *, workers: int, options: Mapping[str, Any],
                  sweep_name: str):
    if name == "local":
        return LocalLauncher(workers)
    return SubmititLauncher(name, workdir, options, sweep_name)
