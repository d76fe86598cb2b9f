"""Pretrained vs learned text encoder at equal budget, on the test captions and on held-out
paraphrases (Saharia et al. 2022, Imagen: a frozen pretrained encoder generalises to wording
the image data never had).

Two models of ``configs/shapes_t2i.py`` identical but for ``model.text_encoder``: ``minilm``
(frozen all-MiniLM-L6-v2) and ``learned`` (a word-level transformer trained with the model,
GLIDE-style). Each is asked for the test scenes in three wordings
(``eval.prompt_set``, :mod:`diffjax.data.shapes_paraphrase`): the captions themselves;
``reordered`` (the two objects swapped, relation inverted: words the captions use); and
``reworded`` (colour and shape names replaced by synonyms no caption uses: "a crimson disc").
Samples are scored against the original caption's scene. The learned encoder cannot read the
reworded prompts at all (it refuses unknown words rather than guess), so that cell is absent
by construction: its score there is that of an encoder that has never seen the word.

    python -m diffjax.sweep --sweep=experiments/t2i_encoders.py \
        --workdir=runs/experiments/t2i_encoders
"""
from diffjax.sweep import Sweep, product

from experiments._common import SHAPES_QUICK

SWEEP = Sweep(
    config="configs/shapes_t2i.py",
    grid=(product({"model.text_encoder": ["minilm"],
                   "eval.prompt_set": ["test", "reordered", "reworded"]})
          + product({"model.text_encoder": ["learned"],
                     "eval.prompt_set": ["test", "reordered"]})),
    metrics=["shapes_eval", "shapes_eval_single_object", "shapes_eval_colors",
             "shapes_eval_position", "fd_shapes"],
    quick=SHAPES_QUICK,
    quick_grid=product({"model.text_encoder": ["minilm", "learned"],
                        "eval.prompt_set": ["reordered"]}),
    description="minilm (frozen, pretrained) vs learned (from scratch) text encoders at equal "
                "budget, asked in the test captions and in held-out paraphrases; scored "
                "against the captions' scenes.",
)
