"""The autoencoder's adversarial terms (LDM's first stage: PatchGAN, hinge loss, adaptive
weight): the adaptive weight's last-layer gradient against autodiff through the whole decoder,
each term reaching only its own player's parameters, nothing before ``disc_start``, and the
hinge loss's closed form."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffjax import config_validation, configs, train
from diffjax.autoencoder import spec
from diffjax.autoencoder import task as ae_task
from diffjax.autoencoder.model import AutoencoderKL, PatchDiscriminator
from diffjax.data import DataInfo

INFO = DataInfo("shapes", "image", (16, 16, 3), 1, None, None)


def _config(**autoencoder):
    config = configs.default_config()
    config.task = "autoencoder"
    config.data.dataset = "shapes"
    config.model = configs.default_model_config("autoencoder")
    config.model.update(block_out_channels=(8, 8), norm_num_groups=4, mid_attention=False,
                        disc_channels=8, disc_layers=2)
    config.autoencoder = spec.autoencoder_config()
    config.autoencoder.update(gradient_weight=0.5, **autoencoder)
    return config


@pytest.fixture(scope="module")
def parts():
    config = _config(disc_weight=0.5, disc_start=3)
    setup = train.build(config, INFO)
    params = jax.jit(lambda: train.init_state(setup, 0))().params
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    return setup, ae_task.build(setup, {}), params, x


def test_patch_discriminator_gives_one_logit_per_patch(parts):
    setup, _, params, x = parts
    assert set(params) >= {"encoder", "decoder", "discriminator"}
    logits = setup.net.apply({"params": params}, x, method=AutoencoderKL.discriminate)
    # 16 -> 8 -> 4 (stride 2, 4x4, pad 1), then 4 -> 3 -> 2 (stride 1): one logit a patch.
    assert logits.shape == (4, 2, 2, 1)
    bigger = PatchDiscriminator(8, 3).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert PatchDiscriminator(8, 3).apply(bigger, jnp.zeros((1, 32, 32, 3))).shape == (1, 2, 2, 1)


def test_last_layer_gradient_is_autodiff_through_the_decoder(parts):
    setup, task, params, x = parts
    z = setup.net.apply({"params": params}, x, method=AutoencoderKL.encode)[0]

    def loss_of_kernel(kernel):  # the whole decoder, its last kernel swapped in
        p = jax.tree_util.tree_map(lambda a: a, params)
        p["decoder"]["conv_out"]["kernel"] = kernel
        y = setup.net.apply({"params": p}, z, method=AutoencoderKL.decode)
        return task._reconstruction(y, x)[0]

    kernel = params["decoder"]["conv_out"]["kernel"]
    expected = jax.grad(loss_of_kernel)(kernel)
    y, h = setup.net.apply({"params": params}, z, method=AutoencoderKL.decode_with_features)
    cotangent = jax.grad(lambda v: task._reconstruction(v, x)[0])(y)
    got = ae_task.last_layer_gradient(h, kernel, cotangent)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert float(jnp.linalg.norm(expected)) > 0


def test_each_adversarial_term_reaches_only_its_player(parts):
    setup, task, params, x = parts
    key = jax.random.PRNGKey(1)
    plain = ae_task.Autoencode(setup, "l1", 1e-6, 0.5)  # the same loss without the GAN

    def grads(t, step):
        batch = {"x": x, "step": jnp.full((4,), step, jnp.int32)}
        return jax.grad(lambda p: t.loss(p, batch, key, None)[0])(params)

    before, after, base = grads(task, 2), grads(task, 3), grads(plain, 3)
    # Before disc_start: exactly the plain loss, the discriminator untouched.
    assert all(float(jnp.abs(g).max()) == 0
               for g in jax.tree_util.tree_leaves(before["discriminator"]))
    for name in ("encoder", "decoder"):
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7),
                               before[name], base[name])
    # From disc_start: the discriminator's gradient is that of the hinge loss alone...
    def hinge(disc):
        z_mean, z_logvar = setup.net.apply({"params": params}, x, method=AutoencoderKL.encode)
        eps = jax.random.normal(key, z_mean.shape)
        x_rec = setup.net.apply({"params": params}, z_mean + jnp.exp(0.5 * z_logvar) * eps,
                                method=AutoencoderKL.decode)
        d = lambda images: setup.net.apply(  # noqa: E731
            {"params": {**params, "discriminator": disc}}, images,
            method=AutoencoderKL.discriminate)
        return ae_task.hinge_d_loss(d(x), d(x_rec))

    expected = jax.grad(hinge)(params["discriminator"])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                           after["discriminator"], expected)
    # ... and the autoencoder's gains the generator term.
    delta = jnp.abs(after["decoder"]["conv_out"]["kernel"] - base["decoder"]["conv_out"]["kernel"])
    assert float(delta.max()) > 0


def test_hinge_loss_closed_form():
    assert float(ae_task.hinge_d_loss(jnp.full((2,), 2.0), jnp.full((2,), -2.0))) == 0.0
    assert float(ae_task.hinge_d_loss(jnp.zeros(3), jnp.zeros(3))) == 1.0
    assert float(ae_task.hinge_d_loss(jnp.array([0.5]), jnp.array([0.25]))) == \
        pytest.approx(0.5 * (0.5 + 1.25))


@pytest.mark.parametrize("change, message", [
    ({"autoencoder.disc_weight": 0.5, "model.disc_channels": 0},
     "config.autoencoder.disc_weight=0.5 needs a discriminator"),
    ({"autoencoder.disc_start": -1}, "config.autoencoder.disc_start=-1 must be an int >= 0"),
    ({"autoencoder.disc_weight": -0.1}, "config.autoencoder.disc_weight=-0.1 must be >= 0"),
    ({"model.disc_layers": 0}, "model.disc_layers=0 must be an int >= 1"),
    ({"model.disc_layers": 4}, r"halves 32x32 images to nothing; use model.disc_layers <= 3"),
])
def test_bad_adversarial_settings_fail_before_compute(change, message, tmp_path):
    config = _config()
    config.data.data_dir = str(tmp_path)
    for dotted, value in change.items():
        group, key = dotted.split(".")
        config[group][key] = value
    with pytest.raises(config_validation.ConfigError, match=message):
        config_validation.validate(config)


def test_a_run_stored_before_the_discriminator_existed_resumes_unchanged(tmp_path):
    from diffjax.config_compat import incompatibilities

    new = _config()
    new.data.data_dir = str(tmp_path)
    new.model.update(disc_channels=0, disc_layers=3)  # the defaults: no discriminator
    stored = json.loads(new.to_json())
    del stored["model"]["disc_channels"], stored["model"]["disc_layers"]
    old = ml_collections.ConfigDict(stored)  # a config.json written before the keys existed
    assert incompatibilities(old, new) == []
    new.model.disc_channels = 8
    assert incompatibilities(old, new) == ["model.disc_channels: 0 -> 8"]
