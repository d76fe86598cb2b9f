"""The shape of DDIM's Table 1 (Song, Meng & Ermon 2021): eta 0 vs 1 at 10..1000 steps.

One DDPM model (configs/digits.py:ddpm: discrete linear-beta path, eps target, L_simple) is
trained once; every trial samples it with DDIM at its ``eta`` and number of steps (NFE)
and is judged by the Fréchet distance in the digits classifier's features (500 samples,
with the real-data floor).

The model is evaluated only at its training times ``t = i/1000``: the ddpm path's default
``trailing`` integer spacing (``diffjax.samplers.conventions``). At S = 1000 every spacing is
all 1000 training times, so that column does not depend on the spacing.

    python -m diffjax.sweep --sweep=experiments/ddim_steps.py --workdir=runs/experiments/ddim_steps
"""
from diffjax.sweep import Plot, Sweep, product

from experiments._common import DIGITS_QUICK

SWEEP = Sweep(
    config="configs/digits.py:ddpm",
    overrides={"sampling.sampler": "ddim", "eval.metrics": "fd_classifier"},
    grid=product({"sampling.eta": [0.0, 1.0], "sampling.num_steps": [10, 20, 50, 100, 1000]}),
    metrics=["fd_classifier"],
    quick=DIGITS_QUICK,
    quick_grid=product({"sampling.eta": [0.0, 1.0], "sampling.num_steps": [10, 20]}),
    plots=[Plot(x="sampling.num_steps", y="fd_classifier", series=["sampling.eta"],
                name="ddim_steps", logx=True, logy=True,
                title="DDIM on one DDPM model (digits): FD vs steps")],
    description="DDIM eta=0 (deterministic) vs eta=1 (DDPM-like ancestral) sampling of one "
                "trained DDPM model at 10/20/50/100/1000 steps; FD in the digits "
                "classifier's features (lower is better; floor = real train vs test).",
)
