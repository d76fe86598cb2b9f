"""Convolutions for XLA:CPU: the kernel gradient as matmuls, upsampling at the low resolution,
Winograd outputs in samplers.

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

The output of a 3x3 "SAME" convolution (float32, CPU, map height a multiple of 4) can be
computed by :mod:`diffjax.winograd` (Winograd's F(4, 3) along the height: half the
multiply-adds, a few times lax's float32 rounding). The choice, read when a program is traced:
``DIFFJAX_CONV_FORWARD`` = ``auto`` (the default: Winograd in the samplers' compiled programs,
which :func:`sampling` marks, lax's convolution elsewhere), ``lax`` or ``winograd`` (training
steps too), or :func:`forward` around the tracing. In training it was not faster (README,
"Winograd convolutions in the samplers"). Its derivatives are always lax's convolution's
(the same ``jax.custom_jvp`` as the matmul kernel gradient, which it combines with), so a
program that differentiates through a sampler (``diffjax.samplers.tuning``) gets exact
gradients of the convolution.
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

from diffjax import winograd

_NHWC = ("NHWC", "HWIO", "NHWC")
ENV = "DIFFJAX_CONV_KERNEL_GRADIENT"
KERNEL_GRADIENTS = ("lax", "matmul")  # the first is the default
_mode: str | None = None  # set by kernel_gradient(); None: the environment decides


FORWARD_ENV = "DIFFJAX_CONV_FORWARD"
FORWARDS = ("auto", "lax", "winograd")  # the first is the default
_forward: str | None = None  # set by forward(); None: the environment decides
_sampling = False  # set by sampling(): the program traced now only evaluates networks


def _check(mode: str, where: str, choices: Sequence[str] = KERNEL_GRADIENTS) -> str:
    if mode not in choices:
        raise ValueError(f"{where}={mode!r} is unknown; valid choices: "
                         f"{', '.join(map(repr, choices))}")
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


def current_forward() -> str:
    """How a 3x3 convolution traced now computes its output: :func:`forward`'s choice, else
    ``$DIFFJAX_CONV_FORWARD``'s, else ``"auto"``: by :mod:`diffjax.winograd` inside a sampling
    program (:func:`sampling`) and by lax's convolution elsewhere; ``"lax"``: never by
    Winograd; ``"winograd"``: wherever it applies, training steps included."""
    if _forward is not None:
        return _forward
    return _check(os.environ.get(FORWARD_ENV) or FORWARDS[0], FORWARD_ENV, FORWARDS)


@contextlib.contextmanager
def forward(mode: str) -> Iterator[None]:
    """Inside this context (at trace time) 3x3 convolutions compute their output as ``mode``
    (one of :data:`FORWARDS`) says, whatever the environment says."""
    global _forward
    previous, _forward = _forward, _check(mode, "forward mode", FORWARDS)
    try:
        yield
    finally:
        _forward = previous


@contextlib.contextmanager
def sampling() -> Iterator[None]:
    """Marks what is traced inside as a program that evaluates networks without training them
    (the samplers' compiled loop): there ``"auto"`` computes 3x3 convolutions by Winograd."""
    global _sampling
    previous, _sampling = _sampling, True
    try:
        yield
    finally:
        _sampling = previous


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


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv(x: jax.Array, kernel: jax.Array, pads: tuple[tuple[int, int], ...], primal: str,
          kernel_tangent: str) -> jax.Array:
    """The convolution computed as ``primal`` says ("lax" or "winograd"), differentiated as
    lax's convolution with the kernel tangent ``kernel_tangent`` ("lax" or "matmul")."""
    if primal == "winograd":
        return winograd.conv3x3(x, kernel)
    return _lax_conv(x, kernel, pads)


def _conv_jvp(pads, primal, kernel_tangent, primals, tangents):
    x, kernel = primals
    dx, dk = tangents
    y = _conv(x, kernel, pads, primal, kernel_tangent)
    dy = None
    if not isinstance(dx, SymbolicZero):
        dy = _lax_conv(dx, kernel, pads)
    if not isinstance(dk, SymbolicZero):
        by = conv_by_taps if kernel_tangent == "matmul" else _lax_conv
        dy_k = by(x, dk, pads)
        dy = dy_k if dy is None else dy + dy_k
    return y, jnp.zeros_like(y) if dy is None else dy


# Symbolic zeros: a jvp in the input alone (MeanFlow) computes no kernel term.
_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def _winograd_here(lhs: jax.Array, rhs: jax.Array, pads: tuple[tuple[int, int], ...]) -> bool:
    """Whether this stride-1 NHWC convolution's output is computed by :mod:`diffjax.winograd`."""
    mode = current_forward()
    if mode == "lax" or rhs.shape[:2] != (3, 3) or pads != ((1, 1), (1, 1)):
        return False
    if lhs.dtype != jnp.float32 or not winograd.applies(lhs.shape):
        return False
    return mode == "winograd" or _sampling


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Any, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated``, with the matmul kernel gradient and the Winograd output
    where they are chosen and apply (module docstring)."""
    plain = (jax.default_backend() == "cpu"
             and _plain_2d(lhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                           feature_group_count, batch_group_count)
             and precision is None and preferred_element_type is None
             and lhs.dtype == rhs.dtype)
    pads = _stride1_padding(padding, rhs.shape[:2]) if plain else None
    if pads is not None and all(lo >= 0 and hi >= 0 for lo, hi in pads):
        primal = "winograd" if _winograd_here(lhs, rhs, pads) else "lax"
        kernel_tangent = current_kernel_gradient()
        if primal != "lax" or kernel_tangent != "lax":
            return _conv(lhs, rhs, pads, primal, kernel_tangent)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)


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
