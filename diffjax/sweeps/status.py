"""``--status``: each trial's state (pending, running, done, failed with its log's tail), read
from the workdir alone, for every launcher."""
from __future__ import annotations

import os
from typing import Optional

from diffjax.sweeps import launchers, records
from diffjax.sweeps.declare import TRAIN_DIR, SweepError

STATES = ("pending", "running", "done", "failed")
TAIL_LINES = 4


def _locked(workdir: str) -> bool:
    """Whether a sweep command holds the workdir (then its local jobs are running)."""
    import fcntl

    try:
        with open(os.path.join(workdir, ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    return False


def _job_state(run_dir: str, key: str, locked: bool) -> Optional[str]:
    """``"running (job J)"`` / ``"queued (job J)"`` when the run has a live job, else None."""
    info = records.read_json(os.path.join(run_dir, records.JOB_FILE))
    if not info or info.get("key") != key:
        return None
    if info.get("launcher") == "local":
        return "running (local)" if locked else None
    handle = launchers.attach(info)
    if handle is None:
        return None
    queued = getattr(handle.job, "state", "RUNNING") in ("PENDING", "REQUEUED")
    return f"{'queued' if queued else 'running'} (job {handle.job_id})"


def trial_states(workdir: str) -> list[tuple[str, str, str]]:
    """``(trial, state, detail)`` for every trial the workdir's sweep declares."""
    marker = records.read_json(os.path.join(workdir, records.SWEEP_FILE))
    if marker is None or not isinstance(marker.get("trials"), dict):
        raise SweepError(f"--workdir={workdir} holds no sweep (no {records.SWEEP_FILE} written "
                         "by this version of diffjax.sweep)")
    locked = _locked(workdir)
    out = []
    for name, ids in marker["trials"].items():
        run_dir = os.path.join(workdir, name)
        found = records.read_json(os.path.join(run_dir, records.RESULT_FILE))
        if found is not None and found.get("trial_key") == ids["key"]:
            if found["status"] == "ok":
                out.append((name, "done", f"{found.get('seconds') or 0:.0f}s"))
            else:
                tail = (found.get("error") or "").strip().split("\n")[-TAIL_LINES:]
                out.append((name, "failed", "\n".join(tail)))
            continue
        job = _job_state(run_dir, ids["key"], locked)
        if job is not None:
            out.append((name, "running" if job.startswith("running") else "pending", job))
            continue
        train = os.path.join(workdir, TRAIN_DIR, ids["train_key"]) if ids["train_key"] else ""
        job = _job_state(train, ids["train_key"], locked) if train else None
        done = train and (records.read_json(os.path.join(train, records.TRAIN_RECORD))
                          or {}).get("status") == "ok"
        detail = (f"waiting for training {ids['train_key']}: {job}" if job
                  else "trained; not evaluated" if done else "not started")
        out.append((name, "pending", detail))
    return out


def format_states(states: list[tuple[str, str, str]]) -> str:
    width = max((len(n) for n, _, _ in states), default=5)
    lines = []
    for name, state, detail in states:
        first, *rest = detail.split("\n") if detail else [""]
        lines.append(f"{name:<{width}}  {state:<7}  {first}".rstrip())
        lines += [f"{'':<{width}}  {'':<7}  | {line}" for line in rest]
    counts = {s: sum(state == s for _, state, _ in states) for s in STATES}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
