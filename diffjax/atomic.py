"""Atomic file writes: whoever reads the file (another process, or a run started after this
one was killed) sees the old file or the whole new one, never part of one.

Every writer writes a temporary file of its own beside the target (named by process id and
a random tag, so concurrent writers of one target never share it), flushes it to disk and
renames it over the target (``os.replace``, atomic on POSIX within one file system). If the
write fails, the temporary file is removed and the target is left as it was.

A cache directory (a trained evaluator, encoded latents) is published the same way, by
:func:`publishing_dir`: built in a temporary sibling and renamed into place, so readers see no
directory or a complete one, and of concurrent builders the first to finish wins.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Callable, Iterator, Optional

import numpy as np


@contextlib.contextmanager
def replacing(path: "str | os.PathLike", binary: bool = False,
              newline: Optional[str] = None) -> Iterator[Any]:
    """An open file whose contents replace ``path`` when the block ends without an error
    (text files: UTF-8, ``newline`` as :func:`open`'s)."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    text = {} if binary else {"encoding": "utf-8", "newline": newline}
    try:
        with open(tmp, "xb" if binary else "x", **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: "str | os.PathLike", text: str) -> None:
    with replacing(path) as f:
        f.write(text)


def write_csv(path: "str | os.PathLike", rows: "list[dict]",
              fieldnames: "Optional[list[str]]" = None) -> None:
    """``rows`` (dicts) as a CSV table with a header, atomically; the columns are
    ``fieldnames`` or the first row's keys."""
    import csv

    with replacing(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames or rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: "str | os.PathLike", obj: Any, **dump_options: Any) -> None:
    """``json.dump(obj, f, **dump_options)`` into ``path``, atomically."""
    with replacing(path) as f:
        json.dump(obj, f, **dump_options)


def write_npz(path: "str | os.PathLike", **arrays: Any) -> None:
    """``np.savez`` of ``arrays`` into ``path`` (the name is kept as given), atomically."""
    with replacing(path, binary=True) as f:
        np.savez(f, **arrays)


@contextlib.contextmanager
def publishing_dir(final: "str | os.PathLike", prefix: str = ".building.",
                   complete: Optional[Callable[[], bool]] = None) -> Iterator[str]:
    """A new empty directory beside ``final``, renamed to ``final`` when the block ends
    without an error, and removed in any case otherwise.

    If another process published ``final`` first, its directory is kept and this one
    discarded (no error): ``complete()`` (default: ``final`` is a directory) says whether
    what stands at ``final`` is a finished one; if not, the rename's error is raised.
    """
    final = os.fspath(final)
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:  # lost a race to a concurrent writer: its complete directory stays
            if not (complete() if complete is not None else os.path.isdir(final)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
