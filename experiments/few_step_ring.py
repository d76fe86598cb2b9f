"""Intuition figure for few-step generation (issue 16): paths from the same noise on the 2-D ring.

    python experiments/few_step_ring.py --workdir=runs/experiments/few_step_ring \
        [--steps=1500] [--out=experiments/figures/few_step_ring.png]

Three panels, the same 24 noises ``eps`` in each:

* the exact teacher's probability-flow ODE (``GaussianMixture.ring()`` on the rectified-flow
  path, 100 Euler steps): curved trajectories;
* a reflowed flow (``task=reflow`` on that teacher's couplings, an MLP): nearly straight
  trajectories, so its one Euler step (dashed end) lands close to its ODE's end;
* a consistency model (``task=consistency_distillation`` from the same exact teacher, on the
  ``edm`` path): one jump from the noise (drawn at ``eps = x_T / sigma_max``) to ``f(x_T, T)``.

The ring's samples are drawn in grey. Both students train on exact mixture samples (the
``MixtureBatches`` of ``few_step.py``); their workdirs are reused when re-run.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from diffjax import analytic, configs, paths, train  # noqa: E402
from diffjax.distill import settings  # noqa: E402
from experiments.few_step import MixtureBatches  # noqa: E402

# method -> (path, model.target)
STUDENTS = {"reflow": ("rectified_flow", "velocity"),
            "consistency_distillation": ("edm", "x0")}


def student_config(method: str, steps: int):
    """configs/toy2d.py's MLP on the ring, as a student of the exact ring mixture."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("toy2d", os.path.join(REPO, "configs",
                                                                        "toy2d.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("flow")
    path, target = STUDENTS[method]
    config.data.dataset = "ring"
    config.task = method
    config.path = configs.default_path_config(path)
    config.model.target, config.model.preconditioning = target, "none"
    config.training.num_steps = steps
    config.training.checkpoint_every = steps
    config.training.eval_every = 0
    config.training.progress_bar = False
    config.distill = settings.default_config()
    config.distill.teacher = "analytic:ring"
    if method == "consistency_distillation":
        config.distill.s0 = config.distill.s1 = 17
    return config


def trained(method: str, workdir: str, steps: int, mixture):
    from diffjax.training.setup import build
    config = student_config(method, steps)
    state = train.train(config, os.path.join(workdir, method),
                        batches_fn=lambda c, i, m: MixtureBatches(mixture, c.data.batch_size,
                                                                  c.seed))
    return build(config), state.ema_params


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", default=os.path.join(REPO, "experiments", "figures",
                                                      "few_step_ring.png"))
    args = parser.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixture = analytic.GaussianMixture.ring()
    eps = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (24, 2)))
    rf = paths.get("rectified_flow")
    ode = exact_ode(mixture, rf, eps)
    setup, params = trained("reflow", args.workdir, args.steps, mixture)
    den = setup.denoiser
    flow = euler(den.fn, params, rf, eps, 100)
    flow_1 = euler(den.fn, params, rf, eps, 1)[-1]
    setup, params = trained("consistency_distillation", args.workdir, args.steps, mixture)
    cm_path = setup.denoiser.path
    x_T = eps * float(cm_path.prior_std())
    t_max = np.full((eps.shape[0],), cm_path.t_max, np.float32)
    jump = np.asarray(setup.denoiser.fn(params, x_T, t_max, {}))
    data = np.asarray(mixture.sample(jax.random.PRNGKey(1), 1500)[0])

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), sharex=True, sharey=True)
    titles = ["exact teacher: probability-flow ODE", "reflowed flow: ODE (solid), 1 step (dots)",
              "consistency model: one jump"]
    for ax, title in zip(axes, titles):
        ax.scatter(data[:, 0], data[:, 1], s=2, c="0.8", zorder=0)
        ax.scatter(eps[:, 0], eps[:, 1], s=12, c="k", zorder=3, label="noise eps")
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
    for i in range(eps.shape[0]):
        axes[0].plot(ode[:, i, 0], ode[:, i, 1], c="C0", lw=1)
        axes[1].plot(flow[:, i, 0], flow[:, i, 1], c="C1", lw=1)
        axes[1].plot([eps[i, 0], flow_1[i, 0]], [eps[i, 1], flow_1[i, 1]], c="C1", lw=0.8,
                     ls=":")
        axes[2].annotate("", jump[i], eps[i], arrowprops=dict(arrowstyle="->", color="C2",
                                                              lw=1))
    axes[0].scatter(ode[-1, :, 0], ode[-1, :, 1], s=12, c="C0", zorder=4, label="ODE end")
    axes[1].scatter(flow_1[:, 0], flow_1[:, 1], s=12, c="C1", zorder=4, label="1-step end")
    axes[2].scatter(jump[:, 0], jump[:, 1], s=12, c="C2", zorder=4, label="f(x_T, T)")
    axes[2].scatter(ode[-1, :, 0], ode[-1, :, 1], s=30, facecolors="none", edgecolors="C0",
                    zorder=4, label="teacher ODE end")
    for ax in axes:
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle("Same noise, three ways to the ring (2-D Gaussian-mixture ring, "
                 f"students trained {args.steps} steps)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}; mean |1-step end - ODE end|: reflow "
          f"{np.mean(np.linalg.norm(flow_1 - flow[-1], axis=-1)):.3f}, consistency vs teacher "
          f"{np.mean(np.linalg.norm(jump - ode[-1], axis=-1)):.3f}; straightness teacher "
          f"{straightness(ode):.4f}, reflowed {straightness(flow):.4f}")


def straightness(tr: np.ndarray) -> float:
    """Liu et al.'s S of Euler states ``tr: [K + 1, n, d]`` (t = 1 -> 0): the mean over steps
    and elements of ``((x_1 - x_0) - v_k)^2``, ``v_k = K (x_k - x_{k+1})``."""
    v = (tr[:-1] - tr[1:]) * (tr.shape[0] - 1)
    return float(np.mean(((tr[0] - tr[-1])[None] - v) ** 2))


def exact_ode(mixture, path, eps, num_steps: int = 100) -> np.ndarray:
    """``[num_steps + 1, n, 2]``: Euler on the exact mixture's ODE from ``eps`` at t = 1."""
    return euler(lambda p, x, t, c: mixture.model_fn(path, "velocity")(x, t), None, path, eps,
                 num_steps)


def euler(model_fn, params, path, eps, num_steps: int) -> np.ndarray:
    """Euler states ``[num_steps + 1, n, 2]`` of a velocity model from ``x_1 = eps``."""
    xs, x = [eps], eps
    ts = np.linspace(1.0, 0.0, num_steps + 1).astype(np.float32)
    step = jax.jit(lambda p, x, t, s: x + (s - t) * model_fn(p, x, np.full((x.shape[0],), 0,
                                                                           np.float32) + t, {}))
    for t, s in zip(ts[:-1], ts[1:]):
        x = np.asarray(step(params, x, t, s))
        xs.append(x)
    return np.stack(xs)


if __name__ == "__main__":
    main()
