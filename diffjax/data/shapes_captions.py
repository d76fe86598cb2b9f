"""Captions of `shapes` scenes: templated writing, parsing back, and what a prompt asks.

Grammar (lower case, one optional prefix ``a picture of`` / ``an image of`` /
``a photo of`` / ``exactly``)::

    caption  := group | group CONJ group | group RELATION group
    group    := DET [SIZE] [COLOUR] SHAPE [("that is" | "in") COLOUR]
    DET      := a | an | one | two | three | four       (SHAPE plural after two..four)
    CONJ     := and | with | together with
    RELATION := [to the | on the] left of | [to the | on the] right of | above | over
              | below | under | beneath
    SIZE     := small | little | large | big

A parsed prompt is the scene it asks for, as at most two groups: ``count``, ``shape``,
``colour``, ``size`` [2] (-1: unspecified or unused group; count 0 marks an unused group)
and ``relation`` (index into `shapes.RELATIONS` of group 0 relative to group 1, or -1). Its
category is implied: a relation -> position; two groups -> color_attr if both name a
colour, else two_object; count > 1 -> counting; a colour -> colors; else single_object.

What satisfies a prompt follows GenEval (Ghosh et al. 2023): ``counting`` needs exactly
``count`` objects matching the group, the other categories at least ``count`` matching
objects per group, and ``position`` a matching pair whose offset along the relation's axis
is the larger one. An object matches a group when it has the group's shape and, where the
group names them, its colour and size.
"""
from __future__ import annotations

import numpy as np

from diffjax.data.shapes_vocab import CATEGORIES, COLOURS, SHAPES

PREFIXES = ("a picture of ", "an image of ", "a photo of ", "exactly ")
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
SIZE_WORDS = {"small": 0, "little": 0, "large": 1, "big": 1}
PLURALS = {name: name + ("es" if name.endswith("s") else "s") for name in SHAPES}
RELATION_WORDS = {
    "to the left of": 0, "on the left of": 0, "left of": 0,
    "to the right of": 1, "on the right of": 1, "right of": 1,
    "above": 2, "over": 2, "below": 3, "under": 3, "beneath": 3,
}
CONJUNCTIONS = (" together with ", " and ", " with ")
_SYNONYMS = {0: ("small", "little"), 1: ("large", "big")}
_RELATION_PHRASES = {r: [w for w, i in RELATION_WORDS.items() if i == r] for r in range(4)}


# --------------------------------------------------------------------------- writing

def _group(u: np.ndarray, count: int, shape: int, colour: int, size: int, *,
           name_colour: bool, name_size: bool, colour_tail: bool = False) -> str:
    """One noun phrase; ``u`` [4] uniforms choose the wording."""
    words = []
    if name_size:
        words.append(_SYNONYMS[size][int(u[0] * 2)])
    if name_colour and not colour_tail:
        words.append(COLOURS[colour])
    words.append(SHAPES[shape] if count == 1 else PLURALS[SHAPES[shape]])
    if name_colour and colour_tail:
        words += ["that is" if u[1] < 0.5 else "in", COLOURS[colour]]
    if count > 1:
        det = NUMBER_WORDS[count]
    elif u[2] < 0.15:
        det = "one"
    else:
        det = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([det] + words)


