"""What every page panel shares: the panel record, number formatting and PNG frames.

A panel is a plain JSON-able dict, so the page embeds it as data and tests read it back:

    {"id": str, "title": str, "about": str, "model": str, "command": str,
     "slider": {"name": str, "values": [str, ...]},          # one entry per position
     "columns": [str, ...],                                   # one title per image column
     "frames": [[file, ...] per position],                    # one PNG per column
     "numbers": [[{label: text} per column] per position],   # what the page shows
     "values": [[{label: float} per column] per position]}   # the same, unformatted

Every ``numbers`` text is ``fmt`` of the ``values`` float next to it, and every float is a
value the library computed for that frame.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image

SIGNIFICANT = 4
PIXELS_PER_CELL = 14
PIXELS_PER_TILED_CELL = 7


def fmt(value: float) -> str:
    """``value`` to ``SIGNIFICANT`` significant digits; infinities as ``+inf``/``-inf``."""
    value = float(value)
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return f"{value:.{SIGNIFICANT}g}"


def new_panel(pid: str, title: str, about: str, model: str, command: str, slider_name: str,
              slider_values: Sequence[str], columns: Sequence[str]) -> dict:
    return {"id": pid, "title": title, "about": about, "model": model, "command": command,
            "slider": {"name": slider_name, "values": [str(v) for v in slider_values]},
            "columns": list(columns), "frames": [], "numbers": [], "values": []}


def add_position(panel: dict, files: Sequence[str], values: Sequence[dict]) -> None:
    """Appends one slider position: a frame and a ``{label: float}`` per column."""
    if len(files) != len(panel["columns"]) or len(values) != len(panel["columns"]):
        raise ValueError(f"panel {panel['id']}: {len(panel['columns'])} columns, got "
                         f"{len(files)} frames and {len(values)} number sets")
    clean = [{k: float(v) for k, v in cell.items()} for cell in values]
    panel["frames"].append(list(files))
    panel["values"].append(clean)
    panel["numbers"].append([{k: fmt(v) for k, v in cell.items()} for cell in clean])


def grey(x: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """``[H, W]`` floats -> uint8 grey, ``vmin`` black and ``vmax`` white (clipped)."""
    u = (np.asarray(x, np.float64) - vmin) / (vmax - vmin)
    return np.round(255 * np.clip(u, 0.0, 1.0)).astype(np.uint8)


def tile(images: np.ndarray, cols: int, pad: int = 1, fill: float = 0.0) -> np.ndarray:
    """``[N, H, W]`` -> one ``[rows*(H+pad)-pad, cols*(W+pad)-pad]`` mosaic."""
    n, h, w = images.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), fill, np.float64)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    return out


def save_grey(out_dir: str, name: str, x: np.ndarray, vmin: float = -1.0,
              vmax: float = 1.0, cols: int = 1) -> str:
    """Writes digits ``[H, W(, 1)]`` or ``[N, H, W(, 1)]`` (tiled ``cols`` wide) as a PNG with
    square pixels (``PIXELS_PER_CELL``, or ``PIXELS_PER_TILED_CELL`` in a mosaic); returns
    the file name relative to ``out_dir``."""
    x = np.asarray(x, np.float64)
    if x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 3:
        x = tile(x, cols, fill=vmin)
    img = Image.fromarray(grey(x, vmin, vmax), mode="L")
    cell = PIXELS_PER_CELL if cols == 1 else PIXELS_PER_TILED_CELL
    img = img.resize((img.width * cell, img.height * cell), Image.Resampling.NEAREST)
    path = os.path.join(out_dir, f"{name}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, optimize=True)
    return f"{name}.png"


def save_rgb(out_dir: str, name: str, x: np.ndarray, vmin: float = -1.0,
             vmax: float = 1.0) -> str:
    """Writes a colour image ``[H, W, 3]`` (e.g. a `shapes` scene) like :func:`save_grey`,
    each channel mapped ``vmin`` -> 0 and ``vmax`` -> 255 (clipped)."""
    img = Image.fromarray(grey(np.asarray(x, np.float64), vmin, vmax), mode="RGB")
    cell = 4  # 32x32 scenes at 128 px
    img = img.resize((img.width * cell, img.height * cell), Image.Resampling.NEAREST)
    path = os.path.join(out_dir, f"{name}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, optimize=True)
    return f"{name}.png"
