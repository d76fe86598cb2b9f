"""The autoencoder stage and diffusion in its latent space, trained by the one trainer on 8x8
digits (diffjax.autoencoder with diffjax.training): reconstruction against an independent
PSNR and the best constant image, unit-variance latents on held-out data, exact resumption of
a latent run and refusal of a changed autoencoder."""
import json
import re
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _train_helpers as helpers

from diffjax import config_validation, configs, train
from diffjax.autoencoder import latent, spec
from diffjax.autoencoder import task as ae_task
from diffjax.data import load_arrays
from diffjax.training import frozen, tasks

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
AE_STEPS = 60


def ae_config(data_dir):
    config = configs.default_config()
    config.task = "autoencoder"
    config.data.update(dataset="digits", data_dir=data_dir, batch_size=64)
    config.model = configs.default_model_config("autoencoder")
    config.model.update(block_out_channels=(8, 8), norm_num_groups=4, mid_attention=False,
                        image_channels=1)
    config.autoencoder = spec.autoencoder_config()
    config.autoencoder.stats_examples = 512
    config.optim.update(lr=3e-3, warmup_steps=5)
    config.training.update(num_steps=AE_STEPS, log_every=AE_STEPS, eval_every=AE_STEPS,
                           checkpoint_every=AE_STEPS, ema_decay=0.5, progress_bar=False)
    config.eval.update(num_samples=296, batch_size=296)
    return config


