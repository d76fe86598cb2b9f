"""Latents encoded once per data set (``config.latent.cache = True``).

A latent run encodes each batch inside the jitted step by default: nothing is stored, and any
augmentation reaches the encoder. With ``config.latent.cache`` the frozen encoder instead runs
once over the training split, and the run reads the stored posterior moments
``(mean, logvar)`` of every record (plus those of its mirror image when
``config.data.random_flip`` is set; the latents of a flipped image are not the flipped
latents) as DiT's and fast-DiT's ImageNet pipelines do (Peebles & Xie 2023). The step then
draws ``z = mean + exp(logvar / 2) * eps`` with the same ``eps`` the encoding step draws, and
the records come in the same order with the same flips (the source keeps the data's repr,
the flip the same random stream), so a cached run is the encoding run up to the encoder's
float rounding; on a CPU it skips the encoder's forward pass in every step.

The cache is a folder ``latents_<dataset>_<split>_<key>`` in ``config.latent.cache_dir``
(default ``~/.cache/diffjax/latents``): ``.npy`` arrays read memory-mapped, and
``meta.json``. ``<key>`` digests the data (name, split, size, records, image size, flips) and
the autoencoder's weights and config, so a changed autoencoder or data set never reads stale
latents. It is written to a temporary folder and renamed: an interrupted or concurrent build
leaves no half-written cache. Each process that lacks it builds it (the whole split).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from diffjax import atomic, xla_options
from diffjax.autoencoder import spec
from diffjax.autoencoder.model import AutoencoderKL

FORMAT = 1
DEFAULT_DIR = "~/.cache/diffjax/latents"
_ARRAYS = ("mean", "logvar")


def enabled(config) -> bool:
    """``config.latent.cache`` on a latent run."""
    group = config.get("latent") or spec.latent_config()
    return bool(group.get("cache", False)) and spec.latent_dir(config) is not None


def cache_dir(config) -> str:
    group = config.get("latent") or spec.latent_config()
    return os.path.expanduser(group.get("cache_dir") or DEFAULT_DIR)


class LatentRecords:
    """Random access to a split's cached latents as records ``{"x", "x_logvar", "label"}``
    (with ``"x_flip"``/``"x_logvar_flip"`` when flips were encoded); ``x`` is the posterior
    mean. Same repr as the data's own source, so a grain checkpoint resumes either way. An
    int array index reads those records stacked (:mod:`diffjax.data.batches`)."""

    reads_batches = True

    def __init__(self, folder: str, source_repr: str):
        self.folder, self._repr = folder, source_repr
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            self.meta = json.load(f)
        load = lambda name: np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")  # noqa: E731
        self._label = load("label")
        self._arrays = {name: load(name) for name in _ARRAYS}
        self.flips = bool(self.meta["flips"])
        if self.flips:
            self._arrays.update({f"{n}_flip": load(f"{n}_flip") for n in _ARRAYS})

    def __len__(self) -> int:
        return len(self._label)

    def __getitem__(self, index: int) -> dict:
        a = self._arrays
        record = {"x": np.asarray(a["mean"][index]), "x_logvar": np.asarray(a["logvar"][index]),
                  "label": np.int32(self._label[index])}
        if self.flips:
            record.update(x_flip=np.asarray(a["mean_flip"][index]),
                          x_logvar_flip=np.asarray(a["logvar_flip"][index]))
        return record

    def __repr__(self) -> str:
        return self._repr


def _key(config, split: str, num_records: int, identity: dict) -> str:
    data = config.data
    blob = json.dumps({
        "format": FORMAT, "dataset": str(data.dataset), "split": split,
        "num_records": int(num_records), "image_size": data.get("image_size"),
        "flips": bool(data.get("random_flip", False)),
        "autoencoder": [identity.get("params_sha256"), identity.get("config_sha256")],
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _encoder(module: AutoencoderKL):
    @xla_options.jit
    def moments(params, pixels):
        mean, logvar = module.apply({"params": params}, pixels, method=AutoencoderKL.encode)
        return mean.astype(jnp.float32), logvar.astype(jnp.float32)

    return moments


def _encode_split(source, module: AutoencoderKL, params: Any, flips: bool,
                  batch_size: int, folder: str) -> None:
    """Writes mean/logvar (and their _flip twins) of every record of ``source`` as .npy."""
    from diffjax.data import to_float

    moments = _encoder(module)
    n = len(source)
    files: dict[str, np.ndarray] = {}
    labels = np.zeros((n,), np.int32)
    for start in range(0, n, batch_size):
        records = [source[i] for i in range(start, min(n, start + batch_size))]
        pixels = to_float(np.stack([r["x"] for r in records]))
        labels[start:start + len(records)] = [int(r["label"]) for r in records]
        pad = batch_size - len(records)  # one shape: one compilation
        padded = np.concatenate([pixels, np.zeros((pad, *pixels.shape[1:]), pixels.dtype)])
        views = {"": padded}
        if flips:
            views["_flip"] = np.ascontiguousarray(padded[:, :, ::-1])
        for suffix, x in views.items():
            mean, logvar = (np.asarray(a)[:len(records)] for a in moments(params, x))
            for name, value in (("mean", mean), ("logvar", logvar)):
                name = name + suffix
                if name not in files:
                    files[name] = np.lib.format.open_memmap(
                        os.path.join(folder, f"{name}.npy"), mode="w+", dtype=np.float32,
                        shape=(n, *value.shape[1:]))
                files[name][start:start + len(records)] = value
    for array in files.values():
        array.flush()
    np.save(os.path.join(folder, "label.npy"), labels)


def records(config, reference, split: str = "train",
            batch_size: int = 256) -> Optional[LatentRecords]:
    """The cached latents of ``split`` (built now if missing), or None without
    ``config.latent.cache``. ``reference``: the loaded ``latent.autoencoder``."""
    if not enabled(config):
        return None
    from diffjax import data as data_lib
    from diffjax.autoencoder.latent import latents_of

    data = config.data
    source = data_lib.open_source(data.dataset, split, data.get("data_dir"),
                                  data.get("image_size"))
    key = _key(config, split, len(source), reference.identity)
    root = cache_dir(config)
    folder = os.path.join(root, f"latents_{data.dataset}_{split.replace('/', '_')}_{key}")
    done = lambda: os.path.isfile(os.path.join(folder, "meta.json"))  # noqa: E731
    if not done():
        with atomic.publishing_dir(folder, prefix=".building_", complete=done) as tmp:
            flips = bool(data.get("random_flip", False))
            module = latents_of(reference, config).module
            print(f"latent cache: encoding {len(source)} records of {data.dataset} {split}"
                  f"{' and their mirror images' if flips else ''} into {folder}", flush=True)
            _encode_split(source, module, reference.params, flips, batch_size, tmp)
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "dataset": str(data.dataset), "split": split,
                           "num_records": len(source), "flips": flips,
                           "image_size": data.get("image_size"),
                           "autoencoder": reference.identity}, f, indent=1, default=str)
    return LatentRecords(folder, repr(source))
