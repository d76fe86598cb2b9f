"""What a run leaves in its workdir besides checkpoints: metrics.jsonl, TensorBoard, figures.

Only process 0 writes (callers pass ``enabled=jax.process_index() == 0``); every line of
``metrics.jsonl`` is one JSON object with at least ``"step"``, flushed as soon as written so
a killed run loses nothing it reported.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Mapping, Optional

import numpy as np

from diffjax import atomic

METRICS_FILE = "metrics.jsonl"


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf; keep the line parseable
    return value


class MetricsWriter:
    """Appends metric records to ``workdir/metrics.jsonl`` and TensorBoard event files.

    ``resume_step``: the step a resumed run restarts from. Records of later steps were
    written by the interrupted run after its last checkpoint and are repeated now, so they
    are dropped from metrics.jsonl (rewritten atomically) and TensorBoard purges them.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: Optional[int] = None):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if enabled:
            path = os.path.join(workdir, METRICS_FILE)
            if resume_step is not None:
                _drop_records_after(path, resume_step)
            self._file = open(path, "a", encoding="utf-8")
            if self._file.tell() > 0:  # a torn last line must not swallow the next record
                with open(path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        self._file.write("\n")
            from tensorboardX import SummaryWriter  # deferred: pulls in protobuf
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
        """One record ``{"step": step, **metrics}``; numeric values also go to TensorBoard."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _json_value(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{prefix}{key}", float(value), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tb.close()
            self._file = self._tb = None


def _parse_lines(path: str) -> tuple[list[str], list[dict], int]:
    """The lines of a metrics file, their records, and how many lines did not parse (a line
    torn by a power loss or a full disk; only ever the last one written)."""
    lines, records, torn = [], [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
                lines.append(line if line.endswith("\n") else line + "\n")
            except json.JSONDecodeError:
                torn += 1
    return lines, records, torn


def _drop_records_after(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    lines, records, torn = _parse_lines(path)
    kept = [line for line, r in zip(lines, records) if r.get("step", 0) <= step]
    if torn:
        warnings.warn(f"{path}: dropped {torn} line(s) that are not complete JSON records "
                      "(a write cut short)")
    if len(kept) == len(lines) and not torn:
        return
    atomic.write_text(path, "".join(kept))


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``workdir/metrics.jsonl``, in order (a torn last line is left out)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    return _parse_lines(path)[1]


def image_grid(x: np.ndarray, ncols: Optional[int] = None, pad: int = 1) -> np.ndarray:
    """Tiles images ``[N, H, W, C]`` in [-1, 1] into one uint8 image ``[rows*(H+pad), ..., C]``."""
    n, h, w, c = x.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    pixels = np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = pixels[i]
    return grid


def save_image_grid(path: str, x: np.ndarray, upscale: int = 1) -> None:
    """Writes ``x: [N, H, W, C]`` in [-1, 1] as a PNG grid (nearest-neighbour ``upscale``)."""
    from PIL import Image

    grid = image_grid(x)
    if upscale > 1:
        grid = np.repeat(np.repeat(grid, upscale, axis=0), upscale, axis=1)
    if grid.shape[-1] == 1:
        grid = grid[..., 0]
    Image.fromarray(grid).save(path)


def save_scatter(path: str, samples: np.ndarray, reference: Optional[np.ndarray] = None,
                 title: str = "") -> None:
    """Scatter plot of 2-D ``samples: [N, 2]`` over ``reference: [M, 2]`` (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.75", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_figures(workdir: str, name: str, samples: np.ndarray, kind: str,
                 reference: Optional[np.ndarray] = None) -> list[str]:
    """The PNG grid (images; for 2-D points a 2-channel grid is meaningless, so a scatter)
    of ``samples`` under ``workdir/samples/``; returns the paths written."""
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    if kind == "image":
        upscale = max(1, 128 // samples.shape[1])  # tiny (8x8) digits are unreadable at 1x
        path = os.path.join(out_dir, f"{name}.png")
        save_image_grid(path, samples[:64], upscale=upscale)
        paths.append(path)
    else:
        path = os.path.join(out_dir, f"{name}_scatter.png")
        save_scatter(path, samples, reference, title=name)
        paths.append(path)
    return paths


def save_prompt_grid(path: str, samples: np.ndarray, prompts: list[str], per_prompt: int,
                     title: str = "") -> None:
    """One row per prompt, titled with it: ``samples [len(prompts) * per_prompt, H, W, C]``
    in [-1, 1], prompt ``i``'s images at rows ``i * per_prompt ...``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(prompts)
    fig, axes = plt.subplots(rows, 1, figsize=(max(4.0, 1.1 * per_prompt), 1.5 * rows + 0.4),
                             squeeze=False)
    for i, prompt in enumerate(prompts):
        grid = image_grid(samples[i * per_prompt:(i + 1) * per_prompt], ncols=per_prompt)
        ax = axes[i, 0]
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, interpolation="nearest",
                  cmap="gray" if grid.shape[-1] == 1 else None)
        ax.set_title(prompt, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
