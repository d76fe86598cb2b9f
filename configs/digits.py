"""The README's main job: 8x8 digits with a small U-Net, a few minutes on a 2-core CPU.

    python -m diffjax.main --config=configs/digits.py --workdir=runs/digits
    python -m diffjax.main --config=configs/digits.py:flow --workdir=runs/digits_flow

Recipes (the part after ``:``): ddpm, score_ve, score_vp, flow, edm (default) -- identical
apart from the keys ``diffjax.configs.RECIPES`` lists. At this budget (1300 steps, 30 model
evaluations to sample) EDM gives the best samples; fd_classifier of 500 samples (real-data
floor 3.20): edm 3.30, flow 3.51, score_vp 4.61, ddpm 5.13, score_ve 33 (its
predictor-corrector sampler needs more steps: 3.61 with 200).
"""
from diffjax import configs


def get_config(recipe: str = "edm"):
    config = configs.default_config()
    config.data.dataset = "digits"
    config.data.batch_size = 128
    config.model = configs.default_model_config("unet")
    config.model.ch = 32
    config.model.ch_mult = (1, 1)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (4,)
    config.model.dropout = 0.0
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 50
    config.optim.schedule = "cosine"
    config.optim.end_lr_factor = 0.05
    config.training.num_steps = 1300
    config.training.log_every = 100
    config.training.eval_every = 1300
    config.training.checkpoint_every = 500
    config.training.ema_decay = 0.998
    config.sampling.num_steps = 30
    config.sampling.num_samples = 64
    config.eval.num_samples = 500
    # Digits in [-1, 1]^64 lie within a distance of about 16 of each other: sigma_max = 20
    # covers them (Song & Ermon 2020, technique 1) without wasting steps at huge noise.
    return configs.apply_recipe(config, recipe or "edm",
                                **({"sigma_max": 20.0} if recipe == "score_ve" else {}))
