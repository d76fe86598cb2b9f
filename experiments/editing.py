"""Editing with prompts: SDEdit's realism/faithfulness trade-off and inpainting's known region.

Meng et al. 2022 ("SDEdit"): start from an input noised to ``t = strength`` and sample; small
strengths stay faithful to the input, large ones follow the prompt. On a trained
text-to-image run this takes the first ``--num`` test images, asks for the scene of *another*
test record (caption ``i + num // 2``) and reports per strength: PSNR to the input
(faithfulness), ``shapes_eval`` against the new prompt (adherence) and against the input's own
caption. Inpainting (the centre half of each image generated, the rest known, prompt = the
image's own caption) reports the largest error on the known region (must be exactly 0) and
``shapes_eval`` of the result.

    python experiments/editing.py --workdir=runs/shapes_t2i [--num=256] [--quick]

Writes ``WORKDIR/editing.csv`` / ``editing.md``.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffjax import atomic, checkpoint, data as data_lib, train  # noqa: E402
from diffjax.controlnet import editing  # noqa: E402
from diffjax.evaluate import metrics as metrics_lib  # noqa: E402
from diffjax.training import evaluation  # noqa: E402

STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = np.mean((a - b) ** 2, axis=tuple(range(1, a.ndim)))
    return float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-12))))


def centre_mask(shape) -> np.ndarray:
    """[H, W, 1]: 1 (known) outside the centre half square, 0 inside."""
    h, w = shape[:2]
    mask = np.ones((h, w, 1), np.float32)
    mask[h // 4:h - h // 4, w // 4:w - w // 4] = 0
    return mask


def run(config, workdir: str, num: int, strengths=STRENGTHS, cache_dir=None) -> list[dict]:
    setup, state, _ = train.restore_for_inference(config, workdir)
    den, cfg = setup.denoiser, config.sampling
    data_dir, dataset = config.data.get("data_dir"), config.data.dataset
    images, _ = data_lib.load_arrays(dataset, "test", data_dir, limit=2 * num)
    from diffjax.text import conditioning
    captions = conditioning.captions(dataset, "test", data_dir)[:2 * num]
    inputs, own, new = images[:num], list(captions[:num]), list(captions[num:2 * num])
    shape = (num, *setup.data_info.shape)
    key = jax.random.PRNGKey(int(cfg.seed))
    ev = dict(metrics=["shapes_eval"], dataset=dataset, data_dir=data_dir,
              cache_dir=cache_dir or "/tmp/diffjax_eval")

    def edit(prompts, **kw):
        cond, _ = evaluation.eval_conditions(setup, 0, num, np.asarray(prompts, object))
        x = editing.edit_samples(den.fn, den.path, shape, key, params=state.ema_params,
                                 target=den.target, sampler=cfg.sampler,
                                 num_steps=cfg.num_steps, cond=cond,
                                 guidance_scale=cfg.guidance_scale, nulls=setup.nulls, **kw)
        return np.asarray(x)

    def adherence(x, prompts):
        return metrics_lib.evaluate_samples(x, prompts=prompts, **ev)["shapes_eval"]

    rows = []
    for s in strengths:
        x = edit(new, init=None if s is None else inputs, strength=s)
        rows.append({"edit": "sdedit", "strength": s, "psnr_to_input": psnr(x, inputs),
                     "shapes_eval_new_prompt": adherence(x, new),
                     "shapes_eval_input_caption": adherence(x, own)})
    mask = centre_mask(setup.data_info.shape)
    x = edit(own, init=inputs, mask=mask)
    known = np.broadcast_to(mask, x.shape) > 0
    rows.append({"edit": "inpaint", "strength": 1.0,
                 "known_max_error": float(np.abs(x - inputs)[known].max()),
                 "psnr_to_input": psnr(x, inputs), "shapes_eval_input_caption": adherence(x, own)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained text-to-image run")
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="16 images, 3 strengths")
    args = parser.parse_args(argv)
    config = checkpoint.load_config(args.workdir)
    num, strengths = (16, (0.2, 0.6, 1.0)) if args.quick else (args.num, STRENGTHS)
    rows = run(config, args.workdir, num, strengths)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("edit", "strength"), k))
    atomic.write_csv(os.path.join(args.workdir, "editing.csv"), rows, keys)
    table = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n" + "".join(
        "| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                          for k in keys) + " |\n" for r in rows)
    atomic.write_text(os.path.join(args.workdir, "editing.md"), table)
    print(table)


if __name__ == "__main__":
    main()
