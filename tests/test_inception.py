"""The FID Inception's loading path and the FID protocol, without PyTorch.

The weights files are written here byte by byte from the documented layout of
``torch.save`` (zip and legacy containers, the pickle opcodes of a state dict), so the
reader is judged by a second, independent implementation of the format. Feature equality
with pytorch-fid's own network is the job of
``experiments/benchmarks/fid_inception_vs_pytorch.py`` (it needs PyTorch).
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from diffjax import evaluate
from diffjax.data import load_arrays
from diffjax.evaluate import inception, torch_weights

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
            np.dtype(np.int64): "LongStorage", np.dtype(np.float64): "DoubleStorage"}


def _unicode(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int_tuple(values) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"


def _state_pickle(tensors: dict, legacy: bool) -> bytes:
    """Protocol-2 pickle of an OrderedDict of ``_rebuild_tensor_v2`` calls.

    ``tensors``: name -> (storage key, storage array, offset, size, stride).
    """
    out = [b"\x80\x02ccollections\nOrderedDict\n)R("]
    for name, (key, storage, offset, size, stride) in tensors.items():
        pid = (b"(" + _unicode("storage") + f"ctorch\n{_STORAGE[storage.dtype]}\n".encode()
               + _unicode(key) + _unicode("cpu") + b"J" + struct.pack("<i", storage.size)
               + (b"N" if legacy else b"") + b"tQ")
        out.append(_unicode(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid
                   + b"J" + struct.pack("<i", offset) + _int_tuple(size) + _int_tuple(stride)
                   + b"\x89ccollections\nOrderedDict\n)RtR")
    out.append(b"u.")
    return b"".join(out)


def write_torch_file(path, tensors: dict, legacy: bool = False) -> None:
    """Writes ``tensors`` (see `_state_pickle`) as ``torch.save`` would, without torch."""
    storages = {key: storage for key, storage, *_ in tensors.values()}
    if legacy:
        with open(path, "wb") as f:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001,
                                                          "little_endian": True}):
                f.write(pickle.dumps(header, protocol=2))
            f.write(_state_pickle(tensors, legacy=True))
            f.write(pickle.dumps(list(storages), protocol=2))
            for storage in storages.values():
                f.write(struct.pack("<q", storage.size) + storage.astype(
                    storage.dtype.newbyteorder("<")).tobytes())
        return
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _state_pickle(tensors, legacy=False))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, storage in storages.items():
            archive.writestr(f"archive/data/{key}", storage.astype("<" + storage.dtype.str[1:])
                             .tobytes())


def contiguous(arrays: dict[str, np.ndarray]) -> dict:
    """One storage per array, C order, as a state dict of fresh tensors is saved."""
    out = {}
    for i, (name, a) in enumerate(arrays.items()):
        a = np.ascontiguousarray(a)
        stride = tuple(s // a.itemsize for s in a.strides)
        out[name] = (str(i), a.reshape(-1), 0, a.shape, stride)
    return out


@pytest.mark.parametrize("legacy", [False, True])
def test_state_dict_reader_rebuilds_strided_tensors_of_either_format(tmp_path, legacy):
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(12).astype(np.float32)
    tensors = {
        "conv.weight": ("0", shared, 0, (3, 4), (4, 1)),
        "transposed": ("0", shared, 0, (4, 3), (1, 4)),  # a .t() view of the same storage
        "tail": ("0", shared, 5, (7,), (1,)),            # a slice at an offset
        "half": ("1", np.arange(6, dtype=np.float16), 0, (2, 3), (3, 1)),
        "bn.num_batches_tracked": ("2", np.array([7], np.int64), 0, (), ()),
    }
    path = tmp_path / "weights.pth"
    write_torch_file(path, tensors, legacy=legacy)
    out = torch_weights.read_state_dict(path)
    assert sorted(out) == sorted(tensors)
    np.testing.assert_array_equal(out["conv.weight"], shared.reshape(3, 4))
    np.testing.assert_array_equal(out["transposed"], shared.reshape(3, 4).T)
    np.testing.assert_array_equal(out["tail"], shared[5:])
    np.testing.assert_array_equal(out["half"], np.arange(6, dtype=np.float16).reshape(2, 3))
    assert out["half"].dtype == np.float16
    assert out["bn.num_batches_tracked"].shape == () and out["bn.num_batches_tracked"] == 7


def test_state_dict_reader_refuses_a_pickle_that_names_other_code(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"x": io.BytesIO}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="_io.BytesIO is not part of"):
        torch_weights.read_state_dict(path)
    path.write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match="neither a torch zip archive nor a legacy"):
        evaluate.load_inception(path)


def _random_bn_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Zero conv kernels, random batch norms: every BasicConv outputs the constant
    ``relu(beta - mean * gamma / sqrt(var + 1e-3))`` per channel, whatever its input."""
    weights = {}
    for name, shape in evaluate.expected_weight_shapes().items():
        if name.endswith("conv.weight"):
            weights[name] = np.zeros(shape, np.float32)
        elif name.endswith("running_var"):
            weights[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            weights[name] = rng.standard_normal(shape).astype(np.float32)
    return weights


def _expected_pool3(weights: dict[str, np.ndarray]) -> np.ndarray:
    """pytorch-fid's FIDInceptionE_2 concatenates [1x1, 3x3 (2a, 2b), 3x3dbl (3a, 3b), pool]."""
    parts = []
    for branch in ("branch1x1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_3a",
                   "branch3x3dbl_3b", "branch_pool"):
        bn = {k: weights[f"Mixed_7c.{branch}.bn.{k}"]
              for k in ("weight", "bias", "running_mean", "running_var")}
        parts.append(np.maximum(bn["bias"] - bn["running_mean"] * bn["weight"]
                                / np.sqrt(bn["running_var"] + 1e-3), 0.0))
    return np.concatenate(parts)


# (name, out channels, kernel, stride, padding): a strided square kernel and a 1x7 one.
_LAYOUT_LAYERS = (("Conv2d_1a_3x3", 32, (3, 3), 2, (0, 0)),
                  ("Mixed_6b.branch7x7_2", 128, (1, 7), 1, (0, 3)))


def _check_conv_layout(variables, weights, name, features, kernel, stride, padding):
    """The loaded layer against PyTorch's conv2d written out: out[o, y, x] =
    sum_{i, a, b} in[i, s y + a - p_h, s x + b - p_w] w[o, i, a, b], then BN and ReLU."""
    w = weights[f"{name}.conv.weight"].astype(np.float64)
    bn = {k: weights[f"{name}.bn.{k}"] for k in ("weight", "bias", "running_mean",
                                                  "running_var")}
    x = np.random.default_rng(5).standard_normal((1, 9, 11, w.shape[1])).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
    kh, kw = kernel
    out_h, out_w = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    conv = np.zeros((1, out_h, out_w, w.shape[0]))
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, a:a + stride * (out_h - 1) + 1:stride,
                       b:b + stride * (out_w - 1) + 1:stride]
            conv += patch @ w[:, :, a, b].T
    expected = np.maximum((conv - bn["running_mean"]) * bn["weight"]
                          / np.sqrt(bn["running_var"] + 1e-3) + bn["bias"], 0.0)
    sub = {col: variables[col] for col in ("params", "batch_stats")}
    for part in name.split("."):
        sub = {col: tree[part] for col, tree in sub.items()}
    got = inception.BasicConv(features, kernel, strides=stride, padding=padding).apply(sub, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_inception_from_a_pth_file_gives_the_closed_form_pool3_features(tmp_path):
    rng = np.random.default_rng(1)
    weights = _random_bn_weights(rng)
    expected = _expected_pool3(weights)
    assert expected.shape == (inception.FEATURE_DIM,) and np.mean(expected > 0) > 0.3
    # Earlier layers do not reach the closed form (Mixed_7c's kernels are zero): give two a
    # random kernel, to check the kernel layout below.
    for layer in _LAYOUT_LAYERS:
        name = f"{layer[0]}.conv.weight"
        weights[name] = rng.standard_normal(weights[name].shape).astype(np.float32)
    state = {**weights, "fc.weight": np.zeros((1008, 2048), np.float32),  # in the real file
             "Mixed_7c.branch_pool.bn.num_batches_tracked": np.array(0, np.int64)}
    path = tmp_path / "pt_inception-2015-12-05-random.pth"
    write_torch_file(path, contiguous(state))
    images = rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    extractor = evaluate.load_inception(path)
    features = extractor(images)
    np.testing.assert_allclose(features, np.stack([expected, expected]), rtol=1e-5, atol=1e-5)

    for layer in _LAYOUT_LAYERS:
        _check_conv_layout(extractor.variables, weights, *layer)

    npz = tmp_path / "weights.npz"  # the same arrays as an .npz load identically
    np.savez(npz, **weights)
    np.testing.assert_array_equal(evaluate.load_inception(npz)(images), features)

    del state["Mixed_7c.branch_pool.conv.weight"]
    write_torch_file(path, contiguous(state))
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.conv.weight"):
        evaluate.load_inception(path)
    path.unlink()  # ~95 MB each; pytest keeps the last runs' temporary directories
    npz.unlink()


def test_inception_missing_weights_error_says_how_to_provide_them(tmp_path):
    missing = str(tmp_path / "nope.pth")
    for path in (None, missing):
        with pytest.raises(evaluate.MissingInceptionWeights,
                           match=r"config\.eval\.inception_weights.*pt_inception"):
            evaluate.load_inception(path)
    with pytest.raises(evaluate.MissingInceptionWeights, match="does not exist"):
        evaluate.validate(["fid_inception"], "image", inception_weights=missing)


def test_average_pool_ignores_padding_as_the_fid_graph_does():
    x = np.random.default_rng(2).standard_normal((1, 5, 6, 2)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ones = np.pad(np.ones_like(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    window = lambda a: sum(a[:, i:i + 5, j:j + 6] for i in range(3) for j in range(3))
    np.testing.assert_allclose(inception._avg_pool_3x3(x), window(padded) / window(ones),
                               rtol=1e-6)


def _torch_bilinear_1d(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of PyTorch's ``interpolate(mode="bilinear",
    align_corners=False)`` along one axis: source ``max(0, (j + 0.5) n_in / n_out - 0.5)``."""
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1.0 - (src - lo))
    np.add.at(m, (np.arange(n_out), hi), src - lo)
    return m


@pytest.mark.parametrize("size", [(8, 8), (420, 350)])
def test_network_input_is_pytorch_bilinear_resize_of_rgb(size):
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, (1, *size, 1)).astype(np.float32)
    rows, cols = (_torch_bilinear_1d(n, inception.INPUT_SIZE) for n in size)
    expected = np.einsum("yh,hw,xw->yx", rows, x[0, :, :, 0].astype(np.float64), cols)
    got = np.asarray(inception.network_input(x))
    assert got.shape == (1, 299, 299, 3)
    for c in range(3):
        # Source positions up to ~420 in float32 are off by ~3e-5 pixel: that, not the rule.
        np.testing.assert_allclose(got[0, :, :, c], expected, atol=1e-4)


# --------------------------------------------------------------------------- FID protocol

def test_quantize_rounds_to_the_8bit_levels_a_saved_png_holds():
    levels = np.arange(256)
    np.testing.assert_array_equal(inception.quantize(levels / 127.5 - 1.0), levels)
    x = np.random.default_rng(3).uniform(-1.5, 1.5, 10_000)
    # torchvision.utils.save_image: (x + 1) / 2 * 255 + 0.5, clamped, truncated.
    png = np.clip(((x + 1.0) / 2.0) * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    np.testing.assert_array_equal(inception.quantize(x), png)


class _PixelFeatures:
    """Stands in for Inception: the pixels as features; records what it was given."""

    def __init__(self, path: str):
        self.path = path
        self.dtypes: list[np.dtype] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.dtypes.append(x.dtype)
        return x.reshape(x.shape[0], -1).astype(np.float64)


def test_fid_is_against_the_whole_train_split_on_quantised_images(tmp_path, monkeypatch):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"first weights")
    loaded = []

    def fake_load(path):
        loaded.append(_PixelFeatures(str(path)))
        return loaded[-1]

    monkeypatch.setattr(inception, "load_inception", fake_load)
    train, _ = load_arrays("digits", "train")
    cache = str(tmp_path / "cache")

    def fid(x):
        return evaluate.evaluate_samples(x, metrics=["fid_inception"], dataset="digits",
                                         cache_dir=cache, inception_weights=str(weights)
                                         )["fid_inception"]

    # The train split itself is at distance 0 only if it is the reference.
    assert fid(train) == pytest.approx(0.0, abs=1e-6)
    assert all(d == np.uint8 for f in loaded for d in f.dtypes)
    # Values within half a level of an 8-bit level, and values beyond [-1, 1], are what
    # their saved PNG would be: the same images.
    levels = inception.quantize(train) / np.float32(127.5) - 1.0
    jitter = np.random.default_rng(4).uniform(-0.45, 0.45, train.shape) / 127.5
    beyond = np.where(levels >= 1.0, 3.0, np.where(levels <= -1.0, -3.0, levels))
    assert fid((levels + jitter).astype(np.float32)) == pytest.approx(0.0, abs=1e-6)
    assert fid(beyond.astype(np.float32)) == pytest.approx(0.0, abs=1e-6)
    test, _ = load_arrays("digits", "test")
    assert fid(test) > 1.0
    name = f"inception_stats_digits_train_{inception.file_digest(str(weights))}.npz"
    assert any(n == name for n in os.listdir(cache))


def test_fid_statistics_are_cached_per_weights_file_content(tmp_path, monkeypatch):
    class Shifted(_PixelFeatures):
        def __call__(self, x):
            return super().__call__(x) + self.shift

    def fake_load(path):
        extractor = Shifted(str(path))
        extractor.shift = float(open(path, "rb").read().decode())
        return extractor

    monkeypatch.setattr(inception, "load_inception", fake_load)
    train, _ = load_arrays("digits", "train")
    weights = tmp_path / "w.pth"
    kwargs = dict(metrics=["fid_inception"], dataset="digits", cache_dir=str(tmp_path / "c"),
                  inception_weights=str(weights))
    weights.write_bytes(b"0.0")
    assert evaluate.evaluate_samples(train, **kwargs)["fid_inception"] == pytest.approx(
        0.0, abs=1e-6)
    # Same path, new content: new reference statistics, so the train split is again at 0
    # (stale statistics would put it at distance 64 * 2^2).
    weights.write_bytes(b"2.0")
    assert evaluate.evaluate_samples(train, **kwargs)["fid_inception"] == pytest.approx(
        0.0, abs=1e-6)
    assert len(os.listdir(tmp_path / "c")) == 2
