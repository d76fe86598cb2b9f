"""Data: bundled data sets as tfds builders, tfds catalogue data sets, a grain pipeline.

Public API::

    BUNDLED                      # ("digits", "moons", "swiss_roll", "ring", "checkerboard",
                                 #  "shapes", "shapes_64")
    default_config()             # config.data: dataset, batch_size, data_dir, random_flip,
                                 #              num_workers, image_size
    info(dataset, data_dir=None, image_size=None) -> DataInfo(name, kind, shape, num_classes,
                                                              num_train, num_test)
        # reads nothing; image_size: ADM's centre crops (diffjax.data.transforms)
    info_of(data_cfg) -> DataInfo                                   # info of config.data
    validate_config(data_cfg, process_count=1) -> DataInfo         # fails before compute
    load_arrays(dataset, split="test", data_dir=None, limit=None, image_size=None)
        -> (x float32 [N, *shape], labels int32 [N])      # images in [-1, 1]
    make_iterator(data_cfg, *, split="train", seed, process_index=0, process_count=1,
                  num_epochs=None) -> iterator with get_state() / set_state(bytes)
        # yields {"x": float32 [b, *shape], "cond": {"label": int32 [b]}},
        # b = batch_size // process_count; in-memory data (bundled sets, cached latents) is
        # read a batch at a time (diffjax.data.batches.ArrayBatches), file-backed data
        # (tfds catalogue) through grain's per-record DataLoader
    DatasetNotPreparedError      # FileNotFoundError: catalogue data not prepared locally
    shapes_builder.load_records(name, split, data_dir) -> {feature: [N, ...]}
        # every field of shapes / shapes_64: image, caption, category, scene arrays,
        # edges, segmentation (see diffjax.data.shapes_builder)

Bundled data is generated offline (see :mod:`diffjax.data.builders` for the exact
definitions, seeds and splits) into ``config.data.data_dir``, ``$DIFFJAX_DATA_DIR`` or
``~/.cache/diffjax/tensorflow_datasets``; catalogue data is never downloaded.

Checkpointing the iterator (grain 0.2.18, orbax-checkpoint 0.12.8)
-------------------------------------------------------------------
``make_iterator`` returns a ``grain.DataLoaderIterator`` (file-backed data) or a
:class:`diffjax.data.batches.ArrayBatches` (in-memory data). Either's state is
``it.get_state() -> bytes`` (UTF-8 JSON: the position, and what ``set_state`` checks it
against: the reprs of sampler and source, or source, seed, shard, batch and flip) and
``it.set_state(bytes)``; restoring into a freshly made iterator with the same config and
seed resumes with exactly the batches an uninterrupted run would have produced. An
``ArrayBatches`` given the state of grain's per-record loader (a run checkpointed before
in-memory data was read a batch at a time) hands the run to that loader, so it resumes
exactly too.

For orbax, grain ships ``grain.checkpoint.CheckpointHandler`` (the handler formerly
exported as ``grain.python.PyGrainCheckpointHandler``, still aliased there) and the
args ``grain.checkpoint.CheckpointSave(item=it)`` / ``grain.checkpoint.CheckpointRestore(
item=it)``, which it registers with ``orbax.checkpoint.args`` when orbax is importable
(it is here)::

    mngr = ocp.CheckpointManager(
        workdir, item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(it)))
    mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(it)))   # sets ``it``'s state in place

The handler writes ``data/process_<i>-of-<n>.json`` with ``i, n`` from
``jax.process_index()`` / ``jax.process_count()``, so in multi-process runs
``jax.distributed`` must be initialised (otherwise every process writes
``process_0-of-1.json``). Without the handler, store ``it.get_state()`` as bytes or
``json.loads`` of it in any JSON item. (``DataLoaderIterator`` also implements the
orbax v1 ``save``/``load`` protocol for ``StatefulCheckpointable``.)
"""
from diffjax.data import builders as _builders
from diffjax.data import shapes_builder as _shapes_builder

# The shapes builder sits in its own module on top of builders' machinery; its data sets
# join the bundled table here (before the pipeline reads it), so neither module imports
# the other in a circle.
_builders.SPECS.update(_shapes_builder.SPECS)

from diffjax.data.builders import CacheRebuiltWarning, default_data_dir  # noqa: E402
from diffjax.data.catalogue import DatasetNotPreparedError  # noqa: E402
from diffjax.data.pipeline import (  # noqa: E402
    BUNDLED,
    ArraySource,
    DataInfo,
    TfdsSource,
    default_config,
    info,
    info_of,
    load_arrays,
    make_iterator,
    open_source,
    to_float,
    validate_config,
)

__all__ = [
    "BUNDLED",
    "ArraySource",
    "CacheRebuiltWarning",
    "DataInfo",
    "DatasetNotPreparedError",
    "TfdsSource",
    "default_config",
    "default_data_dir",
    "info",
    "info_of",
    "load_arrays",
    "make_iterator",
    "open_source",
    "to_float",
    "validate_config",
]
