"""A diffusers-format AutoencoderKL folder, written here with NumPy and safetensors (no torch),
loads into diffjax's autoencoder and computes what a NumPy transcription of SD's first
layers computes; a missing, unexpected or wrongly shaped weight is refused naming its key."""
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from diffjax.autoencoder import VAEWeightsError, load_diffusers_vae
from diffjax.autoencoder.model import AutoencoderKL

CONFIG = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
          "down_block_types": ["DownEncoderBlock2D"] * 2,
          "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [8, 16],
          "layers_per_block": 1, "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 4,
          "sample_size": 8, "scaling_factor": 0.5, "shift_factor": 0.25}


def _resnet(prefix, cin, cout):
    keys = {f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
            f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
            f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
            f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)}
    if cin != cout:
        keys.update({f"{prefix}.conv_shortcut.weight": (cout, cin, 1, 1),
                     f"{prefix}.conv_shortcut.bias": (cout,)})
    return keys


def _mid(prefix, c, legacy=False):
    keys = {**_resnet(f"{prefix}.resnets.0", c, c), **_resnet(f"{prefix}.resnets.1", c, c),
            f"{prefix}.attentions.0.group_norm.weight": (c,),
            f"{prefix}.attentions.0.group_norm.bias": (c,)}
    names = ("query", "key", "value", "proj_attn") if legacy else \
        ("to_q", "to_k", "to_v", "to_out.0")
    for name in names:
        keys[f"{prefix}.attentions.0.{name}.weight"] = (c, c)
        keys[f"{prefix}.attentions.0.{name}.bias"] = (c,)
    return keys


def diffusers_shapes(legacy=False):
    """The state-dict keys and shapes of diffusers' AutoencoderKL for :data:`CONFIG`, written
    out from its module layout (Encoder/Decoder in diffusers/models/autoencoders/vae.py)."""
    keys = {"encoder.conv_in.weight": (8, 3, 3, 3), "encoder.conv_in.bias": (8,),
            **_resnet("encoder.down_blocks.0.resnets.0", 8, 8),
            "encoder.down_blocks.0.downsamplers.0.conv.weight": (8, 8, 3, 3),
            "encoder.down_blocks.0.downsamplers.0.conv.bias": (8,),
            **_resnet("encoder.down_blocks.1.resnets.0", 8, 16),
            **_mid("encoder.mid_block", 16, legacy),
            "encoder.conv_norm_out.weight": (16,), "encoder.conv_norm_out.bias": (16,),
            "encoder.conv_out.weight": (8, 16, 3, 3), "encoder.conv_out.bias": (8,),
            "quant_conv.weight": (8, 8, 1, 1), "quant_conv.bias": (8,),
            "post_quant_conv.weight": (4, 4, 1, 1), "post_quant_conv.bias": (4,),
            "decoder.conv_in.weight": (16, 4, 3, 3), "decoder.conv_in.bias": (16,),
            **_mid("decoder.mid_block", 16, legacy),
            **_resnet("decoder.up_blocks.0.resnets.0", 16, 16),
            **_resnet("decoder.up_blocks.0.resnets.1", 16, 16),
            "decoder.up_blocks.0.upsamplers.0.conv.weight": (16, 16, 3, 3),
            "decoder.up_blocks.0.upsamplers.0.conv.bias": (16,),
            **_resnet("decoder.up_blocks.1.resnets.0", 16, 8),
            **_resnet("decoder.up_blocks.1.resnets.1", 8, 8),
            "decoder.conv_norm_out.weight": (8,), "decoder.conv_norm_out.bias": (8,),
            "decoder.conv_out.weight": (3, 8, 3, 3), "decoder.conv_out.bias": (3,)}
    return keys


def random_state(seed=0, legacy=False):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * (0.3 if len(s) > 1 else 0.2)).astype(np.float32)
            for k, s in diffusers_shapes(legacy).items()}


def write_folder(path, state, config=CONFIG):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    save_file(state, os.path.join(path, "diffusion_pytorch_model.safetensors"))
    return str(path)


# --------------------------------------------------------------------- NumPy reference
def conv_np(x, w, b, stride=1, pad=((1, 1), (1, 1))):
    """PyTorch's Conv2d (weight OIHW) on NHWC ``x``."""
    x = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    kh, kw = w.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]  # [N, H', W', C, kh, kw]
    return np.einsum("nhwcij,ocij->nhwo", windows, w) + b


def group_norm_np(x, gamma, beta, groups, eps=1e-6):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * gamma + beta


def silu(x):
    return x / (1 + np.exp(-x))


