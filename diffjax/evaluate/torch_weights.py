"""Reads a PyTorch ``state_dict`` file (``torch.save``) into numpy arrays, without PyTorch.

Two container formats exist, both pickles whose tensors point at raw storages by a
persistent id:

* the zip format (``torch.save`` since PyTorch 1.6): ``<root>/data.pkl`` is the pickle,
  ``<root>/data/<key>`` holds each storage's raw bytes, ``<root>/byteorder`` their order;
* the legacy format (before 1.6, and ``_use_new_zipfile_serialization=False``): five pickles
  in a row (magic number, protocol version, system info, the object, the storage keys),
  then every storage as an int64 element count followed by its bytes, in key order.

Only what a state dict needs is rebuilt: ``OrderedDict``, tensors
(``torch._utils._rebuild_tensor_v2`` over a typed storage) and parameters. Any other global
in the pickle is refused by name, so loading a weights file never runs code from it.
"""
from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np

__all__ = ["read_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _bfloat16() -> np.dtype:
    import ml_dtypes  # Shipped with JAX; numpy itself has no bfloat16.
    return np.dtype(ml_dtypes.bfloat16)


# torch's storage class name -> numpy dtype (a callable for the ones numpy lacks).
_STORAGE_DTYPES: dict[str, np.dtype | Callable[[], np.dtype]] = {
    "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": _bfloat16,
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}


class _StorageType:
    """Stands in for ``torch.<Name>Storage`` in the pickle: carries the element dtype."""

    def __init__(self, name: str):
        spec = _STORAGE_DTYPES[name]
        self.name = name
        self.dtype = spec if isinstance(spec, np.dtype) else spec()


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *_unused: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a strided view of a 1-D storage.

    A view, not a copy: a legacy file's storages are filled only after the pickle is read.
    """
    size, stride = tuple(size), tuple(stride)
    if size and any(n == 0 for n in size):
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= storage.shape[0] or min(stride, default=0) < 0:
        raise ValueError(f"tensor of size {size}, stride {stride} at offset {offset} lies "
                         f"outside its storage of {storage.shape[0]} elements")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * item for s in stride))
    return view


def _rebuild_parameter(data: np.ndarray, *_unused: Any) -> np.ndarray:
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    return collections.OrderedDict(*args)


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the globals above; storages come from ``load_storage``."""

    def __init__(self, file: BinaryIO, load_storage: Callable[..., np.ndarray]):
        super().__init__(file, encoding="latin1")
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"{module}.{name} is not part of a tensor state dict; refusing to load it "
            "(only OrderedDicts of tensors are read)")

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r} in a state dict")
        return self._load_storage(*pid[1:])


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path}: a torch zip archive holds one data.pkl, found {pickles}")
        root = pickles[0][:-len("data.pkl")]
        order = "little"
        if f"{root}byteorder" in names:
            order = archive.read(f"{root}byteorder").decode("ascii").strip()
        cache: dict[str, np.ndarray] = {}

        def load_storage(storage_type: _StorageType, key: str, _location: Any,
                         numel: int) -> np.ndarray:
            if key not in cache:
                dtype = storage_type.dtype.newbyteorder("<" if order == "little" else ">")
                raw = archive.read(f"{root}data/{key}")
                cache[key] = np.frombuffer(raw, dtype, count=numel).astype(
                    storage_type.dtype)
            return cache[key]

        with archive.open(pickles[0]) as f:
            return _Unpickler(f, load_storage).load()


def _plain(f: BinaryIO) -> Any:
    """One pickle that may hold no globals and no storages (the legacy headers)."""
    def no_storage(*_args: Any) -> np.ndarray:
        raise pickle.UnpicklingError("a storage outside the state dict's pickle")
    return _Unpickler(f, no_storage).load()


def _read_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        try:
            magic, protocol = _plain(f), _plain(f)
        except Exception:  # Any byte string can come here: say what was expected.
            magic = protocol = None
        if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"{path} is neither a torch zip archive nor a legacy torch file")
        sys_info = _plain(f)
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        storages: dict[str, np.ndarray] = {}

        def load_storage(storage_type: _StorageType, key: str, _location: Any, numel: int,
                         view: tuple[str, int, int] | None = None) -> np.ndarray:
            # The bytes follow the pickle: hand out a placeholder, filled in below.
            if key not in storages:
                storages[key] = np.empty(numel, storage_type.dtype)
            whole = storages[key]
            if view is None:
                return whole
            _, start, length = view
            return whole[start:start + length]

        obj = _Unpickler(f, load_storage).load()
        for key in _plain(f):
            array = storages[key]
            (numel,) = np.frombuffer(f.read(8), "<i8" if little else ">i8")
            dtype = array.dtype.newbyteorder("<" if little else ">")
            data = np.frombuffer(f.read(int(numel) * dtype.itemsize), dtype)
            if data.shape[0] != array.shape[0]:
                raise ValueError(f"{path}: storage {key} is truncated")
            array[:] = data
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a ``torch.save``d state dict, as ``{name: numpy array}``.

    Raises:
      ValueError: the file is not a torch state dict (or is truncated).
      pickle.UnpicklingError: the pickle names something other than tensors.
    """
    path = str(path)
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {str(k): np.array(v) for k, v in obj.items() if isinstance(v, np.ndarray)}
