"""A trial's identity: what it ran, so a sweep never reuses results of something else.

A training is named by the hash of its resolved config without the ``sampling`` and ``eval``
groups (trials differing only in those share one model), the config file's contents and the
code version; a trial adds its ``sampling``/``eval`` groups. The code version is the git
revision when diffjax runs from a git checkout (with a hash of the package's files when they
differ from the revision), else a hash of the installed package's files.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from typing import Any, Mapping, Sequence

# Config groups that change sampling/evaluation only: trials differing in these share a model.
EVAL_GROUPS = ("sampling", "eval")
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaf(value: Any) -> Any:
    """JSON for what json cannot write: sets sorted (their order varies between processes)."""
    if isinstance(value, (set, frozenset)):
        return sorted(map(repr, value))
    return repr(value)


def digest(value: Any) -> str:
    """A short hash of a JSON-able value (other leaves by ``repr``)."""
    text = json.dumps(value, sort_keys=True, default=_leaf)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def package_digest(package: str = PACKAGE) -> str:
    """A hash of every Python file of the package (paths and contents)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, package).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read() + b"\0")
    return h.hexdigest()[:12]


def _git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


@functools.lru_cache(maxsize=None)
def code_version(package: str = PACKAGE) -> str:
    """``git:<revision>[+<package hash>]`` in a git checkout, else ``files:<package hash>``.

    The package hash is added to the revision when the checkout's package files differ from
    it (uncommitted edits), so such edits retrain too.
    """
    repo = os.path.dirname(package)
    try:
        top = _git(repo, "rev-parse", "--show-toplevel")
        if os.path.realpath(top) == os.path.realpath(repo):
            revision = _git(repo, "rev-parse", "HEAD")
            edited = _git(repo, "status", "--porcelain", "--", os.path.basename(package))
            return f"git:{revision}" + (f"+{package_digest(package)}" if edited else "")
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout, or no git: the files themselves
    return f"files:{package_digest(package)}"


def trial_keys(config_file: str, config: Mapping[str, Any]) -> tuple[str, str]:
    """``(train_key, trial_key)`` of a trial whose resolved config (as a dict) is ``config``.

    The config file's path is not part of it: a moved file with the same contents (a moved
    workdir, another checkout) names the same runs.
    """
    common = {"config_file": file_digest(config_file), "code": code_version()}
    train = {k: v for k, v in config.items() if k not in EVAL_GROUPS}
    train_key = digest({**common, "train": train})
    evaluation = {k: v for k, v in config.items() if k in EVAL_GROUPS}
    return train_key, digest({"train_key": train_key, "eval": evaluation})


def script_key(script: str, args: Sequence[str]) -> str:
    """The identity of a script trial: its file, its arguments and the code version."""
    return digest({"script": file_digest(script), "args": list(args), "code": code_version()})