def latent_config(data_dir, ae_dir, num_steps):
    config = helpers.tiny_config(data_dir, **{"data.dataset": "digits", "data.batch_size": 16,
                                              "training.num_steps": num_steps,
                                              "training.checkpoint_every": 2})
    config.model = configs.default_model_config("dit")
    config.model.update(size="S/2", depth=1, hidden=16, num_heads=1, class_conditional=True)
    config.loss.label_dropout = 0.2
    config.latent.autoencoder = ae_dir
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def ae_dir(data_dir, tmp_path_factory) -> str:
    workdir = str(tmp_path_factory.mktemp("ae"))
    config = ae_config(data_dir)
    config_validation.validate(config)
    train.train(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def ae(ae_dir):
    """The trained autoencoder read as a frozen reference, and one compiled codec of it."""
    ref = frozen.load(spec.KEY, ae_dir)
    return ref, ae_task.Codec(ref.setup.net)


def _eval_record(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "psnr" in r][-1]


def test_encode_decode_is_the_identity_within_the_measured_psnr(ae, ae_dir, data_dir):
    ref, codec = ae
    x, _ = load_arrays("digits", "test", data_dir)
    recon = codec.reconstruct(ref.params, x)
    mse = np.mean((recon - x).reshape(len(x), -1) ** 2, axis=1)
    psnr = float(np.mean(10 * np.log10(4.0 / mse)))  # images in [-1, 1]: peak-to-peak 2
    assert abs(_eval_record(ae_dir)["psnr"] - psnr) < 1e-3
    # Better than the best constant image (the train mean): the latents carry each image.
    train_x, _ = load_arrays("digits", "train", data_dir)
    const = np.mean((train_x.mean(0) - x).reshape(len(x), -1) ** 2, axis=1)
    assert psnr > float(np.mean(10 * np.log10(4.0 / const))) + 2.0


def test_stored_scale_and_shift_make_held_out_latents_unit_variance(ae, ae_dir, data_dir):
    stats = ae_task.read_stats(ae_dir)
    ref, codec = ae
    assert stats["params_sha256"] == ref.identity["params_sha256"]
    x, _ = load_arrays("digits", "test", data_dir)  # not the train examples they came from
    mean, logvar = codec.encode(ref.params, x)
    z = mean + np.exp(0.5 * logvar) * np.random.default_rng(5).standard_normal(mean.shape)
    scaled = stats["scale"] * (z - stats["shift"])
    assert abs(scaled.mean()) < 0.1 and abs(scaled.std() - 1.0) < 0.1
    assert abs(stats["latent_std"] - 1.0) > 0.1  # the raw latents were not unit-variance


def test_per_channel_standardisation_makes_each_held_out_channel_unit_variance(ae, ae_dir,
                                                                              data_dir):
    """``config.latent.per_channel`` (EDM2): every channel of held-out latents is near zero mean
    and unit variance (the shared scale leaves channels unequal), and decoding inverts the
    standardisation: decode(from_moments(m)) is the decoder of m itself."""
    ref, codec = ae
    config = latent_config(data_dir, ae_dir, 2)
    config.latent.per_channel = True
    lat = latent.latents_of(ref, config)
    assert len(lat.scale) == len(lat.shift) == 4
    x, _ = load_arrays("digits", "test", data_dir)
    mean, logvar = codec.encode(ref.params, x)
    eps = jnp.asarray(np.random.default_rng(5).standard_normal(mean.shape), jnp.float32)
    per = np.asarray(lat.from_moments(mean, logvar, eps)).reshape(-1, 4)
    np.testing.assert_allclose(per.mean(0), 0.0, atol=0.15)
    np.testing.assert_allclose(per.std(0), 1.0, atol=0.15)
    stats = ae_task.read_stats(ae_dir)
    shared = (stats["scale"] * (np.asarray(mean) - stats["shift"])).reshape(-1, 4)
    assert np.ptp(shared.std(0)) > 3 * np.ptp(per.std(0))   # what the shared scale leaves
    np.testing.assert_allclose(lat.decode(ref.params, lat.from_moments(mean, logvar)),
                               codec.decode(ref.params, np.asarray(mean)), atol=1e-4)
    for change, message in ((dict(scale=0.5), "unset config.latent.scale"),
                            (dict(per_channel="yes"), "per_channel='yes'")):
        bad = latent_config(data_dir, ae_dir, 2)
        with bad.unlocked():
            bad.latent.per_channel = True
            for k, v in change.items():
                if k == "per_channel":
                    del bad.latent["per_channel"]
                bad.latent[k] = v
        with pytest.raises(config_validation.ConfigError, match=message):
            config_validation.validate(bad)
    # A run trained on standardised latents is not sampled under the shared scale (its samples
    # would decode wrongly); a config.json from before the key compares as its default.
    from diffjax.config_compat import incompatibilities
    plain = latent_config(data_dir, ae_dir, 2)
    assert incompatibilities(config, plain) == ["latent.per_channel: True -> False"]
    older = latent_config(data_dir, ae_dir, 2)
    with older.unlocked():
        del older.latent["per_channel"]
    assert incompatibilities(older, plain) == []


class _Probe:
    """An inner task whose loss is the mean of the data it is handed, which it records."""

    seen = None

    def loss(self, params, batch, key, frozen_params, rows=None):
        _Probe.seen = (batch["x"], frozen_params)
        return jnp.mean(batch["x"]), {}


def test_latent_task_hands_the_inner_task_scaled_encoder_latents(ae, ae_dir, data_dir):
    ref, codec = ae
    config = latent_config(data_dir, ae_dir, 2)
    assert train.build(config).data_info.shape == (4, 4, 4)  # 8x8x1 digits, f = 2
    stats = ae_task.read_stats(ae_dir)
    x, labels = load_arrays("digits", "test", data_dir, limit=8)
    batch = {"x": jnp.asarray(x), "cond": {"label": jnp.asarray(labels)}}
    mean, logvar = codec.encode(ref.params, x)
    for posterior in (False, True):
        config.latent.sample_posterior = posterior
        task = latent.LatentTask(_Probe(), latent.latents_of(ref, config))
        key = jax.random.PRNGKey(3)
        task.loss({}, batch, key, {spec.KEY: ref.params, "other": 1})
        seen, rest = _Probe.seen
        z = mean
        if posterior:  # drawn for the global batch from the step's key
            eps = jax.random.normal(jax.random.fold_in(key, latent._POSTERIOR_SALT), mean.shape)
            z = mean + np.exp(0.5 * logvar) * np.asarray(eps)
        np.testing.assert_allclose(seen, stats["scale"] * (z - stats["shift"]), rtol=1e-4,
                                   atol=1e-5)
        assert rest == {"other": 1}  # the inner task never sees the autoencoder


def test_latent_run_resumes_exactly_and_refuses_a_changed_autoencoder(ae_dir, data_dir,
                                                                       tmp_path):
    ae_copy = str(tmp_path / "ae")
    shutil.copytree(ae_dir, ae_copy)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.train(latent_config(data_dir, ae_copy, 4), straight)
    # The straight run as it was after step 2 (checkpoint and metrics), resumed to step 4.
    shutil.copytree(straight, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    train.train(latent_config(data_dir, ae_copy, 4), resumed)
    assert len(helpers.losses(straight)) == 4
    np.testing.assert_array_equal(helpers.losses(resumed), helpers.losses(straight))
    with open(os.path.join(resumed, frozen.REFERENCES_FILE)) as f:
        assert json.load(f)[spec.KEY]["workdir"] == ae_copy
    # The autoencoder run changes in place (here its config); resuming against it is refused.
    with open(os.path.join(ae_copy, "config.json")) as f:
        ae_json = json.load(f)
    ae_json["autoencoder"]["kl_weight"] *= 2
    with open(os.path.join(ae_copy, "config.json"), "w") as f:
        json.dump(ae_json, f)
    with pytest.raises(frozen.ReferenceChangedError, match="config.latent.autoencoder=") as info:
        train.train(latent_config(data_dir, ae_copy, 6), straight)
    assert "\n" not in str(info.value) and "config_sha256" in str(info.value)


def test_a_latent_config_that_does_not_fit_fails_before_compute(ae_dir, data_dir, tmp_path):
    config = latent_config(data_dir, str(tmp_path / "nothing"), 2)
    with pytest.raises(config_validation.ConfigError, match="config.latent.autoencoder=.*no config.json"):
        config_validation.validate(config)
    config = latent_config(data_dir, ae_dir, 2)
    config.data.dataset = "moons"
    with pytest.raises(config_validation.ConfigError, match="config.latent.autoencoder needs images"):
        config_validation.validate(config)
    config = latent_config(data_dir, ae_dir, 2)
    config.eval.metrics = "fd_classifier,nll"
    with pytest.raises(config_validation.ConfigError, match="'nll' would be the likelihood of latents"):
        config_validation.validate(config)
    config = ae_config(data_dir)
    config.task = "denoise"
    with pytest.raises(config_validation.ConfigError, match="config.task='denoise' with config.model.arch='autoencoder'"):
        config_validation.validate(config)
    config = ae_config(data_dir)
    config.autoencoder.gradient_weight = -1.0
    with pytest.raises(config_validation.ConfigError, match="config.autoencoder.gradient_weight=-1.0"):
        config_validation.validate(config)
    config = ae_config(data_dir)
    config.eval.metrics = "fd_shapes_recon"
    with pytest.raises(config_validation.ConfigError, match="'fd_shapes_recon' needs shapes data"):
        config_validation.validate(config)
    assert latent.reference_value(latent_config(data_dir, ae_dir, 2)) == os.path.abspath(ae_dir)


def test_gradient_error_is_the_mean_absolute_finite_difference_of_the_error():
    err = np.random.default_rng(0).standard_normal((2, 5, 4, 3)).astype(np.float32)
    expected = sum(np.abs(np.diff(err, axis=a)).mean() for a in (1, 2))
    np.testing.assert_allclose(ae_task.image_gradient_error(jnp.asarray(err)), expected,
                               rtol=1e-6)
    # a constant error (a global colour shift) has no edges
    assert float(ae_task.image_gradient_error(jnp.full((1, 4, 4, 3), 0.3))) == 0.0


def test_cached_latents_train_exactly_like_encoding_in_the_step(ae_dir, data_dir, tmp_path):
    # The second method: the same run encoding every batch inside the step. Same records,
    # same flips (their mirror images encoded into the cache), same posterior noise.
    losses = {}
    for cached in (False, True):
        config = latent_config(data_dir, ae_dir, 3)
        config.data.random_flip = True
        config.latent.update(cache=cached, cache_dir=str(tmp_path / "cache"))
        config_validation.validate(config)
        workdir = str(tmp_path / f"cached_{cached}")
        train.train(config, workdir)
        losses[cached] = helpers.losses(workdir)
    (folder,) = os.listdir(tmp_path / "cache")
    assert folder.startswith("latents_digits_train_")
    with open(tmp_path / "cache" / folder / "meta.json") as f:
        meta = json.load(f)
    assert meta["flips"] and meta["autoencoder"]["workdir"] == os.path.abspath(ae_dir)
    assert len(losses[True]) == 3
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-4)


def test_latent_cache_is_written_whole_or_not_at_all(ae_dir, data_dir, tmp_path, monkeypatch):
    from diffjax.autoencoder import cache

    config = latent_config(data_dir, ae_dir, 2)
    config.latent.update(cache=True, cache_dir=str(tmp_path))
    reference = frozen.load(spec.KEY, ae_dir)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "_encode_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.records(config, reference, "test")
    assert os.listdir(tmp_path) == []  # no half-written cache, nothing left behind
    monkeypatch.undo()
    records = cache.records(config, reference, "test", batch_size=100)
    x, labels = load_arrays("digits", "test", data_dir)
    assert len(records) == len(x) and not records.flips
    mean, logvar = ae_task.Codec(reference.setup.net).encode(reference.params, x[-5:])
    np.testing.assert_allclose(records[len(x) - 1]["x"], mean[-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(records[len(x) - 1]["x_logvar"], logvar[-1], rtol=1e-5,
                               atol=1e-6)
    assert records[len(x) - 1]["label"] == labels[-1]


@pytest.mark.parametrize("change, message", [
    ({"latent.cache": "yes"}, "config.latent.cache='yes' must be True or False"),
    ({"latent.autoencoder": None, "latent.cache": True}, "config.latent.cache=True caches"),
])
def test_bad_latent_cache_settings_fail_before_compute(ae_dir, data_dir, change, message):
    config = latent_config(data_dir, ae_dir, 2)
    for dotted, value in change.items():
        group, key = dotted.split(".")
        if isinstance(value, str) and key == "cache":
            config[group] = config[group].to_dict() | {key: value}
        else:
            config[group][key] = value
    with pytest.raises(config_validation.ConfigError, match=re.escape(message)):
        config_validation.validate(config)
