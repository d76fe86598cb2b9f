"""The text-to-image main job: captioned `shapes` scenes, a U-Net with cross-attention to the
frozen pretrained all-MiniLM-L6-v2, classifier-free guidance with the empty prompt.

    python -m diffjax.main --config=configs/shapes_t2i.py --workdir=runs/shapes_t2i
    python -m diffjax.main --config=configs/shapes_t2i.py --workdir=runs/shapes_t2i \\
        --mode=sample --config.sampling.prompt="a red circle above a blue square"

Variants (the part after ``:``): ``cpu`` (default; sized for the 2-core CPU), ``learned``
(the same with a word-level text transformer trained from scratch, GLIDE-style, for the
``t2i_encoders`` comparison), ``gpu`` (a wider, longer run for one GPU).

The recipe is :func:`diffjax.configs.apply_shapes_t2i` (shared with the latent job; its 2000
steps fit the 20 minutes on the idle 2-core CPUs measured: 1.5-2.9 steps/s by machine, 16 min
25 s in all with four heads on one of them, experiments/README.md, t2i_budget):
rectified flow with the velocity target and logit-normal times (Esser et al. 2024), text
dropped to the empty prompt for 10% of examples (Ho & Salimans 2022); here cross-attention (four
heads) at 16x16 and 8x8 plus a pooled text embedding in the time embedding (Rombach et al. 2022).
Evaluated by ``shapes_eval`` (GenEval-style adherence, exact on this world) on the test
captions and ``fd_shapes`` (Fréchet distance in the evaluator's features) with its floor.
"""
from diffjax import configs

VARIANTS = ("cpu", "learned", "gpu")


def get_config(variant: str = "cpu"):
    variant = variant or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"configs/shapes_t2i.py:{variant}: unknown variant; valid choices: "
                         f"{', '.join(VARIANTS)}")
    config = configs.default_config()
    config.model = configs.default_model_config("unet")
    # 32 -> 16 -> 8, one residual block a level: 1.5 GFLOP a training example (XLA's count).
    config.model.ch = 32
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (8,)
    config.model.cross_attn_resolutions = (16, 8)
    # Four heads (head width 16): +0.031 / +0.044 shapes_eval on 2000 captions at seeds 0 / 1
    # over one head, for ~8% of the step's time (experiments/README.md, t2i_budget).
    config.model.num_heads = 4
    config.model.dropout = 0.0
    configs.apply_shapes_t2i(config, "learned" if variant == "learned" else "minilm")
    if variant == "gpu":
        config.data.batch_size = 256
        config.model.ch = 128
        config.model.num_res_blocks = 2
        config.optim.lr = 1e-3
        config.training.num_steps = 30_000
        config.training.eval_every = 10_000
        config.training.checkpoint_every = 5000
        config.training.ema_decay = 0.999
        config.sampling.num_steps = 20
        config.eval.num_samples = 5000
        config.eval.batch_size = 1000
    return config
