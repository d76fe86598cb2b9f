"""Batches of an in-memory split read a batch at a time.

grain's DataLoader reads, maps and stacks one record at a time in Python: about 0.1-0.14 ms a
record on the 2-core development CPU (17 ms for a batch of 128 digits), whatever the record's
size. Asynchronous dispatch hides most of that behind a U-Net's step (the README main job's
1300 steps: 3 min 30 s -> 3 min 22 s), but not behind a small one (configs/toy2d.py, an MLP
at batch 256: 1 min 36 s -> 24 s for the whole run; experiments/benchmarks/input_pipeline.py
and experiments/README.md). For data held in memory (the bundled sets, the
cached latents of :mod:`diffjax.autoencoder.cache`, their caption tables) there is nothing
to overlap, so :class:`ArrayBatches` reads each batch with one fancy-index gather per array
instead (tens of microseconds a batch) and keeps grain's contract: the same sharding
(``process_count`` disjoint contiguous shards, remainder dropped), each shard reshuffled
every epoch, batches running on across epoch boundaries, ``num_epochs`` or forever, the
same horizontal flips (one draw per record, seeded by the batch's position), and
``get_state() -> bytes`` / ``set_state(bytes)`` for grain's orbax checkpoint handler.

The order differs from grain's (another shuffle), so a run checkpointed by the per-record
loader carries grain's state: ``set_state`` recognises it and hands the run to a grain
iterator built as before, which resumes it exactly where it stopped.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

import numpy as np

from diffjax.data.transforms import mirror

FORMAT = "diffjax.data.ArrayBatches/1"


def reads_batches(source: Any) -> bool:
    """Whether ``source[indices]`` (an int array) returns the records' arrays stacked."""
    return bool(getattr(source, "reads_batches", False))


class ArrayBatches:
    """This process's batches ``{"x", "cond": {...}, ...}`` of an in-memory source.

    Args:
      source: random access with ``source[int array] -> {"x", "label", ...}`` stacked
        (:func:`reads_batches`), ``len(source)`` records, a repr that names the data.
      to_batch: the record -> training batch conversion (``x`` as float, ``cond``).
      local_batch: rows per batch of this process.
      seed, process_index, process_count, num_epochs, random_flip: as in
        :func:`diffjax.data.make_iterator`.
      legacy: builds grain's per-record iterator over the same data and settings, for a
        state that grain wrote (a run checkpointed before this reader existed).
    """

    def __init__(self, source: Any, to_batch: Callable[[dict], dict], *, local_batch: int,
                 seed: int, process_index: int, process_count: int,
                 num_epochs: Optional[int], random_flip: bool,
                 legacy: Callable[[], Any]):
        self._source, self._to_batch = source, to_batch
        self._n = len(source) // process_count
        self._lo = process_index * self._n
        self._batch, self._seed, self._flip = local_batch, int(seed), random_flip
        self._shard = [process_index, process_count]
        self._total = None if num_epochs is None else num_epochs * self._n
        self._legacy_factory, self._legacy = legacy, None
        self._next = 0
        self._perms: dict[int, np.ndarray] = {}

    def __iter__(self):
        return self

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:   # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self._seed, self._shard[0], epoch])
            self._perms[epoch] = self._lo + rng.permutation(self._n)
        return self._perms[epoch]

    def indices(self, k: int) -> np.ndarray:
        """The record indices of batch ``k`` of this process, in order."""
        pos = np.arange(k * self._batch, (k + 1) * self._batch)
        epoch, within = np.divmod(pos, self._n)
        out = np.empty(self._batch, np.int64)
        for e in np.unique(epoch):
            rows = epoch == e
            out[rows] = self._permutation(int(e))[within[rows]]
        return out

    def __next__(self) -> dict:
        if self._legacy is not None:
            return next(self._legacy)
        k = self._next
        if self._total is not None and (k + 1) * self._batch > self._total:
            raise StopIteration
        record = dict(self._source[self.indices(k)])
        if self._flip:
            coins = np.random.default_rng([self._seed, self._shard[0], k, 1]).random(
                self._batch) < 0.5
            record = mirror(record, coins)
        self._next = k + 1
        return self._to_batch(record)

    # ------------------------------------------------------------------ checkpointing
    def _identity(self) -> dict:
        return {"source": repr(self._source), "seed": self._seed, "shard": self._shard,
                "batch": self._batch, "flip": self._flip}

    def get_state(self) -> bytes:
        if self._legacy is not None:
            return self._legacy.get_state()
        return json.dumps({"format": FORMAT, "next_batch": self._next, **self._identity()},
                          indent=1).encode()

    def set_state(self, state: bytes) -> None:
        stored = json.loads(state.decode() if isinstance(state, bytes) else state)
        if stored.get("format") != FORMAT:
            if "last_seen_indices" not in stored:
                raise ValueError(f"not a data iterator state of diffjax or grain: {state!r:.200}")
            self._legacy = self._legacy_factory()   # grain wrote it: grain resumes it
            self._legacy.set_state(state)
            return
        for key, value in self._identity().items():
            if stored.get(key) != value:
                raise ValueError(f"the data iterator state was saved with {key}="
                                 f"{stored.get(key)!r}; this iterator reads {key}={value!r}")
        self._legacy, self._next = None, int(stored["next_batch"])

    def start_prefetch(self) -> None:   # called by grain's checkpoint handler on restore
        if self._legacy is not None:
            self._legacy.start_prefetch()

