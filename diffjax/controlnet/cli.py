"""``--mode=sample`` with control or editing inputs (:mod:`diffjax.controlnet.editing`).

Writes ``samples/edit_<step>.png``: one row per prompt (or one row without prompts), the
inputs first (init image, mask, control map, each when given) then ``samples_per_prompt``
outputs; and ``samples/edit_<step>.npz`` (``x``, ``prompts``, ``control``, ``init_image``,
``mask``). A ControlNet run's base is read by reference from ``config.controlnet.base`` and
refused when it is not the one the run was trained against.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import jax
import numpy as np

from diffjax.controlnet import editing


def model_and_params(config, source: str, recipe, ema_params):
    """``(denoiser, params)`` to sample from: a ControlNet's own + its base's."""
    if config.get("task") != "controlnet":
        return recipe.denoiser, ema_params
    from diffjax.controlnet import network, task
    from diffjax.training import frozen

    reference = frozen.load(task.BASE_KEY, str(config.controlnet.base))
    frozen.check_unchanged(source, {task.BASE_KEY: reference})
    den = recipe.denoiser
    den = dataclasses.replace(den, net=den.net.with_scale(config.sampling.control_scale))
    return den, network.with_base(ema_params, reference.params)


def conditions(recipe, prompts: Optional[Sequence[str]], per: int, control) -> dict:
    """The condition of ``per`` samples per prompt (a text model without prompts: the empty
    prompt) with ``control`` [H, W, 1] (or None) for every row."""
    cond = {}
    if prompts is not None:
        encoded = recipe.text.encode(list(prompts))
        cond = {k: np.repeat(np.asarray(v), per, axis=0) for k, v in encoded.items()}
    elif recipe.text is not None:
        cond = {k: np.asarray(v) for k, v in recipe.text.example(per).items()}
    if control is not None:
        rows = per * (1 if prompts is None else len(prompts))
        cond["control"] = np.broadcast_to(control, (rows, *control.shape)).copy()
    return cond


def run(config, workdir: str, source: str, prompts: Optional[Sequence[str]]) -> None:
    """Reads and checks the inputs, restores the run, samples, writes the grid and npz."""
    from diffjax import configs, data as data_lib, parallel, train

    shape = tuple(data_lib.info_of(config.data).shape)
    inputs = editing.read_inputs(config, shape)  # refusals before any restoring
    per = int(config.sampling.samples_per_prompt)
    recipe, state, step = train.restore_for_inference(config, source)
    den, params = model_and_params(config, source, recipe, state.ema_params)
    cond = conditions(recipe, prompts, per, inputs["control"])
    n = per * (1 if prompts is None else len(prompts))
    options = configs.sampler_options(config.sampling)
    if config.sampling.get("grid") is not None:
        options["grid"] = config.sampling.grid
    if cond and config.sampling.guidance_scale != 1.0:
        options.update(guidance_scale=config.sampling.guidance_scale, nulls=recipe.nulls)
    key = jax.random.PRNGKey(int(config.sampling.seed))
    x = editing.edit_samples(den.fn, den.path, (n, *shape), key, params=params,
                             target=den.target, sampler=config.sampling.sampler,
                             num_steps=config.sampling.num_steps, init=inputs["init_image"],
                             mask=inputs["mask"], strength=float(config.sampling.strength),
                             cond=cond or None, **options)
    x = np.asarray(parallel.to_host(x))
    if not parallel.is_main_process():
        return
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    name = os.path.join(out_dir, f"edit_{step:07d}")
    shown = [inputs["init_image"], None if inputs["mask"] is None else inputs["mask"] * 2 - 1,
             inputs["control"]]
    shown = [np.broadcast_to(s, shape) for s in shown if s is not None]
    rows = [np.stack(shown + list(x[r * per:(r + 1) * per]))
            for r in range(n // per)]
    _save_rows(f"{name}.png", rows)
    np.savez(f"{name}.npz", x=x, prompts=np.asarray(prompts or [], str),
             **{k: v for k, v in inputs.items() if v is not None})
    print(f"edited {len(x)} samples from step {step} of {source}\n  grid: {name}.png "
          f"(inputs first: init image, mask, control; then the samples)\n  samples: "
          f"{name}.npz", flush=True)


def _save_rows(path: str, rows: list) -> None:
    from PIL import Image

    from diffjax import reporting

    grid = np.concatenate([reporting.image_grid(r, ncols=len(r)) for r in rows], axis=0)
    grid = np.repeat(np.repeat(grid, 4, axis=0), 4, axis=1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


__all__ = ["conditions", "model_and_params", "run"]
