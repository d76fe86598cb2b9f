"""Classifier-free guidance on text (Ho & Salimans 2022): prompt adherence vs diversity.

One text-to-image model (``configs/shapes_t2i.py``: frozen MiniLM text, the text dropped to
the empty prompt 10% of the time) sampled from the 5 000 test captions' first
``eval.num_samples`` with ``f_null + w (f_text - f_null)`` for ``w`` in 0 (unconditional), 1
(conditional), 2, 3, 5, 7.5 (the usual default) and 12 ("fried"). ``shapes_eval`` reads each
sample's objects and scores them against its caption's scene per GenEval category (exact on
this world; real test images score ``shapes_eval_real``); ``fd_shapes`` is the Fréchet
distance to the test images in the evaluator's features (floor = real train vs test).
Expected (the papers' reading): adherence near chance at w = 0, rising with w to a peak;
FD best near w = 1-2 and rising again at high w as samples saturate.

    python -m diffjax.sweep --sweep=experiments/t2i_guidance.py \
        --workdir=runs/experiments/t2i_guidance
"""
from diffjax.sweep import Plot, Sweep, product

from experiments._common import SHAPES_QUICK

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

SWEEP = Sweep(
    config="configs/shapes_t2i.py",
    grid=product({"sampling.guidance_scale": [0.0, 1.0, 2.0, 3.0, 5.0, 7.5, 12.0]}),
    metrics=["shapes_eval", *(f"shapes_eval_{c}" for c in CATEGORIES), "fd_shapes"],
    quick=SHAPES_QUICK,
    quick_grid=product({"sampling.guidance_scale": [0.0, 3.0]}),
    plots=[Plot(x="sampling.guidance_scale", y="shapes_eval", name="t2i_guidance_adherence",
                title="CFG scale vs prompt adherence (shapes_eval)"),
           Plot(x="sampling.guidance_scale", y="fd_shapes", name="t2i_guidance_fd",
                logy=True, title="CFG scale vs fd_shapes")],
    description="Text guidance scale w (0 = unconditional, 1 = conditional) on one "
                "shapes_t2i model: GenEval-style adherence per category (real images: "
                "shapes_eval_real) and fd_shapes (floor = real train vs test).",
)
