"""Text embeddings computed elsewhere (T5, CLIP, ...) and supplied per split as a file.

File format: an ``.npz`` with ``context`` ``[N, L, D]`` float, ``context_mask`` ``[N, L]``
(1 = real token) and ``null_context`` ``[L, D]`` + ``null_context_mask`` ``[L]`` (the empty
prompt's embedding: the null condition of classifier-free guidance); row ``i`` belongs to
example ``i`` of the split, in the data set's order.
"""
from __future__ import annotations

import os

import numpy as np

from diffjax import conditions

REQUIRED = ("context", "context_mask", "null_context", "null_context_mask")


def load(path: str, num_examples: int | None = None) -> tuple[dict[str, np.ndarray],
                                                              conditions.Nulls]:
    """``({"context", "context_mask"}, nulls)`` from ``path``; checks keys and shapes."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"precomputed text embeddings file {path!r} does not exist "
                                f"(an .npz with {', '.join(REQUIRED)})")
    with np.load(path) as f:
        missing = [k for k in REQUIRED if k not in f.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}; the file needs "
                             f"{', '.join(REQUIRED)}")
        arrays = {k: f[k] for k in REQUIRED}
    n, length, width = arrays["context"].shape if arrays["context"].ndim == 3 else (0, 0, 0)
    if arrays["context"].ndim != 3 or arrays["context_mask"].shape != (n, length):
        raise ValueError(f"{path}: context must be [N, L, D] and context_mask [N, L], got "
                         f"{arrays['context'].shape} and {arrays['context_mask'].shape}")
    if arrays["null_context"].shape != (length, width) or \
            arrays["null_context_mask"].shape != (length,):
        raise ValueError(f"{path}: null_context must be [L, D] = {(length, width)} and "
                         f"null_context_mask [L], got {arrays['null_context'].shape} and "
                         f"{arrays['null_context_mask'].shape}")
    if num_examples is not None and n != num_examples:
        raise ValueError(f"{path}: {n} rows of embeddings for a split of {num_examples} "
                         "examples")
    cond = {"context": arrays["context"].astype(np.float32),
            "context_mask": arrays["context_mask"].astype(np.int32)}
    nulls = conditions.Nulls(context=arrays["null_context"].astype(np.float32),
                             context_mask=arrays["null_context_mask"].astype(np.int32))
    return cond, nulls


__all__ = ["REQUIRED", "load"]
