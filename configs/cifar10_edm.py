"""EDM's DDPM++ on CIFAR-10, unconditional (Karras et al. 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models", Table 7, config F without augmentation): for
GPU/TPU runs.

    python -m diffjax.main --config=configs/cifar10_edm.py --workdir=runs/cifar10_edm

Batch 512, lr 1e-3 ramped over 10 Mimg, EMA half-life 0.5 Mimg, 200 Mimg in all; sampled
with Heun on 18 steps (35 evaluations). EDM's non-leaking augmentation is not
reproduced; random flips are used instead.
"""
from diffjax import configs


def get_config(recipe: str = "edm"):
    config = configs.default_config()
    config.data.dataset = "cifar10"
    config.data.batch_size = 512
    config.data.random_flip = True
    config.data.num_workers = 4
    config.model = configs.default_model_config("unet")
    config.model.ch = 128
    config.model.ch_mult = (2, 2, 2)
    config.model.num_res_blocks = 4
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.13
    config.model.resblock_updown = True
    config.optim.optimizer = "adam"
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 19_531          # 10 Mimg / 512
    config.optim.grad_clip = 0.0                # EDM does not clip
    config.training.num_steps = 390_625         # 200 Mimg / 512
    config.training.log_every = 100
    config.training.eval_every = 20_000
    config.training.checkpoint_every = 5_000
    config.training.ema_decay = 0.99929         # half-life of 0.5 Mimg at 512 per step
    config.training.ema_warmup = False
    config.sampling.num_steps = 35
    config.sampling.num_samples = 64
    # FID as papers report it: 50k samples against the 50k training images
    # (--config.eval.metrics=fid_inception --config.eval.inception_weights=<pt_inception .pth>).
    config.eval.num_samples = 50_000
    config.eval.batch_size = 500
    config = configs.apply_recipe(config, recipe or "edm")
    if (recipe or "edm") == "edm":
        # EDM feeds c_noise = log(sigma)/4 to DDPM++'s positional embedding unscaled.
        config.model.embedding = "sinusoidal"
        config.model.embedding_scale = 1.0
    return config
