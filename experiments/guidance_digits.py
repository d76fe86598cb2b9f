"""CFG vs CFG with a guidance interval vs autoguidance on class-conditional digits.

One class-conditional EDM digits model (``configs/digits.py:edm``, ``model.class_conditional``,
label dropout 0.1) is sampled with

* classifier-free guidance (Ho & Salimans 2022): ``D_u + w (D_c - D_u)``;
* CFG only for ``sigma`` in (0.28, 5.42] (Kynkäänniemi et al. 2024's interval for EDM2; the
  conditional model alone elsewhere);
* autoguidance (Karras et al. 2024): ``D_g + w (D_c - D_g)`` with an early checkpoint of the
  same run as the guide (``sampling.guide_workdir`` = the run, ``guide_step``);

at several scales ``w``, scored by fd_classifier (next to its floor), class accuracy and
within-class diversity of the digits CNN (``experiments/guidance.py`` has the plain CFG sweep).

    python experiments/guidance_digits.py [--out runs/experiments/guidance_digits] [--quick]

Writes ``results.csv`` and ``results.md`` under ``--out``; the run stays in ``--out/run``.
"""
from __future__ import annotations

import argparse
import os
import time

INTERVAL = (0.28, 5.42)
SCALES = (1.5, 2.0, 3.0)


def settings(guide_step: int):
    """``(label, sampling overrides)`` of every row."""
    yield "conditional (w=1)", {"guidance_scale": 1.0}
    for w in SCALES:
        yield f"CFG w={w:g}", {"guidance_scale": w}
        yield f"CFG+interval w={w:g}", {"guidance_scale": w, "guidance_interval": INTERVAL}
        yield f"auto(step {guide_step}) w={w:g}", {"guidance_scale": w, "guide_step": guide_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/experiments/guidance_digits")
    parser.add_argument("--quick", action="store_true", help="600 steps, guide at 150, 200 samples")
    args = parser.parse_args()
    steps, guide_step, num = (600, 150, 200) if args.quick else (1300, 300, 500)
    from diffjax import atomic, config_loading, train

    start = time.time()
    run = os.path.abspath(os.path.join(args.out, "run"))
    config = config_loading.load("configs/digits.py:edm", {
        "model.class_conditional": True, "loss.label_dropout": 0.1,
        "training.num_steps": steps, "training.checkpoint_every": guide_step,
        "training.keep_checkpoints": steps // guide_step + 1, "training.eval_every": 0,
        "training.progress_bar": False, "eval.num_samples": num,
        "eval.metrics": "fd_classifier,class_accuracy,diversity"}, lock=False)
    train.train(config, run)
    trained = time.time() - start
    rows = []
    for label, changes in settings(guide_step):
        cfg = config.copy_and_resolve_references()
        cfg.sampling.update(changes)
        if "guide_step" in changes:
            cfg.sampling.guide_workdir = run
        setup, state, step = train.restore_for_inference(cfg, run)
        out = os.path.join(args.out, "".join(c if c.isalnum() else "_" for c in label))
        results = train.evaluate(setup, state.ema_params, cfg, out, f"eval_{step:07d}")
        rows.append({"sampling": label, **{k: results[k] for k in (
            "fd_classifier", "fd_classifier_floor", "class_accuracy", "diversity")}})
        print(rows[-1], flush=True)
    atomic.write_csv(os.path.join(args.out, "results.csv"), rows)
    lines = [f"{steps} training steps, guide = checkpoint {guide_step}, {num} samples; "
             f"training {trained / 60:.1f} min, total {(time.time() - start) / 60:.1f} min", "",
             f"| sampling | fd_classifier (floor {rows[0]['fd_classifier_floor']:.3f}) | "
             "class accuracy | diversity |", "|---|---|---|---|"]
    lines += [f"| {r['sampling']} | {r['fd_classifier']:.3f} | {r['class_accuracy']:.3f} | "
              f"{r['diversity']:.3f} |" for r in rows]
    atomic.write_text(os.path.join(args.out, "results.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
