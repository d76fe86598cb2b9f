"""Scores a ControlNet run: control adherence with its ceiling and floor, and the prompt.

The first ``num`` test records give the prompts (their captions or precomputed text), the
controls (their maps of the run's kind) and the real images (the ``_real`` ceiling). The
ControlNet samples from each prompt and control; the *uncontrolled* floor is the same
sampler, prompts and noise at ``control_scale = 0``, which is exactly the base model (every
residual is multiplied by 0). ``shapes_eval`` of both shows whether control breaks the prompt.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import numpy as np

from diffjax.controlnet import maps
from diffjax.evaluate import control


def score(config, workdir: str, num: int = 256, cache_dir: Optional[str] = None) -> dict:
    """``{control_f1|control_iou (+_real, _uncontrolled), shapes_eval(+_uncontrolled), step}``
    of the newest checkpoint of the ControlNet run in ``workdir``."""
    from diffjax import data as data_lib, sample, train
    from diffjax.controlnet import cli
    from diffjax.evaluate import metrics as metrics_lib
    from diffjax.training import evaluation

    recipe, state, step = train.restore_for_inference(config, workdir)
    den, params = cli.model_and_params(config, workdir, recipe, state.ema_params)
    kind, dataset = str(config.controlnet.kind), config.data.dataset
    data_dir = config.data.get("data_dir")
    controls = maps.records_maps(kind, dataset, "test", data_dir)[:num]
    real, _ = data_lib.load_arrays(dataset, "test", data_dir, limit=num)
    cond, what = evaluation.eval_conditions(recipe, 0, num)
    cond = {**(cond or {}), "control": controls}
    shape = (num, *recipe.data_info.shape)
    cfg = config.sampling
    kw = dict(params=params, target=den.target, sampler=cfg.sampler, num_steps=cfg.num_steps,
              cond={k: np.asarray(v) for k, v in cond.items()}, guidance_scale=cfg.guidance_scale,
              nulls=recipe.nulls)
    key = jax.random.PRNGKey(int(cfg.seed))
    base_den = dataclasses.replace(den, net=den.net.with_scale(0.0))
    x = np.asarray(sample(den.fn, den.path, shape, key, **kw))
    x_base = np.asarray(sample(base_den.fn, den.path, shape, key, **kw))
    name = "control_iou" if kind == "segmentation" else "control_f1"
    out = control.evaluate_control(name, x, controls, real_images=real, uncontrolled=x_base)
    if what is not None and dataset == "shapes":
        ev = dict(metrics=["shapes_eval"], dataset=dataset, data_dir=data_dir,
                  cache_dir=cache_dir or config.eval.get("cache_dir") or "/tmp/diffjax_eval",
                  prompts=list(what))
        out["shapes_eval"] = metrics_lib.evaluate_samples(x, **ev)["shapes_eval"]
        out["shapes_eval_uncontrolled"] = metrics_lib.evaluate_samples(x_base, **ev)["shapes_eval"]
    return {"step": int(step), **out}


__all__ = ["score"]
