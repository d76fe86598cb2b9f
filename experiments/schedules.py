"""Training noise distributions: linear vs cosine (Nichol & Dhariwal 2021) vs EDM's log-normal.

Models identical except for the distribution of noise levels seen in training: the
same U-Net, eps target and unweighted MSE (DDPM's L_simple), the same 1300 steps, all on
variance-preserving paths:

* ``linear``: DDPM's linear betas (path ``ddpm``), ``t`` uniform over the 1000 steps;
* ``cosine``: the cosine schedule (path ``vp_cosine``), ``t`` uniform;
* ``edm``: on the cosine path, but ``log(sigma/alpha) ~ N(-1.2, 1.2^2)`` (EDM's training
  distribution; EDM's preconditioning and weighting are *not* used, to vary one thing);
* ``cosine_matched``, ``edm_matched``: the same on the cosine path cut at ``t_max = 0.996``,
  the log-SNR range of the linear path (see ``MATCHED``);
* ``*_v``: linear, cosine_matched and edm_matched with the v target instead of eps;
* ``*_clip``: the eps models sampled with ``clip_x0 = 1`` (x0_hat clipped to the data range).

Each is sampled with DDIM (eta = 0) on its own path at 10 and 50 steps.

    python -m diffjax.sweep --sweep=experiments/schedules.py --workdir=runs/experiments/schedules
"""
from diffjax.sweep import Plot, Sweep

from experiments._common import DIGITS_QUICK

# t_max = 0.996 puts the cosine path's noisiest point at the linear path's log-SNR (-10.1,
# alpha = 0.0063); its default 0.999 goes to -12.9 (alpha = 0.0016), where an eps model's
# x0_hat = (x - sigma eps_hat) / alpha multiplies the model's error by 640.
MATCHED = {"path.t_max": 0.996}
SCHEDULES = {
    "linear": {"path.name": "ddpm", "loss.time_sampling": "discrete"},
    "cosine": {"path.name": "vp_cosine", "loss.time_sampling": "uniform"},
    "edm": {"path.name": "vp_cosine", "loss.time_sampling": "lognormal"},
    "cosine_matched": {"path.name": "vp_cosine", "loss.time_sampling": "uniform", **MATCHED},
    "edm_matched": {"path.name": "vp_cosine", "loss.time_sampling": "lognormal", **MATCHED},
}
# The same three distributions with v-prediction (Salimans & Ho 2022), whose x0_hat stays
# bounded as alpha -> 0: separates the noise distribution from eps's instability there.
SCHEDULES.update({f"{name}_v": {**SCHEDULES[name], "model.target": "v"}
                  for name in ("linear", "cosine_matched", "edm_matched")})
# The eps models again with x0_hat clipped to the data range [-1, 1] while sampling (Ho et al.
# 2020's clip_denoised, as improved-diffusion samples): bounds the sigma/alpha amplification of
# eps_hat's error at the highest noise without retraining (same trained models).
SCHEDULES.update({f"{name}_clip": {**SCHEDULES[name], "sampling.clip_x0": 1.0}
                  for name in ("linear", "cosine", "edm", "cosine_matched", "edm_matched")})


def _grid(steps):
    return [{"name": f"{name},steps={n}", "tag.schedule": name, **keys, "sampling.num_steps": n}
            for name, keys in SCHEDULES.items() for n in steps]


SWEEP = Sweep(
    config="configs/digits.py:ddpm",
    overrides={"sampling.sampler": "ddim", "eval.metrics": "fd_classifier"},
    grid=_grid([10, 50]),
    metrics=["fd_classifier"],
    quick=DIGITS_QUICK,
    quick_grid=[t for t in _grid([10]) if "matched" not in t["name"] and "_v" not in t["name"]],
    plots=[Plot(x="sampling.num_steps", y="fd_classifier", series=["tag.schedule"],
                name="schedules", logy=True,
                title="Training noise distribution (digits): FD vs DDIM steps")],
    description="Linear vs cosine vs EDM log-normal training noise distributions (eps "
                "target, L_simple, same U-Net and steps), DDIM eta=0 at 10 and 50 steps; FD "
                "in the digits classifier's features (floor = real train vs test).",
)
