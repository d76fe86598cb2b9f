"""The FID Inception-v3 network in Flax Linen: images -> 2048-d pool3 features.

This is the Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception architecture")
graph of the 2015-12-05 TensorFlow release that FID is defined on (Heusel et al. 2017,
TTUR), as ported to PyTorch by pytorch-fid. It differs from torchvision's Inception-v3 in
two places: the average pools inside the Inception blocks ignore padding
(``count_include_pad=False``), and the branch pool of the last block is a 3x3 *max* pool.

Weights are never downloaded. They come from a local file named by
``config.eval.inception_weights``: either pytorch-fid's own state dict
(``pt_inception-2015-12-05-6726825d.pth``, the ``fid_weights`` release of
github.com/mseitzer/pytorch-fid), read without PyTorch by `torch_weights.read_state_dict`,
or an ``.npz`` of the same arrays under the same names, in PyTorch layout, for example::

    Conv2d_1a_3x3.conv.weight          [32, 3, 3, 3]      conv kernel [O, I, kh, kw]
    Conv2d_1a_3x3.bn.weight            [32]               batch-norm scale
    Conv2d_1a_3x3.bn.bias              [32]               batch-norm offset
    Conv2d_1a_3x3.bn.running_mean      [32]
    Conv2d_1a_3x3.bn.running_var       [32]
    Mixed_5b.branch5x5_2.conv.weight   [64, 48, 5, 5]
    ...                                (94 conv layers; `expected_weight_shapes()` lists all)

Other keys in the file (``fc.*``, ``*.num_batches_tracked``) are ignored.
``experiments/benchmarks/fid_inception_vs_pytorch.py`` checks that this network, loaded from
a ``.pth`` file, gives pytorch-fid's features to float tolerance.

Inputs are ``[N, H, W, C]``, either ``uint8`` in ``[0, 255]`` (what FID is defined on:
saved images; `quantize` makes them from model samples) or floats in ``[-1, 1]`` (the range
the network was trained on), with ``C`` 1 or 3; 1-channel images are tiled to 3 (as
pytorch-fid's RGB conversion) and every image is resized to 299x299 with bilinear
interpolation (half-pixel centres, no antialiasing, as PyTorch's
``interpolate(..., align_corners=False)``).
"""
from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffjax import atomic
from diffjax.evaluate import frechet, torch_weights

__all__ = ["FEATURE_DIM", "InceptionFeatures", "InceptionV3", "MissingInceptionWeights",
           "check_weights_path", "expected_weight_shapes", "load_inception", "quantize",
           "read_weights"]

FEATURE_DIM = 2048
INPUT_SIZE = 299
CONFIG_KEY = "config.eval.inception_weights"

_HOW_TO = (
    f"Set {CONFIG_KEY} to a local copy of the FID Inception-v3 weights (nothing is "
    "downloaded): pt_inception-2015-12-05-6726825d.pth from the 'fid_weights' release of "
    "github.com/mseitzer/pytorch-fid (read as is, PyTorch is not needed), or an .npz of "
    "the same arrays under the same names. See diffjax/evaluate/inception.py.")


class MissingInceptionWeights(FileNotFoundError):
    """Raised when the FID Inception weights file is unset or absent."""


class BasicConv(nn.Module):
    """Convolution without bias, inference batch norm (eps 1e-3), ReLU."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad_h, pad_w = self.padding
        x = nn.Conv(self.features, self.kernel, strides=self.strides,
                    padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """``max_pool``: the FID graph's last block pools with max, not average (see module doc)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def network_input(x: jax.Array) -> jax.Array:
    """``[N, H, W, C in {1, 3}] -> [N, 299, 299, 3]``: RGB, bilinear resize as pytorch-fid's."""
    if x.shape[-1] == 1:
        x = jnp.tile(x, (1, 1, 1, 3))
    elif x.shape[-1] != 3:
        raise ValueError(f"Inception expects 1 or 3 channels, got shape {x.shape}")
    return jax.image.resize(x.astype(jnp.float32), (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3),
                            method="bilinear", antialias=False)


