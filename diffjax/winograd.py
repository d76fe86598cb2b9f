"""A 3x3 convolution by Winograd's minimal filtering F(4, 3) along the height (Lavin & Gray
2016, "Fast Algorithms for Convolutional Neural Networks"), for XLA:CPU.

Along one axis, four outputs of a 3-tap filter over six inputs ``d`` are

    y = A^T [(G g) * (B^T d)]

with six products where direct filtering takes twelve (the matrices below: the interpolation
points 0, +-1, +-2 and infinity). Applied along the height only, each of the six transformed
row sets ``B^T d`` (a quarter of the map's height each) is convolved along the width with a
1x3 kernel ``(G g)`` by XLA's own convolution, whose reduction stays ``3 C_in`` long and so
runs near the CPU's matmul peak; the 2-D form's products are matmuls over ``C_in`` alone, and
those, with four times the input written out, ran slower than the direct convolution. In all:
six 1x3 convolutions of quarter-height maps, 18 taps against the direct convolution's 36 per
four output rows, plus the two transforms (adds and scales over the map). The transforms are
memory traffic: alone, a 32x32 layer is a little slower than lax's convolution and a 16x16 or
8x8 one up to 1.5x faster, but in a whole sampling program XLA fuses them into the
neighbouring loops and Winograd at every size made it 1.28x faster (README, "Winograd
convolutions in the samplers"). In training steps it was slower, and is not used there.

Float32 rounding: the kernel transform's sixths and the output transform's factors of 8 make
the result differ from the direct sum by about 2e-6 of the output's largest value (the direct
convolution's own rounding is about 6e-7); ``tests/test_conv_winograd.py`` bounds it against a
float64 reference. :mod:`diffjax.conv` decides where it is used.
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

# F(4, 3): B^T [6, 6] (input), G [6, 3] (kernel), A^T [4, 6] (output).
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)
OUT = AT.shape[0]  # output rows per tile
_NHWC = ("NHWC", "HWIO", "NHWC")


def applies(x_shape: tuple[int, ...]) -> bool:
    """Whether an NHWC map of this shape can be convolved here: its height a multiple of 4."""
    return len(x_shape) == 4 and x_shape[1] >= OUT and x_shape[1] % OUT == 0


def _combine(coefficients: np.ndarray, arrays: list[jax.Array]) -> jax.Array:
    """``sum_i c_i a_i`` with the zero terms left out and +-1 as additions."""
    out = None
    for c, a in zip(coefficients, arrays):
        if c == 0:
            continue
        term = a if c == 1 else -a if c == -1 else a * jnp.asarray(c, a.dtype)
        out = term if out is None else out + term
    return out


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x`` [B, H, W, C] convolved with ``kernel`` [3, 3, C, O] (HWIO), stride 1, "SAME"
    padding (one pixel each side): [B, H, W, O], as ``lax.conv_general_dilated`` computes it
    (cross-correlation), for H a multiple of 4 (:func:`applies`)."""
    if not applies(x.shape) or kernel.shape[:2] != (3, 3) or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"winograd.conv3x3: needs x [B, H, W, C] with H a multiple of {OUT} "
                         f"and kernel [3, 3, C, O]; got x {x.shape}, kernel {kernel.shape}")
    b, h, w, _ = x.shape
    tiles = h // OUT
    # Input rows 4t - 1 ... 4t + 4 (zero rows above and below) for tile t: six strided views.
    xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)))
    rows = [lax.slice_in_dim(xp, r, r + OUT * (tiles - 1) + 1, OUT, axis=1)
            for r in range(BT.shape[1])]                                   # 6 x [B, T, W, C]
    # G g along the kernel's height: [6, 3 (width taps), C, O], in float32 like the rest.
    u = jnp.einsum("ai,ijco->ajco", jnp.asarray(G, kernel.dtype), kernel,
                   precision=lax.Precision.HIGHEST)
    products = [lax.conv_general_dilated(_combine(BT[i], rows), u[i][None], (1, 1),
                                         ((0, 0), (1, 1)), dimension_numbers=_NHWC)
                for i in range(BT.shape[0])]                               # 6 x [B, T, W, O]
    out = jnp.stack([_combine(AT[j], products) for j in range(OUT)], axis=2)  # [B, T, 4, W, O]
    return out.reshape(b, h, w, kernel.shape[-1])
