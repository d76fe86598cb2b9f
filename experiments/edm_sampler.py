"""The shape of EDM's sampler ablation (Karras et al. 2022, Fig. 2 and 4) on one VP model.

One score-SDE VP model (configs/digits.py:score_vp) is trained once, as EDM ablated the
samplers of pre-trained VP models. Every trial samples it at an NFE budget with:

* ``euler`` / ``heun``: the probability-flow ODE in the path's time ``t``;
* ``edm``: Karras' Heun in the noise level ``s = sigma/alpha`` (their ODE reparametrisation),
  deterministic (``s_churn = 0``) or with churn (EDM's CIFAR-10 VP settings: S_churn = 30,
  S_tmin = 0.01, S_tmax = 1, S_noise = 1.007);

each on the ``uniform`` grid in ``t`` (the VP model's own) and the ``karras`` grid (rho = 7;
churn on the Karras grid only, as EDM uses it).

    python -m diffjax.sweep --sweep=experiments/edm_sampler.py --workdir=runs/experiments/edm_sampler
"""
from diffjax.sweep import Plot, Sweep, product

from experiments._common import DIGITS_QUICK

NFES = [10, 20, 50]
CHURN = {"sampling.s_churn": 30.0, "sampling.s_tmin": 0.01, "sampling.s_tmax": 1.0,
         "sampling.s_noise": 1.007}


def _grid(nfes):
    deterministic = product({"sampling.sampler": ["euler", "heun", "edm"],
                             "sampling.grid": ["uniform", "karras"],
                             "sampling.num_steps": nfes})
    for trial in deterministic:
        trial["name"] = f"{trial['sampling.sampler']},{trial['sampling.grid']}," \
                        f"nfe={trial['sampling.num_steps']}"
    churn = [{"name": f"edm_churn,{g},nfe={n}", "sampling.sampler": "edm", "sampling.grid": g,
              "sampling.num_steps": n, **CHURN} for g in ("karras",) for n in nfes]
    return deterministic + churn


SWEEP = Sweep(
    config="configs/digits.py:score_vp",
    overrides={"eval.metrics": "fd_classifier"},
    grid=_grid(NFES),
    metrics=["fd_classifier"],
    quick=DIGITS_QUICK,
    quick_grid=[t for t in _grid([10]) if t["sampling.grid"] == "karras"],
    plots=[Plot(x="sampling.num_steps", y="fd_classifier",
                series=["sampling.sampler", "sampling.grid", "sampling.s_churn"],
                name="edm_sampler", logx=True, logy=True,
                title="Samplers of one VP model (digits): FD vs NFE")],
    description="Euler vs Heun (in t) vs EDM's Heun in sigma, uniform vs Karras grid, "
                "churn on/off, at 10/20/50 model evaluations on one trained VP model; FD in "
                "the digits classifier's features (floor = real train vs test).",
)
