"""The first stage of latent diffusion on shapes: a KL autoencoder, f = 4 (DESIGN §9).

    python -m diffjax.main --config=configs/shapes_autoencoder.py --workdir=runs/shapes_ae
    python -m diffjax.main --config=configs/shapes_latent.py \
        --config.latent.autoencoder=runs/shapes_ae --workdir=runs/shapes_latent

SD's AutoencoderKL design (diffjax.autoencoder.model) at shapes' size: 32x32x3 images ->
8x8x4 latents (12x fewer numbers), channels 32/64/64, one residual block per level, attention
in the middle, L1 reconstruction + 1e-6 KL (SD's weight). The evaluation reports ``psnr`` on
the test split, ``fd_shapes_recon`` next to its floor, and the latent mean/std; it stores the
latents' shift and scale in ``latent_stats.json``, which a latent run reads.
"""
from diffjax import configs
from diffjax.autoencoder import spec


def get_config(arg: str = ""):
    del arg
    config = configs.default_config()
    config.task = "autoencoder"
    config.data.dataset = "shapes"
    config.data.batch_size = 64
    config.model = configs.default_model_config("autoencoder")
    config.autoencoder = spec.autoencoder_config()
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 100
    config.optim.schedule = "cosine"
    config.optim.end_lr_factor = 0.05
    config.training.num_steps = 4000
    config.training.log_every = 100
    config.training.eval_every = 4000
    config.training.checkpoint_every = 1000
    config.training.ema_decay = 0.999
    config.eval.num_samples = 1000
    config.eval.batch_size = 250
    return config
