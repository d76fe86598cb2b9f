"""Bundled data sets as real tfds builders, prepared offline into a local cache.

Nothing here downloads: every example is generated from scikit-learn's bundled 8x8
digits or from numpy with fixed seeds, so the cache is regenerable bit for bit.

Builders (array_record files, readable with ``as_data_source``):

* ``diffjax_digits`` (1.0.0) -- ``sklearn.datasets.load_digits()``: 1797 grey 8x8 digits.
  ``image`` uint8 [8, 8, 1] with the 0..16 intensities mapped to ``round(v * 255 / 16)``
  (numpy rounding, half to even: the only tie, 8 -> 127.5, becomes 128); ``label``
  ClassLabel(10). Split: the rows of each class are permuted with
  ``np.random.RandomState(0)`` (one generator, classes 0..9 in order) and the first
  ``n_c // 6`` rows of class ``c`` form ``test``: 1501 train / 296 test, stratified;
  each split keeps sklearn's row order.
* ``diffjax_toy2d`` (1.0.0), one config per set; ``x`` float32 [2], ``label`` ClassLabel;
  20000 train / 5000 test points, stored in the order drawn. Each split is drawn from
  ``np.random.RandomState(crc32("diffjax_toy2d/<config>/<split>"))``.

  ==============  ============================================================  =======
  config          definition (after normalisation)                              label
  ==============  ============================================================  =======
  ``moons``       sklearn's two moons: upper ``(cos a, sin a)``, lower           moon (2)
                  ``(1 - cos a, 1/2 - sin a)``, ``a ~ U[0, pi]``, plus
                  N(0, 0.05^2) noise; then ``x = 1.2 * (raw - (1/2, 1/4))``
  ``swiss_roll``  ``(t cos t, t sin t) + N(0, 0.25^2)``, ``t = 3 pi/2 (1 + 2u)``,  0 (1)
                  ``u ~ U[0, 1]``; then ``x = raw / 7``
  ``ring``        8 Gaussians, means ``sqrt(2) (cos 2 pi k/8, sin 2 pi k/8)``,     k (8)
                  std 0.1 (per-axis variance of the means is exactly 1)
  ``checkerboard`` uniform on the 8 unit cells ``[i-2, i-1) x [j-2, j-1)`` of       cell (8)
                  ``[-2, 2]^2`` with ``i + j`` even; label = rank of ``(i, j)``
                  in row-major order among those cells
  ==============  ============================================================  =======

  Every set has per-axis std between 0.5 and 1.2.

Cache: ``<data_dir>/diffjax_digits/1.0.0`` and ``<data_dir>/diffjax_toy2d/<config>/1.0.0``,
``data_dir`` defaulting to ``$DIFFJAX_DATA_DIR`` or ``~/.cache/diffjax/tensorflow_datasets``.
A version directory counts as complete only if it holds ``diffjax_manifest.json``, which
lists the size and sha256 of every other file in it. Preparation runs under an exclusive
``fcntl.flock`` (so concurrent processes prepare once), writes into a private directory
under ``<data_dir>/.diffjax/`` and renames the finished, manifested directory into place:
a killed preparation never leaves anything that looks complete. A cache that fails the
manifest check (truncated record file, missing ``dataset_info.json``, ...) is reported
with a warning and rebuilt.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from diffjax import atomic
from diffjax.data.generators import (_TOY2D, DIGITS_NUM_TEST, DIGITS_NUM_TRAIN,
                                     TOY2D_NUM_TEST, TOY2D_NUM_TRAIN, digits_split,
                                     toy2d_points)

DATA_DIR_ENV = "DIFFJAX_DATA_DIR"
MANIFEST_NAME = "diffjax_manifest.json"

class CacheRebuiltWarning(UserWarning):
    """A bundled data cache was corrupt or incomplete and has been regenerated."""


def default_data_dir() -> str:
    """``$DIFFJAX_DATA_DIR`` if set, else ``~/.cache/diffjax/tensorflow_datasets``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return os.path.expanduser(env)
    return os.path.expanduser("~/.cache/diffjax/tensorflow_datasets")


