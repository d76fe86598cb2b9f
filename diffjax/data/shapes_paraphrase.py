"""Held-out paraphrases of `shapes` captions: the same scene asked for in wording the training
captions never use (the ``t2i_encoders`` experiment; Saharia et al. 2022 found pretrained text
encoders generalise to such wording).

Two sets, each a deterministic rewrite of a caption that keeps its meaning:

* ``reordered`` — the two objects of a two-object caption swapped ("a red circle above a blue
  square" -> "a blue square below a red circle", "A and B" -> "B and A"), a prefix dropped.
  Only words of the training captions, so every encoder can read it. Captions of one group
  (single object, colours, counting) have nothing to swap and are kept.
* ``reworded`` — colour and shape names replaced by synonyms no caption uses ("crimson",
  "disc", ...). A word-level encoder learned from the captions cannot represent these (it
  refuses them, naming the word); a pretrained encoder can.

The scene a paraphrase asks for is its original caption's (scored with that caption).
"""
from __future__ import annotations

import re
from typing import Sequence

from diffjax.data.shapes_captions import CONJUNCTIONS, PREFIXES, RELATION_WORDS

SETS = ("test", "reordered", "reworded")

COLOUR_SYNONYMS = {"red": "crimson", "orange": "amber", "yellow": "golden",
                   "green": "emerald", "blue": "azure", "purple": "violet"}
SHAPE_SYNONYMS = {"circle": "disc", "square": "box", "triangle": "wedge", "star": "pentagram",
                  "diamond": "rhombus", "cross": "plus sign"}
_OPPOSITE = {0: "to the right of", 1: "to the left of", 2: "below", 3: "above"}
# Longest phrases first, so "to the left of" is not read as "left of".
_RELATIONS = sorted(RELATION_WORDS, key=len, reverse=True)


def _strip_prefix(caption: str) -> str:
    for prefix in PREFIXES:
        if caption.startswith(prefix) and prefix != "exactly ":
            return caption[len(prefix):]
    return caption


def reorder(caption: str) -> str:
    """The two objects of ``caption`` swapped (relation inverted); others unchanged."""
    body = _strip_prefix(caption)
    for phrase in _RELATIONS:
        parts = body.split(f" {phrase} ")
        if len(parts) == 2:
            return f"{parts[1]} {_OPPOSITE[RELATION_WORDS[phrase]]} {parts[0]}"
    for conjunction in CONJUNCTIONS:
        parts = body.split(conjunction)
        if len(parts) == 2:
            return parts[1] + conjunction + parts[0]
    return body


def _plural(word: str) -> str:
    return word[:-4] + "signs" if word.endswith("sign") else word + (
        "es" if word.endswith(("s", "x")) else "s")


def reword(caption: str) -> str:
    """``caption`` with colour and shape names replaced by unseen synonyms."""
    out = caption
    for name, synonym in COLOUR_SYNONYMS.items():
        out = re.sub(rf"\b{name}\b", synonym, out)
    for name, synonym in SHAPE_SYNONYMS.items():
        plural = name + ("es" if name.endswith("s") else "s")
        out = re.sub(rf"\b{plural}\b", _plural(synonym), out)
        out = re.sub(rf"\b{name}\b", synonym, out)
    # "a" / "an" before the new first word of a noun phrase.
    return re.sub(r"\b(a|an) (\w)", lambda m: ("an " if m.group(2) in "aeiou" else "a ")
                  + m.group(2), out)


def paraphrase(captions: Sequence[str], prompt_set: str) -> list[str]:
    """``captions`` rewritten as ``prompt_set`` (one of :data:`SETS`; ``test`` = unchanged)."""
    if prompt_set not in SETS:
        raise ValueError(f"prompt set {prompt_set!r} is unknown; valid choices: "
                         f"{', '.join(SETS)}")
    rewrite = {"test": str, "reordered": reorder, "reworded": reword}[prompt_set]
    return [rewrite(str(c)) for c in captions]


__all__ = ["COLOUR_SYNONYMS", "SETS", "SHAPE_SYNONYMS", "paraphrase", "reorder", "reword"]
