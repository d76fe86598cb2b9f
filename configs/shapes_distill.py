"""One- and few-step text-to-image on `shapes` (diffjax.distill; DESIGN §9): the recipes of
configs/digits_distill.py for configs/shapes_t2i.py's text-conditioned U-Net.

    # the teacher: the text-to-image main job (rectified flow, velocity, MiniLM text)
    python -m diffjax.main --config=configs/shapes_t2i.py --workdir=runs/shapes_t2i
    # reflow it: couplings of the teacher's guided ODE, one training caption each
    python -m diffjax.main --config=configs/shapes_distill.py:reflow \
        --config.distill.teacher=runs/shapes_t2i --workdir=runs/shapes_rf
    # then Liu et al.'s k-step distillation of the reflowed student, on the same couplings
    python -m diffjax.main --config=configs/shapes_distill.py:reflow \
        --config.distill.teacher=runs/shapes_t2i --config.distill.init_from=runs/shapes_rf \
        --config.distill.reflow_steps=2 --workdir=runs/shapes_rf_k2

Recipes (after ``:``): progressive, consistency_distillation, consistency_training, reflow,
shortcut, meanflow; each keeps configs/shapes_t2i.py's data, network, text encoder and
optimiser and changes what digits_distill changes. There is no exact mixture of this world,
so a recipe that needs a teacher needs ``config.distill.teacher`` (a run of the student's
path and data shape). The teacher is read under the main job's own guidance, scale 3 inside
``sigma/alpha <= 2`` (``config.distill.guidance_scale``, ``guidance_interval``;
diffjax.distill.teacher): the student learns the guided field and samples it unguided, one
network call a step. Meanflow and shortcut train the conditional field from scratch without
a teacher (their tasks do not drop the text, so there is no unconditional model to guide
with either). Consistency distillation needs a teacher on its ``edm`` path: the rectified-flow
main job is refused by the teacher's path check (train one with
``--config=configs/shapes_t2i.py --config.path.name=edm --config.model.target=x0``).
Scored like the main job: ``shapes_eval`` and ``fd_shapes`` on the test captions.
"""
import importlib.util
import os

import ml_collections

from diffjax import configs
from diffjax.distill import settings


def _sibling(name: str, *args):
    """``configs/<name>.py``'s ``get_config(*args)`` (configs are files, not a package)."""
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(f"configs_{name}",
                                                  os.path.join(here, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(recipe: str = "reflow") -> ml_collections.ConfigDict:
    recipe = recipe or "reflow"
    digits = _sibling("digits_distill")
    if recipe not in digits.RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r} of configs/shapes_distill.py; valid "
                         f"recipes: {', '.join(digits.RECIPES)}")
    task, path, target, _ = digits.RECIPES[recipe]
    config = _sibling("shapes_t2i").get_config("cpu")
    config.task = task
    # the teacher's path (rectified flow) except where the method needs EDM's finite top
    # noise level (the consistency function's boundary scalings)
    path = "edm" if task.startswith("consistency") else "rectified_flow"
    config.path = configs.default_path_config(path)
    config.model.target = "velocity" if path == "rectified_flow" else target
    config.model.preconditioning = "none"
    config.loss.time_sampling = "logit_normal" if path == "rectified_flow" else "uniform"
    config.sampling.sampler, config.sampling.num_steps = digits.SAMPLERS[task]
    config.sampling.guidance_scale = 1.0   # a guided teacher's student is guided already
    config.sampling.guidance_interval = None
    config.training.num_steps = 2000
    config.training.eval_every = 0
    config.distill = settings.default_config()
    config.distill.guidance_scale, config.distill.guidance_interval = config_t2i_guidance()
    config.distill.num_couplings = 2048     # 2048 guided RK4 solves: ~26 min on 2 cores
    config.distill.ode_steps = 8
    config.distill.coupling_batch = 256     # the guided U-Net on 512 rows at a time
    config.distill.steps = (16, 8, 4, 2, 1)
    if recipe == "meanflow":
        config.model.embedding_scale = 50.0   # as configs/digits_distill.py
    if recipe == "consistency_distillation":
        config.distill.s0 = config.distill.s1 = 17
    return config


def config_t2i_guidance() -> tuple:
    """The main job's sampling guidance ``(scale, interval)``, which the teacher is read under."""
    base = configs.default_config()
    configs.apply_shapes_t2i(base)
    return float(base.sampling.guidance_scale), tuple(base.sampling.guidance_interval)