# --------------------------------------------------------------------------- builders

class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder whose examples are generated locally: no URLs, no checksum files."""

    # tfds looks for a checksums file next to the builder's code and, for classes in a
    # package, probes `importlib_resources`, which tfds 4.9.10 does not install on
    # Python >= 3.9. Our builders download nothing, so there is no code path to probe.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        return None

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        return {split: self._generate_examples(split) for split in ("train", "test")}

    # tfds announces "Downloading and preparing ..." and the temporary directory we
    # prepare in; `_prepare` logs what actually happens instead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass


class DiffjaxDigits(_OfflineBuilder):
    """scikit-learn's 8x8 digits (UCI ML hand-written digits), split as documented."""

    name = "diffjax_digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        # Tensor, not Image: tfds encodes Image features as PNG through TensorFlow,
        # which diffjax does not depend on.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # keep the documented order: sklearn rows, ascending
        )

    def _generate_examples(self, split: str):
        rows, images, labels = digits_split()[split]
        for row, image, label in zip(rows, images, labels):
            yield int(row), {"image": image, "label": int(label)}


class DiffjaxToy2d(_OfflineBuilder):
    """2-D toy distributions for diffusion and flow experiments (see module docstring)."""

    name = "diffjax_toy2d"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=config, description=spec.description)
        for config, spec in _TOY2D.items()
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        num_classes = _TOY2D[self.builder_config.name].num_classes
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "x": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=num_classes),
            }),
            supervised_keys=("x", "label"),
            disable_shuffling=True,  # row i of a split is the i-th generated point
        )

    def _generate_examples(self, split: str):
        x, label = toy2d_points(self.builder_config.name, split)
        for i in range(len(x)):
            yield i, {"x": x[i], "label": int(label[i])}


# --------------------------------------------------------------------------- bundled table

@dataclasses.dataclass(frozen=True)
class BundledSpec:
    """Static facts about a bundled data set, known without preparing it."""

    builder_cls: type
    config: str | None
    kind: str  # "image" | "points"
    x_key: str
    shape: tuple[int, ...]
    num_classes: int
    num_train: int
    num_test: int

    @property
    def key(self) -> str:
        """File-name-safe id, e.g. ``diffjax_toy2d-moons``."""
        parts = [self.builder_cls.name] + ([self.config] if self.config else [])
        return "-".join(parts)

    def version_dir(self, data_dir: str) -> Path:
        parts = [self.builder_cls.name] + ([self.config] if self.config else [])
        return Path(data_dir, *parts, str(self.builder_cls.VERSION))


SPECS: dict[str, BundledSpec] = {
    "digits": BundledSpec(DiffjaxDigits, None, "image", "image", (8, 8, 1), 10,
                          DIGITS_NUM_TRAIN, DIGITS_NUM_TEST),
    **{
        name: BundledSpec(DiffjaxToy2d, name, "points", "x", (2,), spec.num_classes,
                          TOY2D_NUM_TRAIN, TOY2D_NUM_TEST)
        for name, spec in _TOY2D.items()
    },
}


