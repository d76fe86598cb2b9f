"""A convolution whose kernel gradient can be computed as matmuls on XLA:CPU.

``lax.conv_general_dilated`` differentiates into three convolutions: the output, the input
gradient and the kernel gradient (a "convolution" whose window is the whole feature map and
whose output is the k x k kernel). Written instead as one matmul per kernel tap,

    dK[i, j] = sum_{b, h, w} x[b, h, w, :]^T  dy[b, h - i + p, w - j + p, :]     ([C_in, C_out]),

with the output cotangent shifted (not the input: nothing extra is kept from the forward pass),
it is the same sum up to float32 order. Which is faster depends on XLA:CPU's kernels, so on the
jaxlib and the machine: on the 2-core development CPU with the jaxlib of 2026-11-29 the
matmuls made the U-Nets' training steps 1.1-2.3x faster and were diffjax's default; with
jaxlib 0.10.2 and diffjax's XLA options (:mod:`diffjax.xla_options`) on 2026-12-01 they made
them 7-22% slower than lax's (and slower under XLA's default options too), so lax's kernel
gradient is the default again. ``python experiments/benchmarks/conv_grad.py`` says which is
faster on your machine (``--layers`` per layer shape, ``--steps`` whole training steps).

The choice, read when a program is traced: ``DIFFJAX_CONV_KERNEL_GRADIENT=matmul`` (or
``lax``, the default) in the environment, or :func:`kernel_gradient` around the tracing (the
benchmark's comparisons). The matmul form is a ``jax.custom_jvp`` whose tangent rule is linear
in (dx, dK), so reverse mode transposes it into the above and forward mode (MeanFlow's
``jax.jvp`` through the network) evaluates it as written; the output and the input gradient are
always lax's own. It applies to 2-D NHWC/HWIO stride-1 convolutions without dilation or groups
on the CPU backend (GPUs and TPUs have fast kernel-gradient convolutions of their own); every
other call goes to ``lax`` unchanged.

:func:`upsample_conv_general_dilated` is nearest-neighbour 2x upsampling followed by a 3x3
convolution (the U-Nets' and the autoencoders' upsampling layers) computed without the
upsampled map: along each axis, output pixel ``2m + r`` of a 3-tap window over the upsampled
input reads low-resolution pixels ``m - 1, m, m`` (r = 0) or ``m, m, m + 1`` (r = 1), so each of
the four output phases is a 2x2 convolution of the low-resolution input with taps summed from
the 3x3 kernel (the "resize convolution" as a sub-pixel convolution, Aitken et al. 2017,
"Checkerboard artifact free sub-pixel convolution"). The same function and the same parameters
in about 16/36 of the multiply-adds (one border row and column more); the phases are
interleaved back at the end. On the CPU backend only, where it was measured (README,
"Upsampling convolutions"); other backends convolve the upsampled map, as before.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

_NHWC = ("NHWC", "HWIO", "NHWC")
ENV = "DIFFJAX_CONV_KERNEL_GRADIENT"
KERNEL_GRADIENTS = ("lax", "matmul")  # the first is the default
_mode: str | None = None  # set by kernel_gradient(); None: the environment decides


def _check(mode: str, where: str) -> str:
    if mode not in KERNEL_GRADIENTS:
        raise ValueError(f"{where}={mode!r} is unknown; valid choices: "
                         f"{', '.join(map(repr, KERNEL_GRADIENTS))}")
    return mode


def current_kernel_gradient() -> str:
    """The kernel gradient a convolution traced now takes: :func:`kernel_gradient`'s, else
    ``$DIFFJAX_CONV_KERNEL_GRADIENT``'s, else ``"lax"``."""
    if _mode is not None:
        return _mode
    return _check(os.environ.get(ENV) or KERNEL_GRADIENTS[0], ENV)


@contextlib.contextmanager
def kernel_gradient(mode: str) -> Iterator[None]:
    """Inside this context (at trace time) stride-1 convolutions differentiate their kernel
    as ``mode`` (one of :data:`KERNEL_GRADIENTS`) says, whatever the environment says."""
    global _mode
    previous, _mode = _mode, _check(mode, "kernel_gradient mode")
    try:
        yield
    finally:
        _mode = previous


def _stride1_padding(padding: Any, kernel: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
    if isinstance(padding, str):
        if padding.upper() == "SAME":
            return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel)  # lax's SAME
        if padding.upper() == "VALID":
            return tuple((0, 0) for _ in kernel)
        return None
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _dims_are_nhwc(dimension_numbers: Any) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == _NHWC


def _plain_2d(lhs: jax.Array, window_strides: Sequence[int], lhs_dilation: Any,
              rhs_dilation: Any, dimension_numbers: Any, feature_group_count: int,
              batch_group_count: int) -> bool:
    """A 2-D NHWC/HWIO stride-1 convolution without dilation or groups."""
    return (lhs.ndim == 4 and _dims_are_nhwc(dimension_numbers)
            and tuple(int(s) for s in window_strides) == (1, 1)
            and feature_group_count == 1 and batch_group_count == 1
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1))))