def resnet_np(x, s, prefix, groups):
    h = conv_np(silu(group_norm_np(x, s[f"{prefix}.norm1.weight"], s[f"{prefix}.norm1.bias"],
                                   groups)), s[f"{prefix}.conv1.weight"], s[f"{prefix}.conv1.bias"])
    h = conv_np(silu(group_norm_np(h, s[f"{prefix}.norm2.weight"], s[f"{prefix}.norm2.bias"],
                                   groups)), s[f"{prefix}.conv2.weight"], s[f"{prefix}.conv2.bias"])
    return x + h


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("vae"), random_state())


@pytest.fixture(scope="module")
def loaded(folder):
    return load_diffusers_vae(folder)


def test_loaded_vae_matches_a_numpy_transcription_of_the_first_layers(loaded):
    vae, s = loaded, random_state()
    x = np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)

    def both(params, x):
        (mean, logvar), enc = vae.module.apply({"params": params}, x, method=AutoencoderKL.encode,
                                               capture_intermediates=True)
        out, dec = vae.module.apply({"params": params}, mean, method=AutoencoderKL.decode,
                                    capture_intermediates=True)
        return mean, logvar, out, enc["intermediates"], dec["intermediates"]

    mean, logvar, out, enc, dec = jax.jit(both)(vae.params, x)
    assert mean.shape == logvar.shape == (2, 4, 4, 4) and out.shape == x.shape
    h0 = conv_np(x, s["encoder.conv_in.weight"], s["encoder.conv_in.bias"])
    h1 = resnet_np(h0, s, "encoder.down_blocks.0.resnets.0", groups=4)
    h2 = conv_np(np.pad(h1, ((0, 0), (0, 1), (0, 1), (0, 0))),
                 s["encoder.down_blocks.0.downsamplers.0.conv.weight"],
                 s["encoder.down_blocks.0.downsamplers.0.conv.bias"], stride=2,
                 pad=((0, 0), (0, 0)))
    enc = enc["encoder"]
    np.testing.assert_allclose(enc["conv_in"]["__call__"][0], h0, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(enc["down_blocks_0"]["resnets_0"]["__call__"][0], h1,
                               atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(enc["down_blocks_0"]["__call__"][0], h2, atol=1e-4, rtol=1e-4)
    # decode applies post_quant_conv (a 1x1 conv) before decoder.conv_in
    z = np.asarray(mean)
    d0 = conv_np(z, s["post_quant_conv.weight"], s["post_quant_conv.bias"], pad=((0, 0), (0, 0)))
    d1 = conv_np(d0, s["decoder.conv_in.weight"], s["decoder.conv_in.bias"])
    np.testing.assert_allclose(dec["decoder"]["conv_in"]["__call__"][0], d1, atol=1e-4,
                               rtol=1e-4)
    assert (vae.scaling_factor, vae.shift_factor, vae.factor) == (0.5, 0.25, 2)


def test_legacy_attention_names_load_to_the_same_parameters(loaded, tmp_path):
    new = loaded
    legacy_state = random_state()
    for old, name in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                      ("to_out.0", "proj_attn")):
        for k in [k for k in legacy_state if f".{old}." in k]:
            legacy_state[k.replace(f".{old}.", f".{name}.")] = legacy_state.pop(k)
    old = load_diffusers_vae(write_folder(tmp_path, legacy_state))
    for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(old.params)):
        np.testing.assert_array_equal(a, b)


def test_a_missing_weight_is_named(tmp_path):
    state = random_state()
    del state["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"]
    with pytest.raises(VAEWeightsError,
                       match=r"'decoder\.up_blocks\.1\.resnets\.0\.conv_shortcut\.weight' is missing"):
        load_diffusers_vae(write_folder(tmp_path, state))


def test_a_mismatched_weight_is_named(tmp_path):
    state = random_state()
    state["encoder.mid_block.attentions.0.to_k.weight"] = np.zeros((16, 8), np.float32)
    with pytest.raises(VAEWeightsError,
                       match=r"'encoder\.mid_block\.attentions\.0\.to_k\.weight' has shape \(16, 8\)"):
        load_diffusers_vae(write_folder(tmp_path, state))


def test_an_unexpected_weight_and_an_unsupported_block_are_named(tmp_path):
    state = {**random_state(), "encoder.extra.weight": np.zeros((2,), np.float32)}
    with pytest.raises(VAEWeightsError, match=r"unexpected weight 'encoder\.extra\.weight'"):
        load_diffusers_vae(write_folder(tmp_path / "a", state))
    config = {**CONFIG, "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]}
    with pytest.raises(VAEWeightsError, match="AttnDownEncoderBlock2D"):
        load_diffusers_vae(write_folder(tmp_path / "b", random_state(), config))
