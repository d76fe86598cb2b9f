"""Latent diffusion on shapes (DESIGN §9): a DiT in the 8x8x4 latent space of
configs/shapes_autoencoder.py, decoded before every evaluation.

    python -m diffjax.main --config=configs/shapes_autoencoder.py --workdir=runs/shapes_ae
    python -m diffjax.main --config=configs/shapes_latent.py --workdir=runs/shapes_latent \
        --config.latent.autoencoder=runs/shapes_ae

Any run becomes a latent run with ``--config.latent.autoencoder=DIR`` (a trained autoencoder's
workdir, or a diffusers AutoencoderKL folder such as sd-vae-ft-ema): the network models
``scale * (z - shift)`` of the frozen encoder's latents (scale/shift stored with the
autoencoder), the step encodes each batch inside jit, samples are decoded and scored by the
same evaluator as a pixel run (``fd_shapes`` against real 32x32 images). Conditions pass
through untouched: this config is unconditional until the caption data path lands, after which
setting the text condition (``model.cross_attn`` / ``model.text_encoder``) makes it the latent
text-to-image job.
"""
from diffjax import configs


def get_config(recipe: str = "flow"):
    config = configs.default_config()
    config.data.dataset = "shapes"
    config.data.batch_size = 64
    config.latent.autoencoder = "runs/shapes_ae"
    config.model = configs.default_model_config("dit")
    # DiT-S width on 8x8x4 latents, one token per latent pixel (64 tokens), 6 blocks.
    config.model.update(size="S/2", patch_size=1, depth=6, hidden=256, num_heads=4)
    config.optim.lr = 3e-4
    config.optim.warmup_steps = 200
    config.optim.schedule = "cosine"
    config.optim.end_lr_factor = 0.1
    config.training.num_steps = 4000
    config.training.log_every = 100
    config.training.eval_every = 4000
    config.training.checkpoint_every = 1000
    config.training.ema_decay = 0.999
    config.sampling.num_steps = 30
    config.eval.metrics = "fd_shapes"
    config.eval.num_samples = 1000
    return configs.apply_recipe(config, recipe or "flow")