def conv_by_taps(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """The stride-1 convolution of ``x`` [B, H, W, C] with ``kernel`` [kh, kw, C, O] written as
    one matmul per tap of the *unshifted* input, ``x @ K[i, j]``, each product shifted into
    place (``lax.pad``; negative padding crops) and summed.

    Slower than ``lax`` forwards; it is here for its transpose in the kernel, which JAX derives
    as: shift the output cotangent back, then one matmul ``x^T dy_shifted`` per tap."""
    b, hi, wi, c = x.shape
    kh, kw, _, o = kernel.shape
    ho = hi + pads[0][0] + pads[0][1] - kh + 1
    wo = wi + pads[1][0] + pads[1][1] - kw + 1
    flat = x.reshape(-1, c)
    zero = jnp.zeros((), x.dtype)
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = (flat @ kernel[i, j]).reshape(b, hi, wi, o)
            a, d = i - pads[0][0], j - pads[1][0]  # out[h, w] = tap[h + a, w + d]
            tap = lax.pad(tap, zero, ((0, 0, 0), (-a, ho - hi + a, 0), (-d, wo - wi + d, 0),
                                      (0, 0, 0)))
            out = tap if out is None else out + tap
    return out


def _lax_conv(x: jax.Array, kernel: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    return _lax_conv(x, kernel, pads)


def _conv_jvp(pads, primals, tangents):
    x, kernel = primals
    dx, dk = tangents
    y = _conv(x, kernel, pads)
    dy = None
    if not isinstance(dx, SymbolicZero):
        dy = _lax_conv(dx, kernel, pads)
    if not isinstance(dk, SymbolicZero):
        dy_k = conv_by_taps(x, dk, pads)
        dy = dy_k if dy is None else dy + dy_k
    return y, jnp.zeros_like(y) if dy is None else dy


# Symbolic zeros: a jvp in the input alone (MeanFlow) computes no kernel term.
_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Any, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated``, with the matmul kernel gradient where it is chosen and
    applies (module docstring)."""
    plain = (current_kernel_gradient() == "matmul" and jax.default_backend() == "cpu"
             and _plain_2d(lhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                           feature_group_count, batch_group_count)
             and precision is None and preferred_element_type is None
             and lhs.dtype == rhs.dtype)
    pads = _stride1_padding(padding, rhs.shape[:2]) if plain else None
    if pads is None or any(lo < 0 or hi < 0 for lo, hi in pads):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    return _conv(lhs, rhs, pads)


def _phase_taps(kernel: jax.Array, axis: int) -> jax.Array:
    """``kernel`` with its 3 taps along ``axis`` replaced by ``[2 (phase), 2 (tap)]``: phase 0
    reads taps ``(k0, k1 + k2)`` at offsets (-1, 0), phase 1 ``(k0 + k1, k2)`` at (0, +1).
    Plain additions (exact in any matmul precision)."""
    k0, k1, k2 = (lax.index_in_dim(kernel, t, axis, keepdims=False) for t in range(3))
    pairs = [jnp.stack([k0, k1 + k2], axis), jnp.stack([k0 + k1, k2], axis)]
    return jnp.stack(pairs, axis)


def upsample_conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                                  padding: Any, lhs_dilation: Sequence[int] | None = None,
                                  rhs_dilation: Sequence[int] | None = None,
                                  dimension_numbers: Any = None, feature_group_count: int = 1,
                                  batch_group_count: int = 1, precision: Any = None,
                                  preferred_element_type: Any = None) -> jax.Array:
    """:func:`conv_general_dilated` of ``lhs`` upsampled 2x by nearest neighbour, ``lhs``
    [B, H, W, C] and ``rhs`` [3, 3, C, O] with "SAME" padding (stride 1, no dilation or
    groups): [B, 2H, 2W, O], on CPU without forming the upsampled input (module docstring).
    Its signature is lax's, so that ``flax.linen.Conv(..., conv_general_dilated=...)`` keeps its
    parameters and names and upsamples on the way in."""
    pads = _stride1_padding(padding, rhs.shape[:2]) if rhs.ndim == 4 else None
    ok = (rhs.shape[:2] == (3, 3) and pads == ((1, 1), (1, 1))
          and _plain_2d(lhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, batch_group_count))
    if not ok:
        raise ValueError(
            "upsample_conv_general_dilated: only a 3x3 'SAME' stride-1 NHWC/HWIO convolution "
            f"without dilation or groups; got lhs {lhs.shape}, rhs {rhs.shape}, padding "
            f"{padding!r}, strides {tuple(window_strides)}, dimension_numbers "
            f"{dimension_numbers!r}, feature_group_count {feature_group_count}")
    if jax.default_backend() != "cpu":
        upsampled = jnp.repeat(jnp.repeat(lhs, 2, axis=1), 2, axis=2)
        return conv_general_dilated(upsampled, rhs, (1, 1), padding, precision=precision,
                                    dimension_numbers=dimension_numbers,
                                    preferred_element_type=preferred_element_type)
    b, h, w, c = lhs.shape
    o = rhs.shape[-1]
    # [3, 3, C, O] -> [2 (r), 2 (i), 2 (s), 2 (j), C, O] -> [i, j, C, (r, s, O)]
    taps = _phase_taps(_phase_taps(rhs, 0), 2)
    taps = taps.transpose(1, 3, 4, 0, 2, 5).reshape(2, 2, c, 4 * o)
    # Padded here, not by the convolution: with padding inside it, XLA:CPU (jaxlib 0.10.2)
    # computed this convolution's kernel gradient ~28x slower.
    x = jnp.pad(lhs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = conv_general_dilated(x, taps, (1, 1), "VALID", dimension_numbers=dimension_numbers,
                               precision=precision, preferred_element_type=preferred_element_type)
    out = out.reshape(b, h + 1, w + 1, 2, 2, o)  # out[:, i, j] reads x rows i-1, i, cols j-1, j
    rows = [jnp.stack([out[:, r:r + h, s:s + w, r, s] for s in range(2)], axis=3)
            for r in range(2)]  # phase (r, s) of output pixel (m, n) is out[:, m + r, n + s]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, o)
