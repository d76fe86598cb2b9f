"""Classifier-free guidance (Ho & Salimans 2022): scale vs class accuracy and diversity.

One class-conditional EDM model on digits, trained with the label dropped 10% of the time
(``loss.label_dropout``; the dropped label is the null class), is sampled with guided
predictions ``f_u + w (f_c - f_u)`` for ``w`` in 0 (unconditional), 1 (conditional, no
guidance), 2, 4, 7.5. (Ho & Salimans write ``(1 + w') f_c - w' f_u``: ``w = 1 + w'``.)
Samples cycle through the ten classes; the digits classifier scores how often a sample is
its class (``class_accuracy``), the within-class spread of its features (``diversity``) and
the Fréchet distance of all samples to the test set (``fd_classifier``).

    python -m diffjax.sweep --sweep=experiments/guidance.py --workdir=runs/experiments/guidance
"""
from diffjax.sweep import Plot, Sweep, product

from experiments._common import DIGITS_QUICK

SWEEP = Sweep(
    config="configs/digits.py:edm",
    overrides={"model.class_conditional": True, "loss.label_dropout": 0.1,
               "eval.metrics": "class_accuracy,diversity,fd_classifier"},
    grid=product({"sampling.guidance_scale": [0.0, 1.0, 2.0, 4.0, 7.5]}),
    metrics=["class_accuracy", "diversity", "fd_classifier"],
    quick=DIGITS_QUICK,
    quick_grid=product({"sampling.guidance_scale": [0.0, 4.0]}),
    plots=[Plot(x="sampling.guidance_scale", y="class_accuracy", name="guidance_accuracy",
                title="CFG scale vs class accuracy (digits)"),
           Plot(x="sampling.guidance_scale", y="diversity", name="guidance_diversity",
                title="CFG scale vs within-class diversity (digits)"),
           Plot(x="sampling.guidance_scale", y="fd_classifier", name="guidance_fd",
                logy=True, title="CFG scale vs FD (digits)")],
    description="Classifier-free guidance scale w (0 = unconditional, 1 = conditional) on "
                "one class-conditional EDM digits model: class accuracy of the samples "
                "(real test data: class_accuracy_real), within-class feature spread "
                "(real: diversity_real) and FD (floor = real train vs test).",
)
