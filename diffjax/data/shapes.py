"""`shapes`: procedural captioned scenes of coloured shapes, rendered with numpy.

A scene holds 1-4 non-overlapping objects, each with a shape (`SHAPES`), a colour
(`COLOURS`), a size (`SIZES`) and a centre ``(x, y)`` in ``(0, 1)`` (x to the right, y
down, fractions of the image width). Every caption (:mod:`diffjax.data.shapes_captions`)
describes its whole scene and belongs to one of the GenEval categories (Ghosh et al. 2023,
"GenEval: an object-focused framework for evaluating text-to-image alignment"):

==============  ======  ==============================================================
category        count   scene
==============  ======  ==============================================================
single_object   1       any object; the caption names its shape (size sometimes)
two_object      2       two different shapes, colours independent
counting        2-4     one shape; in half the scenes one colour for all (then named)
colors          1       any object; the caption names its colour
position        2       two different shapes, clearly left/right of or above/below
                        each other (``|d_main| >= 0.25`` and ``>= 1.5 |d_other|``)
color_attr      2       two different shapes in two different colours
==============  ======  ==============================================================

Each chunk of `CHUNK` examples has exactly `CATEGORY_COUNTS` examples of each category
(shuffled) and is drawn from ``np.random.RandomState(crc32("diffjax_shapes/<split>/<i>"))``,
so any chunk regenerates alone, bit for bit, and both resolutions show the same scenes.

Rendering: each object's coverage is the fraction of its 4x4 supersamples inside the shape
(anti-aliasing by supersampling, then a box downsample). Centres are quantised to 1/4 pixel
of the 32x32 grid, so coverage patches come from a small table of precomputed templates and
a whole chunk is composited with a few vectorised pastes. Backgrounds are a dark grey
(slightly tinted), plain or with a light smooth texture; object colours are jittered by up
to ``COLOUR_JITTER`` per channel. Control maps: ``segmentation`` [H, W] uint8, 0 for
background and ``1 + shape`` where an object covers at least half the pixel;
``edges`` [H, W] uint8, 255 on the inner one-pixel boundary of every object, else 0.
"""
from __future__ import annotations

import functools
import zlib

import numpy as np

from diffjax.data import shapes_captions
from diffjax.data.shapes_vocab import CATEGORIES, COLOURS, RELATIONS, SHAPES, SIZES

RGB = np.array([(220, 45, 45), (245, 140, 30), (235, 215, 50), (55, 170, 70),
                (50, 100, 230), (150, 65, 205)], np.float64)
RADIUS = (0.125, 0.1875)  # bounding-circle radius per size, fraction of the image width
CATEGORY_COUNTS = (150, 150, 200, 150, 200, 150)  # per chunk
CHUNK = 1000
MAX_OBJECTS = 4
RESOLUTIONS = (32, 64)
NUM_TRAIN, NUM_TEST = 50_000, 5_000

SUPERSAMPLE = 4
BASE_RESOLUTION = 32  # centres are quantised to 1 / (SUPERSAMPLE * BASE_RESOLUTION)
MARGIN = 1.0 / 32  # between an object's bounding circle and the image border
GAP = 1.5 / 32  # between two objects' bounding circles
POSITION_MIN_OFFSET = 0.25
POSITION_AXIS_RATIO = 1.5
COLOUR_JITTER = 12.0
TEXTURE_GRID = 5
_Q = SUPERSAMPLE * BASE_RESOLUTION  # centres are multiples of 1 / _Q


