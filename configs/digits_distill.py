"""One- and few-step generation on 8x8 digits (diffjax.distill; DESIGN §9).

    python -m diffjax.main --config=configs/digits_distill.py:meanflow --workdir=runs/mf
    python -m diffjax.main --config=configs/digits_distill.py:progressive \
        --config.distill.teacher=runs/digits_v --config.distill.round=1 --workdir=runs/pd1
    # reflow a configs/digits.py:flow run, then distil the reflowed flow for 2 Euler steps
    # (the second run reads the couplings the first solved: config.distill.couplings_cache)
    python -m diffjax.main --config=configs/digits_distill.py:reflow \
        --config.distill.teacher=runs/digits_flow --workdir=runs/rf2
    python -m diffjax.main --config=configs/digits_distill.py:reflow \
        --config.distill.teacher=runs/digits_flow --config.distill.init_from=runs/rf2 \
        --config.distill.reflow_steps=2 --config.optim.lr=5e-4 --workdir=runs/rf2_k2

Recipes (after ``:``): progressive, consistency_distillation, consistency_training, reflow,
shortcut, meanflow. The teacher (``config.distill.teacher``) defaults to the exact digits
mixture, ``analytic:digits``; a trained run's workdir works too when it shares the student's
path. Progressive distillation trains one round per run: round ``k + 1`` names round ``k``'s
workdir as its teacher and starts from its parameters. The students are configs/digits.py's
U-Net, optimiser and EMA (that config is loaded and the keys below changed). Sample with the
few-step samplers of ``diffjax.sample`` (``config.sampling.sampler``: ``consistency``,
``mean_flow``, ``ddim`` on the student's grid, ``euler`` for reflow). A progressive student
sampled by ``ddim`` at ``num_steps = n`` takes its own grid by default (the task's
``sampling_defaults``): ``n - 1`` DDIM steps from ``t_max i / n``, then ``x0_hat`` at
``t_max / n``, which ``num_steps`` counts (ddim's ``denoise_to_zero``); a ``grid`` or
``t_min`` set in ``config.sampling`` replaces it.
"""
import importlib.util
import os

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


def _digits_config() -> ml_collections.ConfigDict:
    """configs/digits.py's config (data, U-Net, optimiser, EMA): the students are that model."""
    spec = importlib.util.spec_from_file_location(
        "configs_digits", os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(recipe: str = "meanflow") -> ml_collections.ConfigDict:
    recipe = recipe or "meanflow"
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r} of configs/digits_distill.py; valid "
                         f"recipes: {', '.join(RECIPES)}")
    task, path, target, teacher = RECIPES[recipe]
    config = _digits_config()
    config.task = task
    config.path = configs.default_path_config(path)
    config.model.target = target
    config.model.preconditioning = "none"
    config.model.embedding = configs.default_model_config("unet").embedding  # not EDM's
    config.loss = configs.default_config().loss
    config.sampling = configs.default_config().sampling
    config.sampling.sampler, config.sampling.num_steps = SAMPLERS[task]
    config.training.num_steps = 2000
    config.training.eval_every = 0
    config.distill = settings.default_config()
    config.distill.teacher = teacher
    if recipe == "meanflow":
        # MeanFlow's target holds du/dt (a jvp in t): a time embedding of frequencies up to
        # 50 per unit t instead of 1000 keeps that derivative at the scale of the velocity.
        config.model.embedding_scale = 50.0
    if recipe == "consistency_distillation":
        config.distill.s0 = config.distill.s1 = 17     # Song et al.'s fixed N = 18
    return config


# task -> the diffjax.sample sampler of its student and its default NFE.
SAMPLERS = {
    "progressive": ("ddim", 1),
    "consistency_distillation": ("consistency", 1),
    "consistency_training": ("consistency", 1),
    "reflow": ("euler", 1),
    "shortcut": ("mean_flow", 1),
    "meanflow": ("mean_flow", 1),
}
