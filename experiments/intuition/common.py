"""Shared pieces of the gallery: saving small PNGs, the data and mixtures the figures use.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (no pyplot), so the
gallery keeps no global plotting state and can run inside tests.
"""
from __future__ import annotations

import functools
import io
import math
import os

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from diffjax import analytic
from diffjax import data as data_lib

DPI = 100
# The README promises committed figures of at most ~150 KB; palette PNGs keep plots with
# colour maps well under that without visible loss.
MAX_PNG_BYTES = 150_000
DIGIT_CMAP = "gray"


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save(fig: Figure, out_dir: str, name: str) -> str:
    """Writes ``fig`` to ``out_dir/name.png`` as a palette PNG and returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    # No dithering: dithered pixels defeat PNG's compression and look noisy in plots.
    image = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                                                    dither=Image.Dither.NONE)
    path = os.path.join(out_dir, f"{name}.png")
    image.save(path, optimize=True)
    return path


def snr_db(logsnr) -> np.ndarray:
    """``10 log10(alpha^2 / sigma^2)`` from the natural-log ``lambda``."""
    return 10.0 * np.asarray(logsnr) / math.log(10.0)


def show_image(ax, img: np.ndarray, vmin: float = -1.0, vmax: float = 1.0) -> None:
    """An image ``[H, W]`` or ``[H, W, 1]`` on ``ax``, pixels as squares, no ticks."""
    ax.imshow(np.asarray(img).squeeze(), cmap=DIGIT_CMAP, vmin=vmin, vmax=vmax,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def density(ax, log_p: np.ndarray, n: int, limit: float) -> None:
    """A 2-D density from ``log_p`` on an ``n x n`` grid over ``[-limit, limit]^2`` as filled
    contours (flat bands keep the PNG small), scaled to its own maximum; no ticks."""
    g = np.linspace(-limit, limit, n)
    p = np.exp(log_p - log_p.max()).reshape(n, n)
    ax.contourf(g, g, p, levels=[0.02, 0.1, 0.25, 0.5, 0.75, 1.01], cmap="Greys", alpha=0.55,
                vmin=-0.2, vmax=1.2)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


# -- data ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def digits(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The bundled 8x8 digits in [-1, 1]: ``([N, 8, 8, 1] float32, [N] int32)``."""
    x, y = data_lib.load_arrays("digits", split=split)
    return np.asarray(x), np.asarray(y)


def downsample(x: np.ndarray, factor: int = 2) -> np.ndarray:
    """Average-pools ``[N, H, W, C]`` images by ``factor`` (8x8 digits -> 4x4)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


@functools.lru_cache(maxsize=None)
def digits_mixture(components_per_class: int = 2) -> analytic.GaussianMixture:
    """The exact 64-d mixture fitted to the digits' train split (cached: EM takes seconds)."""
    return analytic.GaussianMixture.digits(components_per_class=components_per_class)


@functools.lru_cache(maxsize=None)
def small_digits_mixture() -> analytic.GaussianMixture:
    """A 16-d mixture, one full-covariance Gaussian per class, on 4x4-pooled digits."""
    x, y = digits("train")
    x4 = downsample(x)
    return analytic.GaussianMixture.fit(x4, y, components_per_class=1,
                                        event_shape=tuple(x4.shape[1:]))