def _inside(shape: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Whether points ``(u, v)`` (offsets from the centre, v down) lie in ``shape``.

    Every shape fits in the circle of radius ``r`` (the non-overlap test relies on it).
    """
    name = SHAPES[shape]
    if name == "circle":
        return u * u + v * v <= r * r
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.7 * r
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= r
    if name == "cross":
        arm, half = 0.95 * r, 0.32 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= half)) | (
            (np.abs(v) <= arm) & (np.abs(u) <= half))
    # Polygons pointing up: fold the polar angle into one sector and test one edge.
    n, inner = (3, None) if name == "triangle" else (5, 0.45 * r)
    rho = np.hypot(u, v)
    phi = np.mod(np.arctan2(u, -v), 2 * np.pi / n)
    phi = np.minimum(phi, 2 * np.pi / n - phi)  # angle from the nearest vertex
    p = np.stack([rho * np.cos(phi), rho * np.sin(phi)])
    a = np.array([r, 0.0])  # the vertex
    b = (np.array([np.cos(np.pi / n), np.sin(np.pi / n)]) *
         (r * np.cos(np.pi / n) if inner is None else inner))  # edge midpoint / inner vertex
    # Inside iff p is on the centre's side of the line a-b.
    normal = np.array([b[1] - a[1], a[0] - b[0]])
    return np.tensordot(normal, p - a[:, None, None], 1) * np.dot(normal, -a) >= 0


@functools.lru_cache(maxsize=None)
def templates(resolution: int) -> np.ndarray:
    """Coverage patches ``[shape, size, oy, ox, P, P]`` float32 in [0, 1].

    The object's centre lies at patch pixel coordinate ``P/2 + o/q`` along each axis
    (``q = SUPERSAMPLE * BASE_RESOLUTION / resolution`` quantisation steps per pixel).
    """
    q = SUPERSAMPLE * BASE_RESOLUTION // resolution
    p = 2 * int(np.ceil(RADIUS[-1] * resolution)) + 4
    s = SUPERSAMPLE
    sub = (np.arange(p * s) + 0.5) / s  # supersample positions in patch pixels
    out = np.zeros((len(SHAPES), len(SIZES), q, q, p, p), np.float32)
    for k in range(len(SHAPES)):
        for z, radius in enumerate(RADIUS):
            for oy in range(q):
                for ox in range(q):
                    u = sub[None, :] - (p / 2 + ox / q)
                    v = sub[:, None] - (p / 2 + oy / q)
                    hit = _inside(k, u, v, radius * resolution).astype(np.float32)
                    out[k, z, oy, ox] = hit.reshape(p, s, p, s).mean(axis=(1, 3))
    return out


# --------------------------------------------------------------------------- scenes

def _centres(rng: np.random.RandomState, size: np.ndarray, count: np.ndarray,
             relation: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Rejection-samples non-overlapping centres [n, 4, 2] (pads -1).

    Returns ``(centre, size)``: a tenth of the scenes that do not fit get their sizes
    redrawn each round, so crowded scenes are smaller on average.
    """
    n = len(count)
    size = size.copy()
    centre = np.full((n, MAX_OBJECTS, 2), -1.0)
    todo = np.arange(n)
    valid_slot = np.arange(MAX_OBJECTS)[None, :] < count[:, None]
    while len(todo):
        r = np.where(valid_slot[todo], np.asarray(RADIUS)[np.maximum(size[todo], 0)], 0.0)
        lo = (r + MARGIN)[..., None]
        c = lo + rng.uniform(size=(len(todo), MAX_OBJECTS, 2)) * (1 - 2 * lo)
        # On the rendering grid, so that the stored centres are the rendered ones.
        c = np.clip(np.rint(c * _Q), np.ceil(lo * _Q), np.floor((1 - lo) * _Q)) / _Q
        d = np.linalg.norm(c[:, :, None] - c[:, None], axis=-1)
        need = r[:, :, None] + r[:, None] + GAP
        slots = valid_slot[todo]
        pair = slots[:, :, None] & slots[:, None] & ~np.eye(MAX_OBJECTS, dtype=bool)
        ok = ~np.any(pair & (d < need), axis=(1, 2))
        if relation is not None:
            ok &= _clearly_related(c[:, 0], c[:, 1], relation[todo])
        centre[todo[ok]] = np.where(valid_slot[todo[ok], :, None], c[ok], -1.0)
        todo = todo[~ok]
        redraw = rng.uniform(size=len(todo)) < 0.1
        size[todo[redraw]] = np.where(valid_slot[todo[redraw]],
                                      rng.randint(0, len(SIZES), (redraw.sum(), MAX_OBJECTS)), -1)
    return centre, size


def _clearly_related(a: np.ndarray, b: np.ndarray, relation: np.ndarray) -> np.ndarray:
    """Whether centre ``a`` [n, 2] is clearly ``RELATIONS[relation]`` of ``b`` [n, 2]: the
    offset along the relation's axis is >= `POSITION_MIN_OFFSET` and >=
    `POSITION_AXIS_RATIO` times the other."""
    d = b - a  # b is to the right of / below a when positive
    main = np.where(relation < 2, d[:, 0], d[:, 1]) * np.where(relation % 2 == 0, 1, -1)
    other = np.abs(np.where(relation < 2, d[:, 1], d[:, 0]))
    return (main >= POSITION_MIN_OFFSET) & (main >= POSITION_AXIS_RATIO * other)


def sample_scenes(rng: np.random.RandomState, category: np.ndarray) -> dict[str, np.ndarray]:
    """Scenes for ``category`` [n] (indices into `CATEGORIES`).

    Returns ``count`` [n], ``shape``/``colour``/``size`` [n, 4] int32 (-1 pads),
    ``centre`` [n, 4, 2] float32 (-1 pads) and ``relation`` [n] (index into `RELATIONS`
    of object 0 relative to object 1 for ``position``, -1 otherwise).
    """
    n = len(category)
    cat = np.asarray(CATEGORIES)[category]
    count = np.where(np.isin(cat, ("single_object", "colors")), 1, 2)
    count = np.where(cat == "counting", rng.randint(2, MAX_OBJECTS + 1, n), count)
    shape = rng.randint(0, len(SHAPES), (n, MAX_OBJECTS))
    second = (shape[:, 0] + rng.randint(1, len(SHAPES), n)) % len(SHAPES)
    shape[:, 1] = second  # the two kinds of a two-object scene differ
    shape = np.where(cat[:, None] == "counting", shape[:, :1], shape)
    colour = rng.randint(0, len(COLOURS), (n, MAX_OBJECTS))
    other = (colour[:, 0] + rng.randint(1, len(COLOURS), n)) % len(COLOURS)
    colour[:, 1] = np.where(cat == "color_attr", other, colour[:, 1])
    one_colour = (cat == "counting") & (rng.uniform(size=n) < 0.5)
    colour = np.where(one_colour[:, None], colour[:, :1], colour)
    size = rng.randint(0, len(SIZES), (n, MAX_OBJECTS))
    relation = np.where(cat == "position", rng.randint(0, len(RELATIONS), n), -1)
    valid = np.arange(MAX_OBJECTS)[None, :] < count[:, None]
    shape, colour, size = (np.where(valid, a, -1) for a in (shape, colour, size))
    centre = np.full((n, MAX_OBJECTS, 2), -1.0)
    pos = cat == "position"
    centre[~pos], size[~pos] = _centres(rng, size[~pos], count[~pos], None)
    centre[pos], size[pos] = _centres(rng, size[pos], count[pos], relation[pos])
    return {"count": count.astype(np.int32), "shape": shape.astype(np.int32),
            "colour": colour.astype(np.int32), "size": size.astype(np.int32),
            "centre": centre.astype(np.float32), "relation": relation.astype(np.int32)}


# --------------------------------------------------------------------------- rendering

def _backgrounds(rng: np.random.RandomState, n: int, resolution: int) -> np.ndarray:
    """Dark tinted backgrounds, half with a light smooth texture. [n, H, W, 3] float."""
    grey = rng.uniform(25, 75, (n, 1, 1, 1))
    tint = rng.uniform(-10, 10, (n, 1, 1, 3))
    amplitude = np.where(rng.uniform(size=n) < 0.5, 0.0, rng.uniform(6, 14, n))
    grid = rng.uniform(-1, 1, (n, TEXTURE_GRID, TEXTURE_GRID))
    pos = (np.arange(resolution) + 0.5) / resolution * (TEXTURE_GRID - 1)
    up = np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(TEXTURE_GRID)[None]))  # [H, G]
    texture = np.einsum("hi,nij,wj->nhw", up, grid, up)
    return grey + tint + amplitude[:, None, None, None] * texture[..., None]


