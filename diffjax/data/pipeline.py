"""Data sets by name, their static metadata, and the grain input pipeline.

A data set name is either bundled (``BUNDLED``: generated locally by the builders in
:mod:`diffjax.data.builders`, prepared on first use) or a tfds catalogue name
(``mnist``, ``cifar10``, ``celeb_a``, ...) that the user has already prepared in
array_record format; catalogue data is never downloaded from here.

Every source yields the unified record ``{"x", "label"}``: catalogue data sets read their
``image`` feature, the toy sets their ``x``; ``label`` is the ClassLabel ``label`` feature
where there is one and 0 otherwise (``num_classes`` is then 1). Training batches put the
label under the condition dict: ``{"x", "cond": {"label"}}`` (:mod:`diffjax.conditions`).

Data directories: an explicit ``data_dir`` (``config.data.data_dir``) wins, then
``$DIFFJAX_DATA_DIR``; otherwise bundled data goes to ``~/.cache/diffjax/tensorflow_datasets``
and catalogue data is looked up where tfds looks (``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``), i.e. where users already keep it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from diffjax.data import batches, builders, transforms
from diffjax.data.catalogue import builder as _catalogue_builder
from diffjax.data.catalogue import check_name as _check_name
from diffjax.data.catalogue import source as _catalogue_source

BUNDLED: tuple[str, ...] = tuple(builders.SPECS)
IMAGE_KEY = "image"
LABEL_KEY = "label"


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a data set holds, known without reading it.

    Attributes:
      name: the name it was asked for.
      kind: ``"image"`` (uint8 pixels, scaled to [-1, 1] on load) or ``"points"``.
      shape: per-example shape, e.g. ``(8, 8, 1)`` or ``(2,)``.
      num_classes: number of label values; 1 where the data set has no labels.
      num_train, num_test: split sizes, None where unknown (catalogue data not yet
        prepared, or no such split).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    num_classes: int
    num_train: int | None
    num_test: int | None


def default_config() -> ml_collections.ConfigDict:
    """The ``config.data`` group with its defaults."""
    return ml_collections.ConfigDict({
        "dataset": "digits",
        "batch_size": 128,
        # Typed, so that --config.data.data_dir=DIR works on the command line.
        "data_dir": ml_collections.FieldReference(None, field_type=str),
        "random_flip": False,
        "num_workers": 0,
        # ADM's resize and centre crop of every image to image_size x image_size (None:
        # the stored size; needed for data sets of images of every size, e.g. imagenet2012).
        "image_size": ml_collections.FieldReference(None, field_type=int),
    })


# --------------------------------------------------------------------------- metadata

def _check_image_size(dataset: str, kind: str, image_size) -> None:
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or image_size <= 0:
        raise ValueError(f"config.data.image_size must be a positive int or None, got "
                         f"{image_size!r}")
    if kind != "image":
        raise ValueError(f"config.data.image_size={image_size} resizes images; {dataset!r} "
                         f"holds {kind}.")


def info(dataset: str, data_dir: str | None = None, image_size: int | None = None) -> DataInfo:
    """Static metadata of ``dataset``; reads and prepares nothing, works offline.

    ``image_size`` (``config.data.image_size``): the records are ADM's centre crops of that
    size (:func:`diffjax.data.transforms.center_crop`); ``shape`` says so.

    Raises:
      ValueError: unknown name (the message lists the bundled names), a catalogue data set
        without a uint8 ``image`` feature, images of every size without ``image_size``, or
        an ``image_size`` that is not a positive int.
    """
    _check_name(dataset)
    if dataset in builders.SPECS:
        spec = builders.SPECS[dataset]
        _check_image_size(dataset, spec.kind, image_size)
        shape = spec.shape if image_size is None else (image_size, image_size, spec.shape[-1])
        return DataInfo(dataset, spec.kind, tuple(shape), spec.num_classes,
                        spec.num_train, spec.num_test)
    tfds_info = _catalogue_builder(dataset, data_dir).info
    features = tfds_info.features
    if IMAGE_KEY not in features.keys():
        raise ValueError(
            f"tfds dataset {dataset!r} has no {IMAGE_KEY!r} feature; diffjax reads "
            f"images from the catalogue (features: {sorted(features.keys())}).")
    image = features[IMAGE_KEY]
    if np.dtype(image.np_dtype) != np.uint8 or len(image.shape) != 3 or image.shape[-1] is None:
        raise ValueError(
            f"tfds dataset {dataset!r} has {IMAGE_KEY!r} of shape {image.shape} and dtype "
            f"{image.np_dtype}; diffjax needs uint8 [H, W, C] images.")
    _check_image_size(dataset, "image", image_size)
    if None in image.shape and image_size is None:
        raise ValueError(
            f"tfds dataset {dataset!r} holds images of every size ({IMAGE_KEY!r} of shape "
            f"{image.shape}): set config.data.image_size (e.g. 256) to train on ADM's "
            "centre crops of that size.")
    shape = tuple(image.shape) if image_size is None else \
        (image_size, image_size, image.shape[-1])
    label = features[LABEL_KEY] if LABEL_KEY in features.keys() else None
    num_classes = label.num_classes if isinstance(label, tfds.features.ClassLabel) else 1
    splits = tfds_info.splits
    num = {s: splits[s].num_examples if s in splits else None for s in ("train", "test")}
    return DataInfo(dataset, "image", shape, num_classes, num["train"], num["test"])


def info_of(data_cfg: ml_collections.ConfigDict) -> DataInfo:
    """:func:`info` of ``config.data`` (its dataset, data_dir and image_size)."""
    return info(data_cfg.dataset, data_cfg.get("data_dir"), data_cfg.get("image_size"))


# --------------------------------------------------------------------------- sources

class ArraySource:
    """Random access to an in-memory split as unified records ``{"x", "label"}``.

    Used for the bundled data, which is small enough to hold: grain then spends no time
    decoding records. The repr names data set, split and size but no path, so a grain
    checkpoint restores with the data in another directory. An int array index reads
    those records stacked (:mod:`diffjax.data.batches`).
    """

    reads_batches = True

    def __init__(self, dataset: str, split: str, x: np.ndarray, label: np.ndarray):
        self.dataset, self.split = dataset, split
        self._x, self._label = x, label

    def __len__(self) -> int:
        return len(self._x)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"x": self._x[index], "label": self._label[index]}

    def __repr__(self) -> str:
        return _source_repr(self)


class TfdsSource:
    """Random access to a tfds catalogue split as unified records ``{"x", "label"}``."""

    def __init__(self, dataset: str, split: str, tfds_source, has_label: bool):
        self.dataset, self.split = dataset, split
        self._tfds, self._has_label = tfds_source, has_label

    def __len__(self) -> int:
        return len(self._tfds)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self._tfds[index]
        label = record[LABEL_KEY] if self._has_label else 0
        return {"x": np.asarray(record[IMAGE_KEY]), "label": np.int32(label)}

    def __repr__(self) -> str:
        return _source_repr(self)


def _source_repr(source: ArraySource | TfdsSource) -> str:
    return (f"diffjax.data.Source(dataset={source.dataset!r}, split={source.split!r}, "
            f"num_records={len(source)})")


def open_source(dataset: str, split: str, data_dir: str | None = None,
                image_size: int | None = None):
    """One split of ``dataset`` as a grain random-access source of ``{"x", "label"}``.

    ``x`` keeps its stored dtype (uint8 images, float32 points), ``label`` is int32; with
    ``image_size`` each image is ADM's centre crop of that size, made as it is read.
    Bundled data is prepared (or repaired) first; catalogue data must be prepared.
    """
    data_info = info(dataset, data_dir, image_size)
    if dataset in builders.SPECS:
        x, label = builders.bundled_arrays(dataset, split, data_dir)
        source = ArraySource(dataset, split, x, label)
    else:
        tfds_source = _catalogue_source(dataset, split, data_dir)
        source = TfdsSource(dataset, split, tfds_source, data_info.num_classes > 1)
    return source if image_size is None else transforms.CenterCropped(source, image_size)


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1] (0 -> -1, 255 -> 1 exactly); floats unchanged."""
    if x.dtype == np.uint8:
        # v - 127.5 is exact in float32, so each value is rounded once, correctly.
        return (x.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
    return x.astype(np.float32)


def load_arrays(dataset: str, split: str = "test", data_dir: str | None = None,
                limit: int | None = None,
                image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A whole split (or its first ``limit`` records, in stored order) in memory.

    Returns:
      x: float32 [N, *shape], images in [-1, 1] (ADM's centre crops with ``image_size``),
        points as stored.
      labels: int32 [N].
    """
    data_info = info(dataset, data_dir, image_size)
    if dataset in builders.SPECS and image_size is None:
        x, label = builders.bundled_arrays(dataset, split, data_dir)
        return to_float(x[:limit]), np.array(label[:limit], np.int32)
    source = open_source(dataset, split, data_dir, image_size)
    n = len(source) if limit is None else min(limit, len(source))
    records = [source[i] for i in range(n)]
    if not records:
        return np.zeros((0, *data_info.shape), np.float32), np.zeros((0,), np.int32)
    x = to_float(np.stack([r["x"] for r in records]))
    return x, np.asarray([r["label"] for r in records], np.int32)


# --------------------------------------------------------------------------- pipeline

class _ToBatchRecord(grain.transforms.Map):
    """A source record ``{"x", "label"}`` -> the training record ``{"x", "cond": {"label"}}``
    (DESIGN §6: the condition is a dict, passed on unchanged), ``x`` as float. Conditions
    looked up by :class:`_WithTableConds` join the label in ``cond``."""

    def map(self, element: dict[str, np.ndarray]) -> dict:
        cond = {"label": element["label"], **element.get("cond", {})}
        # Cached latents (diffjax.autoencoder.cache) also carry their posterior's logvar
        # and the moments of the mirror image, which the flip picks.
        extra = {k: v for k, v in element.items() if k.startswith("x_")}
        return {"x": to_float(element["x"]), "cond": cond, **extra}


class _WithTableConds:
    """A source whose record ``i`` also carries ``cond``: row ``i`` of a per-record table
    (:class:`diffjax.text.conditioning.CondTable`, e.g. a caption's text embeddings).
    Same repr as the wrapped source: a grain checkpoint restores either way."""

    def __init__(self, source, table):
        if len(table.rows) != len(source):
            raise ValueError(f"{source!r}: a condition table of {len(table.rows)} rows for "
                             f"{len(source)} records")
        self._source, self._table = source, table
        self.reads_batches = batches.reads_batches(source)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        return {**self._source[index], "cond": self._table.lookup(index)}

    def __repr__(self) -> str:
        return repr(self._source)


def _read_options(source: ArraySource | TfdsSource) -> grain.ReadOptions:
    if isinstance(source, ArraySource):
        # In memory: reader threads would only contend for the GIL.
        return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    # Threads overlap file reads and image decoding. The buffer stays small because
    # grain 0.2.18 scans the whole prefetch buffer on every element (~1 ms per record
    # at its default of 500).
    return grain.ReadOptions(num_threads=4, prefetch_buffer_size=16)


def validate_config(data_cfg: ml_collections.ConfigDict, process_count: int = 1) -> DataInfo:
    """Checks ``config.data`` before any compute; returns the data set's DataInfo.

    Raises:
      ValueError naming the offending ``config.data`` key and what it accepts.
    """
    try:
        data_info = info_of(data_cfg)
    except ValueError as e:
        message = str(e)
        raise ValueError(message if message.startswith("config.data.") else
                         f"config.data.dataset: {message}") from e
    batch_size = data_cfg.batch_size
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"config.data.batch_size must be a positive int, got {batch_size!r}")
    if batch_size % process_count:
        raise ValueError(
            f"config.data.batch_size={batch_size} (the global batch) is not divisible by "
            f"process_count={process_count}.")
    num_workers = data_cfg.get("num_workers", 0)
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"config.data.num_workers must be an int >= 0, got {num_workers!r}")
    if data_cfg.get("random_flip", False) and data_info.kind != "image":
        raise ValueError(
            f"config.data.random_flip=True needs images; {data_cfg.dataset!r} holds "
            f"{data_info.kind}.")
    return data_info


def make_iterator(data_cfg: ml_collections.ConfigDict, *, split: str = "train", seed: int,
                  process_index: int = 0, process_count: int = 1,
                  num_epochs: int | None = None, cond_table: Any = None,
                  source: Any = None, per_record: bool = False) -> Any:
    """This process's batches ``{"x": float32 [b, *shape], "cond": {"label": int32 [b]}}``.

    ``b = data_cfg.batch_size // process_count``: ``batch_size`` is the global batch. The
    records are split into ``process_count`` disjoint shards (remainder dropped), each
    shuffled with ``seed`` afresh every epoch; epochs repeat forever unless
    ``num_epochs`` is given; the last partial batch is dropped. The iterator's
    ``get_state()`` / ``set_state()`` (JSON bytes) resume it exactly. Data held in memory
    (bundled sets, cached latents) is read a batch at a time
    (:class:`diffjax.data.batches.ArrayBatches`); data read from files (tfds catalogue
    sets, centre crops) through grain's per-record ``DataLoader``, whose reads
    ``data_cfg.num_workers`` spreads over worker processes.

    Args:
      data_cfg: ``config.data`` (see :func:`default_config`).
      split: tfds split name, e.g. ``"train"``, ``"test"``, ``"train[:90%]"``.
      seed: shuffle and augmentation seed, an int in [0, 2**32).
      process_index, process_count: this process's shard (``jax.process_index()``,
        ``jax.process_count()`` in multi-host runs).
      num_epochs: passes over the data; None repeats forever.
      cond_table: per-record conditions joining ``cond`` (a ``CondTable`` of
        :mod:`diffjax.text.conditioning`: caption embeddings or word ids), or None.
      source: records to read instead of the split's own, one per record of the split
        (:class:`diffjax.autoencoder.cache.LatentRecords`: cached latents), or None.
      per_record: grain's per-record loader even for in-memory data (how in-memory data
        was read before; experiments/benchmarks/input_pipeline.py compares the two).
    """
    data_info = validate_config(data_cfg, process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    local_batch = data_cfg.batch_size // process_count
    if source is None:
        source = open_source(data_cfg.dataset, split, data_cfg.get("data_dir"),
                             data_cfg.get("image_size"))
    read_options = _read_options(source)
    if cond_table is not None:
        source = _WithTableConds(source, cond_table)
    if len(source) // process_count < local_batch:
        raise ValueError(
            f"split {split!r} of {data_info.name!r} has {len(source)} records, fewer than "
            f"process_count * per-process batch = {process_count} * {local_batch}.")
    flip = bool(data_cfg.get("random_flip", False))

    def grain_iterator() -> grain.DataLoaderIterator:
        shard = grain.sharding.ShardOptions(
            shard_index=process_index, shard_count=process_count, drop_remainder=True)
        sampler = grain.samplers.IndexSampler(
            num_records=len(source), shard_options=shard, shuffle=True,
            num_epochs=num_epochs, seed=int(seed))
        operations = [_ToBatchRecord()]
        if flip:
            operations.append(transforms.RandomHorizontalFlip())
        operations.append(grain.transforms.Batch(batch_size=local_batch, drop_remainder=True))
        loader = grain.DataLoader(
            data_source=source, sampler=sampler, operations=operations,
            worker_count=data_cfg.get("num_workers", 0), shard_options=shard,
            read_options=read_options)
        return iter(loader)

    if per_record or not batches.reads_batches(source):
        return grain_iterator()
    return batches.ArrayBatches(
        source, _ToBatchRecord().map, local_batch=local_batch, seed=int(seed),
        process_index=process_index, process_count=process_count, num_epochs=num_epochs,
        random_flip=flip, legacy=grain_iterator)
