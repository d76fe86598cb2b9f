"""DiT on ImageNet 256x256 in SD-VAE latents (Peebles & Xie 2023), for GPU/TPU (DESIGN §9).

    python -m diffjax.main --config=configs/imagenet256_dit.py:XL/2 --workdir=runs/dit_xl2 \
        --config.latent.autoencoder=/path/to/sd-vae-ft-ema \
        --config.data.data_dir=/path/to/tensorflow_datasets

Sizes after the colon: ``B/4`` or ``XL/2`` (any DiT size, ``S/2`` .. ``XL/8``, works). The
paper's training: AdamW at a constant 1e-4, no weight decay, batch 256, EMA 0.9999, 400K steps
(7M for the headline XL/2), horizontal flips, class-conditional with 10% label dropout,
DDPM's linear betas (T = 1000) and an eps target (the learned variance of the paper is not
implemented); sampling 250 DDPM steps with classifier-free guidance 1.5 (the FID-50K protocol;
``--config.sampling.guidance_scale=1.0`` for the unguided numbers). The latents are SD's VAE
(``stabilityai/sd-vae-ft-ema`` in diffusers format, downloaded by you), read by
``diffjax.autoencoder.load_diffusers_vae``; its ``scaling_factor`` 0.18215 comes from its
config.json.

Data: tfds ``imagenet2012`` prepared by you (``tfds build imagenet2012
--file_format=array_record``), images of every size, each resized and centre-cropped to
256x256 as ADM and DiT do (``config.data.image_size``, :mod:`diffjax.data.transforms`); the
FID reference statistics are computed on the same crops of the train split. The paper encodes
each batch in the step (the default here); ``--config.latent.cache=True`` encodes the split and
its mirror images once instead (fast-DiT's way: about 84 GB of float32 moments for 1.28M
images at 32x32x4, in ``config.latent.cache_dir``).
tests/test_latent_configs.py runs one step of it on tfds mock ImageNet through the pipeline.
"""
from diffjax import configs


def get_config(size: str = "XL/2"):
    size = size or "XL/2"
    config = configs.default_config()
    config.data.dataset = "imagenet2012"
    config.data.batch_size = 256
    config.data.random_flip = True
    config.data.image_size = 256
    config.latent.autoencoder = "sd-vae-ft-ema"
    config.model = configs.default_model_config("dit")
    config.model.size = size
    config.model.class_conditional = True
    config.loss.label_dropout = 0.1
    config.optim.update(optimizer="adamw", lr=1e-4, weight_decay=0.0, warmup_steps=0,
                        schedule="constant", grad_clip=0.0)
    config.training.update(num_steps=400_000, log_every=100, eval_every=50_000,
                           checkpoint_every=10_000, ema_decay=0.9999, ema_warmup=False)
    config.sampling.update(num_steps=250, guidance_scale=1.5)
    config.eval.num_samples = 50_000
    configs.apply_recipe(config, "ddpm")
    config.sampling.sampler = "ddpm"
    return config
