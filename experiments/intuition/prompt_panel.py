"""The page's prompt panel: one prompt of a trained text-to-image model as the guidance moves.

Given ``--t2i_workdir`` (a run of ``configs/shapes_t2i.py``), every slider position samples
the same noise for one prompt at guidance scale ``w`` (``w = 0`` unconditional, ``w = 1`` the
conditional model, Ho & Salimans 2022) and shows the samples with two numbers the library
computes for that frame: ``adherence`` — the fraction of the samples whose detected objects
satisfy the prompt (``diffjax.evaluate.shapes_eval.adherence``, exact on this world) — and
``diversity`` — ``sqrt(trace Cov)`` of the samples' evaluator features (how different the
samples are from each other). Adherence rises with ``w``; diversity falls.
"""
from __future__ import annotations

import copy

import numpy as np

from experiments.intuition import frames, guidance_panel

DEFAULT_PROMPT = "a red circle above a blue square"


def prompt_samples(workdir: str, prompt: str, w: float, n: int, seed: int):
    """``n`` samples of ``prompt`` at guidance ``w`` from the newest checkpoint of ``workdir``
    (same noise at every ``w``), and the step they came from."""
    from diffjax import checkpoint, train
    from diffjax.training import evaluation

    config = checkpoint.load_config(workdir)
    if config is None:
        raise ValueError(f"--t2i_workdir={workdir} holds no config.json (a shapes_t2i run)")
    setup, state, step = _restored(workdir, config)
    sampling = copy.deepcopy(config.sampling)
    sampling.guidance_scale = float(w)
    sampling.seed = seed
    x, _ = evaluation.generate(setup, state.ema_params, sampling, n, n, progress=False,
                               prompts=np.asarray([prompt] * n, dtype=object))
    return x, step, config


_RESTORED: dict = {}


def _restored(workdir: str, config):
    if workdir not in _RESTORED:
        from diffjax import train
        _RESTORED[workdir] = train.restore_for_inference(config, workdir)
    return _RESTORED[workdir]


def frame_numbers(samples: np.ndarray, prompt: str) -> dict:
    """``adherence`` and ``diversity`` of one frame's samples (see the module docstring)."""
    from diffjax.evaluate import shapes_eval

    ok = shapes_eval.adherence(samples, [prompt] * len(samples))
    features = shapes_eval.evaluator().features(samples)
    return {"adherence": float(np.mean(ok)),
            "diversity": float(np.sqrt(np.trace(np.cov(features.T))))}


def prompt_panel(out_dir: str, workdir: str, *, prompt: str = DEFAULT_PROMPT,
                 fast: bool = False, seed: int = 0) -> dict:
    n = 8 if fast else 16
    columns = [f"\"{prompt}\""]
    panel = None
    for w in guidance_panel.SCALES:
        x, step, config = prompt_samples(workdir, prompt, w, n, seed)
        if panel is None:
            panel = frames.new_panel(
                "prompt", "A prompt under guidance: adherence against diversity",
                f"{n} samples of one prompt from the same noise at each guidance scale w "
                "(0 = unconditional, 1 = conditional). adherence: the fraction whose detected "
                "objects satisfy the prompt (shapes_eval's detector); diversity: sqrt(trace "
                "Cov) of their evaluator features.",
                f"step {step} of {workdir} ({config.model.text_encoder} text, "
                f"{config.sampling.sampler} x {config.sampling.num_steps})",
                f"python -m experiments.intuition --html=DIR --t2i_workdir={workdir}",
                "w", [f"{v:g}" for v in guidance_panel.SCALES], columns)
        tiled = np.concatenate([np.concatenate(list(x[r * 4:(r + 1) * 4]), axis=1)
                                for r in range(n // 4)], axis=0)
        name = frames.save_rgb(out_dir, f"prompt/w_{w:g}".replace(".", "_"), tiled)
        frames.add_position(panel, [name], [frame_numbers(x, prompt)])
    return panel


__all__ = ["DEFAULT_PROMPT", "frame_numbers", "prompt_panel", "prompt_samples"]