def _caption(u: np.ndarray, scene: dict[str, np.ndarray], i: int, category: str) -> str:
    """The caption of scene ``i``; ``u`` [16] uniforms choose the wording."""
    shape, colour, size = scene["shape"][i], scene["colour"][i], scene["size"][i]
    prefix = PREFIXES[int(u[0] * 3)] if u[1] < 0.3 else ""
    if category in ("single_object", "colors"):
        is_colors = category == "colors"
        body = _group(u[2:6], 1, shape[0], colour[0], size[0], name_colour=is_colors,
                      name_size=u[6] < (0.3 if is_colors else 0.5),
                      colour_tail=is_colors and u[7] < 0.4)
    elif category == "counting":
        count = int(scene["count"][i])
        same = bool(np.all(colour[:count] == colour[0]))
        body = _group(u[2:6], count, shape[0], colour[0], -1, name_colour=same,
                      name_size=False)
        prefix = "exactly " if u[1] < 0.15 else ""
    else:
        named = category != "two_object"
        a, b = (_group(u[2 + 4 * k:6 + 4 * k], 1, shape[k], colour[k], size[k],
                       name_colour=named and (category == "color_attr" or u[10 + k] < 0.6),
                       name_size=u[12 + k] < 0.3) for k in range(2))
        if category == "position":
            phrases = _RELATION_PHRASES[int(scene["relation"][i])]
            join = " " + phrases[int(u[14] * len(phrases))] + " "
        else:
            join = CONJUNCTIONS[int(u[14] * 3)]
        body = a + join + b
    return prefix + body


def captions(scene: dict[str, np.ndarray], category: np.ndarray,
             rng: np.random.RandomState) -> np.ndarray:
    """Captions of scenes (`diffjax.data.shapes.sample_scenes`) of ``category`` [n]. [n] str."""
    u = rng.uniform(size=(len(category), 16))
    return np.asarray([_caption(u[i], scene, i, CATEGORIES[c])
                       for i, c in enumerate(category)], dtype=object)


# --------------------------------------------------------------------------- parsing

def _vocabulary() -> list[str]:
    words = set(NUMBERS) | set(SIZE_WORDS) | set(COLOURS) | set(SHAPES) | set(PLURALS.values())
    words |= {"that", "is", "in"} | {w for phrase in RELATION_WORDS for w in phrase.split()}
    return sorted(words | {w for p in PREFIXES + CONJUNCTIONS for w in p.split()})


VOCABULARY = _vocabulary()


def _parse_group(text: str, caption: str) -> tuple[int, int, int, int]:
    """``(count, shape, colour, size)`` of one noun phrase (-1 where unnamed)."""
    words = text.split()
    colour = size = shape = -1
    for w in words:
        if w not in VOCABULARY:
            raise ValueError(f"caption {caption!r}: unknown word {w!r}; the shapes grammar "
                             f"knows {len(VOCABULARY)} words: {VOCABULARY}")
    if not words or words[0] not in NUMBERS:
        raise ValueError(f"caption {caption!r}: {text!r} must start with one of "
                         f"{sorted(NUMBERS)}")
    count, rest = NUMBERS[words[0]], words[1:]
    if rest[-3:-1] == ["that", "is"] and rest[-1] in COLOURS:
        colour, rest = COLOURS.index(rest[-1]), rest[:-3]
    elif rest[-2:-1] == ["in"] and rest[-1] in COLOURS:
        colour, rest = COLOURS.index(rest[-1]), rest[:-2]
    if rest and rest[0] in SIZE_WORDS:
        size, rest = SIZE_WORDS[rest[0]], rest[1:]
    if rest and rest[0] in COLOURS and colour < 0:
        colour, rest = COLOURS.index(rest[0]), rest[1:]
    nouns = SHAPES if count == 1 else tuple(PLURALS[s] for s in SHAPES)
    if len(rest) != 1 or rest[0] not in nouns:
        raise ValueError(f"caption {caption!r}: cannot read {text!r} as [size] [colour] "
                         f"shape with {words[0]!r}; shapes: {list(nouns)}")
    shape = nouns.index(rest[0])
    return count, shape, colour, size