def render(scene: dict[str, np.ndarray], rng: np.random.RandomState,
           resolution: int) -> dict[str, np.ndarray]:
    """Renders scenes; draws the style (background, colour jitter) from ``rng``.

    Returns ``image`` [n, H, W, 3], ``segmentation`` and ``edges`` [n, H, W, 1], uint8.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution={resolution!r}; choices: {RESOLUTIONS}")
    n = len(scene["count"])
    table = templates(resolution)
    q, p = table.shape[2], table.shape[-1]
    canvas = np.zeros((n, resolution + 2 * p, resolution + 2 * p, 3))
    canvas[:, p:-p, p:-p] = _backgrounds(rng, n, resolution)
    jitter = rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, MAX_OBJECTS, 3))
    label = np.zeros(canvas.shape[:3], np.uint8)  # object slot + 1
    semantic = np.zeros(canvas.shape[:3], np.uint8)
    # Centres in quantisation steps (1 / q of this resolution's pixels).
    step = np.rint(scene["centre"] * _Q).astype(np.int64)
    for k in range(MAX_OBJECTS):
        idx = np.flatnonzero(scene["count"] > k)
        pixel, offset = np.divmod(step[idx, k], q)
        a = table[scene["shape"][idx, k], scene["size"][idx, k], offset[:, 1], offset[:, 0]]
        rows = (pixel[:, 1] + p - p // 2)[:, None, None] + np.arange(p)[None, :, None]
        cols = (pixel[:, 0] + p - p // 2)[:, None, None] + np.arange(p)[None, None, :]
        ii = idx[:, None, None]
        colour = np.clip(RGB[scene["colour"][idx, k]] + jitter[idx, k], 0, 255)
        old = canvas[ii, rows, cols]
        canvas[ii, rows, cols] = old * (1 - a[..., None]) + colour[:, None, None] * a[..., None]
        hit = a >= 0.5
        label[ii, rows, cols] = np.where(hit, k + 1, label[ii, rows, cols])
        semantic[ii, rows, cols] = np.where(
            hit, scene["shape"][idx, k][:, None, None] + 1, semantic[ii, rows, cols])
    crop = (slice(None), slice(p, -p), slice(p, -p))
    image = np.clip(np.rint(canvas[crop]), 0, 255).astype(np.uint8)
    return {"image": image, "segmentation": semantic[crop][..., None],
            "edges": _edges(label[crop])[..., None]}


def _edges(label: np.ndarray) -> np.ndarray:
    """255 where an object pixel has a 4-neighbour with another label. [n, H, W] uint8."""
    padded = np.pad(label, ((0, 0), (1, 1), (1, 1)), mode="edge")
    centre = padded[:, 1:-1, 1:-1]
    differs = np.zeros(label.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[:, dy:dy + label.shape[1], dx:dx + label.shape[2]] != centre
    return np.where(differs & (centre > 0), 255, 0).astype(np.uint8)


# --------------------------------------------------------------------------- data set

def chunk_rng(split: str, chunk: int) -> np.random.RandomState:
    """The generator of chunk ``chunk`` of ``split`` (independent of the resolution)."""
    return np.random.RandomState(zlib.crc32(f"diffjax_shapes/{split}/{chunk}".encode()))


def generate_chunk(split: str, chunk: int, resolution: int = 32) -> dict[str, np.ndarray]:
    """Examples ``chunk * CHUNK ... (chunk + 1) * CHUNK - 1`` of ``split``.

    Returns the scene arrays of `sample_scenes`, ``category`` [n] int32, ``caption`` [n]
    (str) and the rendered ``image``, ``segmentation``, ``edges`` of `render`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; choices: ('train', 'test')")
    rng = chunk_rng(split, chunk)
    category = rng.permutation(np.repeat(np.arange(len(CATEGORIES)), CATEGORY_COUNTS))
    scene = sample_scenes(rng, category)
    images = render(scene, rng, resolution)
    captions = shapes_captions.captions(scene, category, rng)
    return {**scene, "category": category.astype(np.int32), "caption": captions, **images}


def num_examples(split: str) -> int:
    """Examples in ``split``: `NUM_TRAIN` or `NUM_TEST`."""
    return {"train": NUM_TRAIN, "test": NUM_TEST}[split]
