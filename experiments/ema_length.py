"""The EMA length as a post-hoc hyper-parameter (EDM2, Karras et al. 2024, Sec. 3, Fig. 5).

Trains the digits main job (``configs/digits.py``, EDM recipe) once with
``training.ema=power`` (EDM2's two power-function EMAs, sigma_rel 0.05 and 0.10, snapshots
every ``--every`` steps), reconstructs the EMA for each sigma_rel of a grid with
``python -m diffjax.ema`` (:func:`diffjax.ema.reconstruct`), and evaluates fd_classifier of
each (``--config.sampling.ema=sigma_rel:<s>``), next to the run's classic EMA (decay 0.998)
and the real-data floor. EDM2 finds FID a smooth function of sigma_rel with an interior
optimum whose place depends on the model and the training length.

    python experiments/ema_length.py [--out runs/experiments/ema_length] [--quick]

Writes ``results.csv``, ``results.md`` and ``ema_length.png`` (fd_classifier vs sigma_rel)
under ``--out``; the run stays in ``--out/run`` (re-running reuses it and the
reconstructions).
"""
from __future__ import annotations

import argparse
import os
import time

SIGMA_RELS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.10, 0.13, 0.16, 0.20, 0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/experiments/ema_length")
    parser.add_argument("--quick", action="store_true",
                        help="400 steps, snapshots every 20, 200 samples per evaluation")
    parser.add_argument("--steps", type=int, default=1300)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--num_samples", type=int, default=500)
    args = parser.parse_args()
    steps, every, num = (400, 20, 200) if args.quick else (args.steps, args.every,
                                                           args.num_samples)
    from diffjax import config_loading, ema, train

    start = time.time()
    run = os.path.join(args.out, "run")
    config = config_loading.load("configs/digits.py:edm", {
        "training.num_steps": steps, "training.ema": "power",
        "training.ema_snapshot_every": every, "training.eval_every": 0,
        "training.checkpoint_every": steps, "training.progress_bar": False,
        "eval.num_samples": num}, lock=False)
    train.train(config, run)
    trained = time.time() - start
    for s, path, written, err in ema.reconstruct(run, SIGMA_RELS):
        print(f"sigma_rel={s:g}: {path} (weights fit error {err:.1e})", flush=True)
    rows = []
    for label in ["classic"] + [f"sigma_rel:{s:g}" for s in SIGMA_RELS]:
        cfg = config.copy_and_resolve_references()
        cfg.sampling.ema = "" if label == "classic" else label
        setup, state, step = train.restore_for_inference(cfg, run)
        out = os.path.join(args.out, label.replace(":", "_"))
        results = train.evaluate(setup, state.ema_params, cfg, out, f"eval_{step:07d}")
        rows.append({"ema": label, "fd_classifier": results["fd_classifier"],
                     "fd_classifier_floor": results["fd_classifier_floor"]})
        print(rows[-1], flush=True)
    _write(args.out, rows, steps, every, num, trained, time.time() - start)


def _write(out, rows, steps, every, num, trained, total) -> None:
    from diffjax import atomic

    atomic.write_csv(os.path.join(out, "results.csv"), rows)
    power = [r for r in rows if r["ema"] != "classic"]
    best = min(power, key=lambda r: r["fd_classifier"])
    interior = best is not power[0] and best is not power[-1]
    lines = [f"{steps} steps, snapshots every {every}, {num} samples per evaluation; "
             f"training {trained / 60:.1f} min, total {total / 60:.1f} min", "",
             "| EMA | fd_classifier | floor |", "|---|---|---|"]
    lines += [f"| {r['ema']} | {r['fd_classifier']:.3f} | {r['fd_classifier_floor']:.3f} |"
              for r in rows]
    lines.append(f"\nbest: {best['ema']} ({'interior' if interior else 'at the grid edge'})")
    atomic.write_text(os.path.join(out, "results.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [float(r["ema"].split(":")[1]) for r in power]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(x, [r["fd_classifier"] for r in power], "o-", label="post-hoc power EMA")
    classic = next(r for r in rows if r["ema"] == "classic")
    ax.axhline(classic["fd_classifier"], color="tab:orange", ls="--", label="classic EMA 0.998")
    ax.axhline(classic["fd_classifier_floor"], color="k", ls=":", label="real-data floor")
    ax.set(xlabel="sigma_rel", ylabel="fd_classifier", title="EMA length, reconstructed post hoc")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ema_length.png"), dpi=120)


if __name__ == "__main__":
    main()
