"""tfds catalogue data sets: names, where they are kept, opening a prepared split.

Catalogue data is never downloaded from here: a split that is not prepared (in array_record
format, for random access) raises :class:`DatasetNotPreparedError` with the command that
prepares it.
"""
from __future__ import annotations

import functools
import os

import tensorflow_datasets as tfds

from diffjax.data import builders


class DatasetNotPreparedError(FileNotFoundError):
    """A tfds catalogue data set is not prepared (in array_record format) locally."""


@functools.lru_cache(maxsize=1)
def _catalogue_names() -> frozenset[str]:
    # Community data sets would need network access (and TensorFlow) to list.
    return frozenset(tfds.list_builders(with_community_datasets=False))


def _catalogue_data_dir(data_dir: str | None) -> str | None:
    if data_dir:
        return os.path.expanduser(data_dir)
    env = os.environ.get(builders.DATA_DIR_ENV)
    # None lets tfds use its own default, where users keep what they have prepared.
    return os.path.expanduser(env) if env else None


def check_name(dataset: str) -> None:
    """Raises ValueError unless ``dataset`` is bundled or a tfds catalogue name."""
    if dataset in builders.SPECS:
        return
    base = dataset.split(":")[0].split("/")[0]
    for spec in builders.SPECS.values():
        if base == spec.builder_cls.name:
            raise ValueError(
                f"dataset {dataset!r} is the tfds builder behind the bundled data; use "
                f"one of {tuple(builders.SPECS)} instead.")
    if base not in _catalogue_names():
        raise ValueError(
            f"Unknown dataset {dataset!r}: it is neither bundled with diffjax "
            f"(bundled: {', '.join(builders.SPECS)}) nor a tfds catalogue name "
            "(tfds.list_builders()).")


def builder(dataset: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The tfds builder of a catalogue data set where it is (or would be) prepared."""
    return tfds.builder(dataset, data_dir=_catalogue_data_dir(data_dir))


def _not_prepared_error(dataset: str, found: tfds.core.DatasetBuilder,
                        why: str) -> DatasetNotPreparedError:
    root = found.data_dir_root
    return DatasetNotPreparedError(
        f"tfds dataset {dataset!r} {why} (looked in {found.data_dir}). diffjax never "
        "downloads data. On a machine with network access, prepare it with\n"
        f"    tfds build {dataset} --data_dir={root} --file_format=array_record\n"
        "or, in Python,\n"
        f"    tfds.builder({dataset!r}, data_dir={str(root)!r})"
        ".download_and_prepare(file_format='array_record')\n"
        "then copy the data directory here, or point config.data.data_dir (or "
        f"${builders.DATA_DIR_ENV}) at it.")


def source(dataset: str, split: str, data_dir: str | None):
    """A prepared split's tfds random-access data source; never downloads."""
    try:
        return tfds.data_source(
            dataset, split=split, data_dir=_catalogue_data_dir(data_dir), download=False)
    except (AssertionError, NotImplementedError, ValueError, OSError) as e:
        found = builder(dataset, data_dir)
        if not found.is_prepared():
            raise _not_prepared_error(dataset, found, "is not prepared") from e
        if isinstance(e, NotImplementedError):  # prepared, but not for random access
            raise _not_prepared_error(
                dataset, found,
                f"is prepared as {found.info.file_format.value}, not array_record") from e
        raise