class InceptionV3(nn.Module):
    """``__call__(x: [N, H, W, C] in [-1, 1], C in {1, 3}) -> [N, 2048]`` pool3 features."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = network_input(x)
        x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


# Flax leaf -> (PyTorch suffix, whether the array is a conv kernel to transpose).
_LEAF_TO_TORCH = {
    ("params", "conv", "kernel"): ("conv.weight", True),
    ("params", "bn", "scale"): ("bn.weight", False),
    ("params", "bn", "bias"): ("bn.bias", False),
    ("batch_stats", "bn", "mean"): ("bn.running_mean", False),
    ("batch_stats", "bn", "var"): ("bn.running_var", False),
}


@functools.lru_cache(maxsize=None)
def _variable_table() -> dict[tuple[str, ...], tuple[str, bool, tuple[int, ...]]]:
    """Flax variable path -> (PyTorch state-dict name, is_conv_kernel, Flax shape)."""
    shapes = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                            jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
    table = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        suffix, is_kernel = _LEAF_TO_TORCH[(path[0], path[-2], path[-1])]
        table[path] = (".".join(path[1:-2] + (suffix,)), is_kernel, tuple(leaf.shape))
    return table


def expected_weight_shapes() -> dict[str, tuple[int, ...]]:
    """Every array the weights ``.npz`` must hold: name -> shape, in PyTorch layout."""
    out = {}
    for name, is_kernel, shape in _variable_table().values():
        # Flax kernels are [kh, kw, I, O]; PyTorch's are [O, I, kh, kw].
        out[name] = (shape[3], shape[2], shape[0], shape[1]) if is_kernel else shape
    return out


def check_weights_path(path: str | os.PathLike | None) -> str:
    """Returns ``path`` as a string; raises `MissingInceptionWeights` if unset or absent."""
    if path is None or str(path) == "":
        raise MissingInceptionWeights(f"No Inception weights given. {_HOW_TO}")
    if not os.path.isfile(path):
        raise MissingInceptionWeights(f"Inception weights file {str(path)!r} does not exist. "
                                      f"{_HOW_TO}")
    return str(path)


def read_weights(path: str) -> dict[str, np.ndarray]:
    """``{name: array}`` of a ``.pth`` state dict (zip or legacy format) or an ``.npz``.

    Told apart by content, not by name: an ``.npz`` is a zip of ``.npy`` members only.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_npz = all(name.endswith(".npy") for name in archive.namelist())
        if is_npz:
            with np.load(path) as npz:
                return {name: npz[name] for name in npz.files}
    return torch_weights.read_state_dict(path)


def _load_variables(path: str) -> dict[str, Any]:
    arrays = read_weights(path)
    flat, missing, wrong = {}, [], []
    for var_path, (name, is_kernel, shape) in _variable_table().items():
        if name not in arrays:
            missing.append(name)
            continue
        array = np.asarray(arrays[name], dtype=np.float32)
        if is_kernel and array.ndim == 4:
            array = array.transpose(2, 3, 1, 0)
        if array.shape != shape:
            wrong.append(f"{name}: {array.shape}")
            continue
        flat[var_path] = jnp.asarray(array)
    if missing or wrong:
        raise ValueError(
            f"{path} is not a FID Inception-v3 weights file: {len(missing)} arrays missing "
            f"(e.g. {missing[:3]}), {len(wrong)} of the wrong shape (e.g. {wrong[:3]}). "
            f"{_HOW_TO}")
    return traverse_util.unflatten_dict(flat)


def quantize(x: np.ndarray) -> np.ndarray:
    """Images in ``[-1, 1]`` -> ``uint8`` as a saved PNG holds them, any shape.

    Clipped, then rounded to the nearest of the 256 levels (``floor(127.5 x + 128)``, as
    torchvision's ``save_image`` and EDM's ``generate.py`` write images). Non-finite values
    stay a caller's concern: they have no uint8 image.
    """
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    return np.floor(x * 127.5 + 128.0).clip(0, 255).astype(np.uint8)


@jax.jit
def _forward(variables: Any, x: jax.Array) -> jax.Array:
    return InceptionV3().apply(variables, x)


class InceptionFeatures:
    """Pool3 feature extractor with its weights loaded; see `load_inception`."""

    def __init__(self, variables: Any, path: str):
        self.variables = variables
        self.path = path

    def __call__(self, x: np.ndarray, *, batch_size: int = 50) -> np.ndarray:
        """``x: [N, H, W, C]``, uint8 or floats in ``[-1, 1]`` -> ``[N, 2048]`` float32.

        Uint8 images map to ``u / 127.5 - 1``, the range pytorch-fid gives the network.
        """
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"expected images [N, H, W, C], got shape {x.shape}")
        batch_size = max(1, min(batch_size, x.shape[0]))
        out = []
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size]
            chunk = (chunk.astype(np.float32) / 127.5 - 1.0 if chunk.dtype == np.uint8
                     else chunk.astype(np.float32))
            # Pad the last chunk so that every call has one shape and compiles once.
            pad = batch_size - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(_forward(self.variables, chunk))[:batch_size - pad])
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


def load_inception(path: str | os.PathLike | None) -> InceptionFeatures:
    """Loads the FID Inception-v3 from a local ``.pth`` or ``.npz``; see the module docstring.

    Raises:
      MissingInceptionWeights: ``path`` is unset or no such file exists.
      ValueError: the file lacks some expected arrays or has wrong shapes.
    """
    path = check_weights_path(path)
    return InceptionFeatures(_load_variables(path), path)


def file_digest(path: str) -> str:
    """The first 16 hex digits of the SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def reference_stats(extractor: InceptionFeatures, cache_dir: str, tag: str,
                    images: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Inception ``(mu, cov)`` of the reference ``images()``, quantised like the samples.

    Cached as ``inception_stats_<tag>_<file_digest(weights)>.npz`` (``tag``: data set, image
    size, split), so a changed weights file is never scored against stale statistics; written
    to a temporary file and renamed, so a concurrent reader never sees half a file.
    """
    path = os.path.join(cache_dir, f"inception_stats_{tag}_{file_digest(extractor.path)}.npz")
    if not os.path.isfile(path):
        mu, cov = frechet.gaussian_stats(extractor(quantize(images())))
        os.makedirs(cache_dir, exist_ok=True)
        atomic.write_npz(path, mu=mu, cov=cov)
    with np.load(path) as stats:
        return stats["mu"], stats["cov"]
