"""DDPM++ on CIFAR-10 at its published size (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", configs/vp/cifar10_ddpmpp_continuous.py): for GPU/TPU runs.

    python -m diffjax.main --config=configs/cifar10_ddpmpp.py --workdir=runs/cifar10_ddpmpp

The default recipe is the paper's VP SDE (``score_vp``); ``:ddpm``, ``:flow``, ... train the
same network with another recipe. CIFAR-10 must be prepared with tfds beforehand (see
README.md, "On a GPU"); nothing is downloaded here.
"""
from diffjax import configs


def get_config(recipe: str = "score_vp"):
    config = configs.default_config()
    config.data.dataset = "cifar10"
    config.data.batch_size = 128
    config.data.random_flip = True
    config.data.num_workers = 4
    config.model = configs.default_model_config("unet")
    config.model.ch = 128
    config.model.ch_mult = (1, 2, 2, 2)
    config.model.num_res_blocks = 4
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.1
    config.model.resblock_updown = True      # "biggan" resblocks
    config.optim.optimizer = "adam"
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0
    config.training.num_steps = 1_300_000
    config.training.log_every = 100
    config.training.eval_every = 50_000
    config.training.checkpoint_every = 10_000
    config.training.ema_decay = 0.9999
    config.training.ema_warmup = False
    config.sampling.num_steps = 1000
    config.sampling.num_samples = 64
    # FID as papers report it: 50k samples against the 50k training images
    # (--config.eval.metrics=fid_inception --config.eval.inception_weights=<pt_inception .pth>).
    config.eval.num_samples = 50_000
    config.eval.batch_size = 500
    return configs.apply_recipe(config, recipe or "score_vp")