def parse(caption: str) -> dict[str, np.ndarray]:
    """The prompt a caption asks for (see the module docstring). Raises ValueError naming
    the caption and the word it cannot read."""
    text = " ".join(str(caption).lower().replace(",", " ").rstrip(".").split())
    for prefix in PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    relation, parts = -1, [text]
    for phrase in sorted(RELATION_WORDS, key=len, reverse=True):
        if f" {phrase} " in f" {text} ":
            relation = RELATION_WORDS[phrase]
            parts = [p.strip() for p in f" {text} ".split(f" {phrase} ", 1)]
            break
    else:
        for conj in CONJUNCTIONS:
            if conj in text:
                parts = text.split(conj, 1)
                break
    if relation >= 0 and not all(parts):
        raise ValueError(f"caption {caption!r}: a relation needs an object on each side")
    groups = [_parse_group(part, caption) for part in parts]
    if len(groups) == 2 and any(g[0] != 1 for g in groups):
        raise ValueError(f"caption {caption!r}: two groups must each be one object")
    groups += [(0, -1, -1, -1)] * (2 - len(groups))
    count, shape, colour, size = (np.asarray(v, np.int32) for v in zip(*groups))
    return {"category": np.int32(_category(count, colour, relation)), "count": count,
            "shape": shape, "colour": colour, "size": size, "relation": np.int32(relation)}


def _category(count: np.ndarray, colour: np.ndarray, relation: int) -> int:
    if relation >= 0:
        name = "position"
    elif count[1] > 0:
        name = "color_attr" if np.all(colour >= 0) else "two_object"
    elif count[0] > 1:
        name = "counting"
    else:
        name = "colors" if colour[0] >= 0 else "single_object"
    return CATEGORIES.index(name)


def parse_batch(captions_: list[str] | np.ndarray) -> dict[str, np.ndarray]:
    """`parse` of every caption, stacked: ``category``, ``relation`` [n]; the rest [n, 2]."""
    parsed = [parse(c) for c in captions_]
    if not parsed:
        raise ValueError("no captions to parse")
    return {k: np.stack([p[k] for p in parsed]) for k in parsed[0]}


# --------------------------------------------------------------------------- semantics

def satisfies(prompt: dict[str, np.ndarray], scene: dict[str, np.ndarray]) -> np.ndarray:
    """Whether each scene is what its prompt asks for. [n] bool.

    Args:
      prompt: `parse_batch` output for n prompts.
      scene: ``count`` [n], ``shape``, ``colour``, ``size`` [n, K], ``centre`` [n, K, 2]
        (slots ``>= count`` are ignored; K is any number of object slots).
    """
    k = scene["shape"].shape[1]
    present = np.arange(k)[None, :] < scene["count"][:, None]  # [n, K]

    def attr(name: str) -> np.ndarray:  # [n, 2, K]: does object k match group g on name?
        want = prompt[name][:, :, None]
        return (want < 0) | (scene[name][:, None, :] == want)

    match = present[:, None] & attr("shape") & attr("colour") & attr("size")
    found = match.sum(-1)  # [n, 2]
    counting = prompt["category"] == CATEGORIES.index("counting")
    ok = np.where(counting, found[:, 0] == prompt["count"][:, 0],
                  np.all(found >= prompt["count"], axis=1))
    rel = prompt["relation"]
    if np.any(rel >= 0):
        a = np.repeat(scene["centre"][:, :, None], k, axis=2)  # [n, K(a), K(b), 2]
        b = np.repeat(scene["centre"][:, None, :], k, axis=1)
        d = b - a
        main = np.where((rel < 2)[:, None, None], d[..., 0], d[..., 1])
        main = main * np.where(rel % 2 == 0, 1, -1)[:, None, None]
        other = np.abs(np.where((rel < 2)[:, None, None], d[..., 1], d[..., 0]))
        pair = match[:, 0, :, None] & match[:, 1, None, :] & ~np.eye(k, dtype=bool)
        ok &= (rel < 0) | np.any(pair & (main > other), axis=(1, 2))
    return ok


def per_category(ok: np.ndarray, category: np.ndarray) -> dict[str, float]:
    """Mean of ``ok`` [n] per category present, and ``overall``: the mean over those
    categories (GenEval's overall score). Categories absent from ``category`` are omitted."""
    out = {name: float(np.mean(ok[category == c])) for c, name in enumerate(CATEGORIES)
           if np.any(category == c)}
    out["overall"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


__all__ = ["captions", "parse", "parse_batch", "per_category", "satisfies"]
