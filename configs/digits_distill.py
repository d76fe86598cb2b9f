"""One- and few-step generation on 8x8 digits (diffjax.distill; DESIGN §9).

    python -m diffjax.main --config=configs/digits_distill.py:meanflow --workdir=runs/mf
    python -m diffjax.main --config=configs/digits_distill.py:progressive \
        --config.distill.teacher=runs/digits_v --config.distill.round=1 --workdir=runs/pd1

Recipes (after ``:``): progressive, consistency_distillation, consistency_training, reflow,
shortcut, meanflow. The teacher (``config.distill.teacher``) defaults to the exact digits
mixture, ``analytic:digits``; a trained run's workdir works too when it shares the student's
path. Progressive distillation trains one round per run: round ``k + 1`` names round ``k``'s
workdir as its teacher and starts from its parameters. Sample with
:mod:`diffjax.distill.sampling` (the run's evaluation during training is off: the generic
samplers do not take these models' few-step form).
"""
import ml_collections

from diffjax import configs
from diffjax.distill import settings

# recipe -> (task, path, model.target, teacher or None)
RECIPES = {
    "progressive": ("progressive", "vp_cosine", "v", "analytic:digits"),
    "consistency_distillation": ("consistency_distillation", "edm", "x0", "analytic:digits"),
    "consistency_training": ("consistency_training", "edm", "x0", None),
    "reflow": ("reflow", "rectified_flow", "velocity", "analytic:digits"),
    "shortcut": ("shortcut", "rectified_flow", "velocity", None),
    "meanflow": ("meanflow", "rectified_flow", "velocity", None),
}


def get_config(recipe: str = "meanflow") -> ml_collections.ConfigDict:
    recipe = recipe or "meanflow"
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r} of configs/digits_distill.py; valid "
                         f"recipes: {', '.join(RECIPES)}")
    task, path, target, teacher = RECIPES[recipe]
    config = configs.default_config()
    config.task = task
    config.data.dataset = "digits"
    config.data.batch_size = 128
    config.path = configs.default_path_config(path)
    config.model = configs.default_model_config("unet")
    config.model.ch = 32
    config.model.ch_mult = (1, 1)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (4,)
    config.model.dropout = 0.0
    config.model.target = target
    config.model.preconditioning = "none"
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 50
    config.optim.schedule = "cosine"
    config.optim.end_lr_factor = 0.05
    config.training.num_steps = 2000
    config.training.log_every = 100
    config.training.eval_every = 0
    config.training.checkpoint_every = 500
    config.training.ema_decay = 0.998
    config.distill = settings.default_config()
    config.distill.teacher = teacher
    if recipe == "meanflow":
        # MeanFlow's target holds du/dt (a jvp in t): a time embedding of frequencies up to
        # 50 per unit t instead of 1000 keeps that derivative at the scale of the velocity.
        config.model.embedding_scale = 50.0
    if recipe == "consistency_distillation":
        config.distill.s0 = config.distill.s1 = 17     # Song et al.'s fixed N = 18
    return config
