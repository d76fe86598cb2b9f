"""configs/bench_unet.py builds diffusers' UNet2DModel architecture: same parameter count.

The expected count is derived from diffusers' block structure (``UNet2DModel`` with
``DownBlock2D`` / ``AttnDownBlock2D`` / ``UpBlock2D`` / ``AttnUpBlock2D``, ``UNetMidBlock2D``),
written out below from its definition, without torch; diffjax's count is read from the
initialised variables' shapes.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from diffjax import config_loading, data, models, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _linear(cin, cout):
    return cin * cout + cout


def _norm(c):
    return 2 * c


def _resnet(cin, cout, temb):
    """diffusers' ResnetBlock2D: norm1, conv1, time_emb_proj, norm2, conv2, 1x1 shortcut."""
    shortcut = _conv(cin, cout, 1) if cin != cout else 0
    return (_norm(cin) + _conv(cin, cout, 3) + _linear(temb, cout) + _norm(cout)
            + _conv(cout, cout, 3) + shortcut)


def _attention(c):
    """diffusers' Attention with a group norm: to_q, to_k, to_v, to_out[0], all with bias."""
    return _norm(c) + 4 * _linear(c, c)


def diffusers_unet2d_params(in_ch, out_ch, block_out, layers, down_attn, up_attn):
    """Parameter count of ``UNet2DModel`` (default time embedding: Timesteps(block_out[0]) →
    Linear(block_out[0], 4 block_out[0]) → SiLU → Linear)."""
    temb = 4 * block_out[0]
    total = _linear(block_out[0], temb) + _linear(temb, temb) + _conv(in_ch, block_out[0], 3)
    prev = block_out[0]
    for i, out in enumerate(block_out):
        for j in range(layers):
            total += _resnet(prev if j == 0 else out, out, temb)
            total += _attention(out) if down_attn[i] else 0
        if i != len(block_out) - 1:
            total += _conv(out, out, 3)  # Downsample2D(use_conv=True)
        prev = out
    mid = block_out[-1]
    total += 2 * _resnet(mid, mid, temb) + _attention(mid)
    rev = list(reversed(block_out))
    prev_out = rev[0]
    for i, out in enumerate(rev):
        skip_in = rev[min(i + 1, len(rev) - 1)]
        for j in range(layers + 1):
            res_skip = skip_in if j == layers else out
            res_in = prev_out if j == 0 else out
            total += _resnet(res_in + res_skip, out, temb)
            total += _attention(out) if up_attn[i] else 0
        if i != len(rev) - 1:
            total += _conv(out, out, 3)  # Upsample2D(use_conv=True)
        prev_out = out
    return total + _norm(block_out[0]) + _conv(block_out[0], out_ch, 3)


def test_bench_unet_has_the_parameter_count_of_diffusers_unet2dmodel():
    config = config_loading.load(os.path.join(REPO, "configs", "bench_unet.py"), lock=False)
    info = data.info(config.data.dataset)
    setup = train.build(config, info)
    variables = jax.eval_shape(lambda: setup.net.init(
        jax.random.key(0), jnp.zeros((1, *info.shape)), jnp.zeros((1,))))
    ours = models.count_params(variables)
    # (64, 128, 128), 2 layers; attention in the second down block and the second up block.
    expected = diffusers_unet2d_params(3, 3, (64, 128, 128), 2, (False, True, False),
                                       (False, True, False))
    assert abs(ours - expected) <= 0.02 * expected, (ours, expected)
    assert info.shape == (32, 32, 3)
    # The same 16 heads of width 8 (diffusers' default attention_head_dim=8) at 16x16.
    assert config.model.num_heads == 128 // 8 and tuple(config.model.attn_resolutions) == (16,)


def test_parameter_formula_counts_a_one_block_unet_by_hand():
    # One level of 4 channels, one layer, no attention: a check of the formula itself.
    # time: 4*16+16 + 16*16+16; conv_in 3*4*9+4; down resnet(4, 4); mid 2 resnets + attention;
    # up: two resnets (8 -> 4 input channels); out: norm + conv.
    res44 = 8 + (144 + 4) + (64 + 4) + 8 + (144 + 4)
    res84 = 16 + (288 + 4) + (64 + 4) + 8 + (144 + 4) + (32 + 4)
    by_hand = 80 + 272 + 112 + res44 + 2 * res44 + (8 + 4 * 20) + 2 * res84 + 8 + 111
    assert diffusers_unet2d_params(3, 3, (4,), 1, (False,), (False,)) == by_hand