# --------------------------------------------------------------------------- cache

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_table(version_dir: Path) -> dict[str, dict[str, object]]:
    return {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(version_dir.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }


def _write_manifest(version_dir: Path) -> None:
    files = _file_table(version_dir)
    for required in ("dataset_info.json", "features.json"):
        if required not in files:
            raise RuntimeError(f"tfds left no {required} in {version_dir}")
    atomic.write_json(version_dir / MANIFEST_NAME, {"files": files}, indent=2, sort_keys=True)


def cache_problem(version_dir: Path) -> str | None:
    """Why ``version_dir`` is not a complete cache, or None if every file checks out."""
    if not version_dir.is_dir():
        return "missing"
    try:
        expected = json.loads((version_dir / MANIFEST_NAME).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return f"no readable {MANIFEST_NAME} (interrupted preparation?)"
    try:
        names = {p.name for p in version_dir.iterdir() if p.name != MANIFEST_NAME}
        missing = sorted(set(expected) - names)
        if missing:
            return f"{missing[0]} is missing"
        for name, meta in sorted(expected.items()):
            size = (version_dir / name).stat().st_size
            if size != meta["size"]:
                return f"{name} has {size} bytes, expected {meta['size']}"
            if _sha256(version_dir / name) != meta["sha256"]:
                return f"{name} does not match its checksum"
    except OSError as e:  # e.g. another process is swapping in a repaired copy
        return f"unreadable: {e}"
    return None


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare(spec: BundledSpec, data_dir: str) -> None:
    """Generates ``spec`` privately and renames it into place. Caller holds the lock."""
    work = Path(data_dir, ".diffjax", "incomplete")
    work.mkdir(parents=True, exist_ok=True)
    # Holding the lock, any leftover work dir of this data set is from a dead process.
    for stale in work.glob(spec.key + ".*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=spec.key + ".", dir=work))
    final = spec.version_dir(data_dir)
    logging.info("diffjax: generating bundled data %s into %s (nothing is downloaded)",
                 spec.key, final)
    try:
        builder = spec.builder_cls(
            data_dir=str(tmp_root), config=spec.config, file_format="array_record")
        builder.download_and_prepare(download_dir=str(tmp_root / "downloads"))
        built = spec.version_dir(str(tmp_root))
        _write_manifest(built)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            # Move the broken cache out of the way in one rename so that no reader sees
            # a half-deleted directory.
            final.rename(tmp_root / "broken")
        built.rename(final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def ensure_prepared(name: str, data_dir: str | None = None) -> str:
    """Prepares bundled data set ``name`` unless a verified cache exists; returns data_dir.

    Safe to call from several processes at once on the same ``data_dir``.
    """
    spec = SPECS[name]
    data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    version_dir = spec.version_dir(data_dir)
    # A verified cache is never modified in place, so checking it needs no lock; that
    # also lets a read-only, already prepared data_dir work.
    if cache_problem(version_dir) is None:
        return data_dir
    with _exclusive_lock(Path(data_dir, ".diffjax", "locks", spec.key + ".lock")):
        problem = cache_problem(version_dir)
        if problem is not None:
            if problem != "missing":
                warnings.warn(
                    f"diffjax: bundled data cache {version_dir} is corrupt or incomplete "
                    f"({problem}); rebuilding it.", CacheRebuiltWarning, stacklevel=2)
            _prepare(spec, data_dir)
    return data_dir


def _builder(spec: BundledSpec, data_dir: str) -> tfds.core.DatasetBuilder:
    return spec.builder_cls(data_dir=data_dir, config=spec.config, file_format="array_record")


def bundled_data_source(name: str, split: str, data_dir: str | None = None):
    """The tfds random-access source of a bundled split, preparing the cache if needed."""
    data_dir = ensure_prepared(name, data_dir)
    return _builder(SPECS[name], data_dir).as_data_source(split=split)


_ARRAYS: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}


def bundled_arrays(name: str, split: str,
                   data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A bundled split in memory, as stored: ``(x [N, *shape], label int32 [N])``.

    ``x`` is uint8 for digits and float32 for the toy sets. The arrays are read-only and
    shared: each split is decoded once per process (decoding tf.Examples costs ~35 us a
    record, reading these arrays nothing), keyed by the manifest, so a rebuilt cache is
    read afresh.
    """
    spec = SPECS[name]
    data_dir = ensure_prepared(name, data_dir)
    version_dir = spec.version_dir(data_dir)
    key = (str(version_dir), split, (version_dir / MANIFEST_NAME).read_text())
    if key not in _ARRAYS:
        source = _builder(spec, data_dir).as_data_source(split=split)
        records = source.__getitems__(list(range(len(source))))
        x = np.stack([r[spec.x_key] for r in records])
        label = np.asarray([r.get("label", 0) for r in records], np.int32)  # shapes: none
        for array in (x, label):
            array.setflags(write=False)
        _ARRAYS[key] = (x, label)
    return _ARRAYS[key]

