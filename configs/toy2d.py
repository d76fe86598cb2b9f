"""2-D toy data (two moons by default) with a residual MLP; one recipe per config string.

    python -m diffjax.main --config=configs/toy2d.py:flow --workdir=runs/toy2d_flow
    python -m diffjax.main --config=configs/toy2d.py:ddpm --config.data.dataset=ring ...

Recipes: ddpm, score_ve, score_vp, flow (default), edm -- identical apart from the keys
``diffjax.configs.RECIPES`` lists. About a minute on a 2-core CPU.
"""
from diffjax import configs


def get_config(recipe: str = "flow"):
    config = configs.default_config()
    config.data.dataset = "moons"
    config.data.batch_size = 256
    config.model = configs.default_model_config("mlp")
    config.model.hidden = 128
    config.model.depth = 3
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 100
    config.optim.schedule = "cosine"
    config.optim.end_lr_factor = 0.1
    config.training.num_steps = 3000
    config.training.log_every = 100
    config.training.eval_every = 3000
    config.training.checkpoint_every = 1000
    config.training.ema_decay = 0.995
    config.sampling.num_steps = 100
    config.sampling.num_samples = 2000
    config.eval.num_samples = 2000
    config.eval.batch_size = 2000
    # The toy sets have per-axis std <= 1.2 and span about [-3, 3]: a VE path needs
    # sigma_max of about the largest distance between points, not the default 50.
    return configs.apply_recipe(config, recipe or "flow",
                                **({"sigma_max": 5.0} if recipe == "score_ve" else {}))
