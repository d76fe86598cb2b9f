"""The latent text-to-image job (DESIGN §9): configs/shapes_t2i.py's recipe in the 8x8x4 latent
space of configs/shapes_autoencoder.py, decoded before every evaluation.

    python -m diffjax.main --config=configs/shapes_autoencoder.py --workdir=runs/shapes_ae
    python -m diffjax.main --config=configs/shapes_latent.py --workdir=runs/shapes_latent \\
        --config.latent.autoencoder=runs/shapes_ae

Any run becomes a latent run with ``--config.latent.autoencoder=DIR`` (a trained autoencoder's
workdir, or a diffusers AutoencoderKL folder such as sd-vae-ft-ema): the network models
``scale * (z - shift)`` of the frozen encoder's latents (scale/shift stored with the
autoencoder; here one per channel, ``latent.per_channel``, which a diffusers folder cannot
give: add ``--config.latent.per_channel=False`` to use its scaling_factor), samples are
decoded and scored by the same evaluator as the pixel job (``shapes_eval`` on the test
captions, ``fd_shapes`` against real 32x32 images). The training split's latents are
encoded once and cached (``config.latent.cache``, shared by every run of the same
autoencoder and data; 75 s once on the 2-core CPU, then each step 1.2x faster; ``False``
encodes every batch inside the step instead).

Variants (after ``:``): ``unet`` (default; shapes_t2i's U-Net design at latent size: 8x8 ->
4x4, channels 96/192, two residual blocks a level, cross-attention at both levels: 1.31 GFLOP
a training example against the pixel job's 1.59, XLA's count; one block of 128/256 channels
scored 0.02-0.04 lower, experiments/README.md latent_vs_pixel), ``dit`` (DiT-S/2: 16 tokens of
8x8 latents, cross-attention to the text in every block, PixArt-alpha style; 2.87 GFLOP a
training example). Both share shapes_t2i's recipe: rectified flow, velocity target, logit-normal
times, MiniLM text with 10% dropped to the empty prompt, Heun sampling with guidance 3 inside
a guidance interval (:func:`diffjax.configs.apply_shapes_t2i`), the same 2000 steps of batch 32.
"""
from diffjax import configs

VARIANTS = ("unet", "dit")


def get_config(variant: str = "unet"):
    variant = variant or "unet"
    if variant not in VARIANTS:
        raise ValueError(f"configs/shapes_latent.py:{variant}: unknown variant; valid choices: "
                         f"{', '.join(VARIANTS)}")
    config = configs.default_config()
    config.latent.autoencoder = "runs/shapes_ae"
    config.latent.cache = True
    if variant == "unet":
        config.model = configs.default_model_config("unet")
        config.model.ch = 96
        config.model.ch_mult = (1, 2)
        config.model.num_res_blocks = 2
        config.model.attn_resolutions = (4,)
        config.model.cross_attn_resolutions = (8, 4)
        config.model.dropout = 0.0
    else:
        config.model = configs.default_model_config("dit")
        # DiT-S/2, the paper's row spelled out (16 tokens of 8x8x4 latents), cross-attention
        # to the text in every block. A smaller one (depth 6, width 256, 4 heads, patch 1: 64
        # tokens) is these keys overridden; experiments/README.md "latent_vs_pixel" has both.
        config.model.update(size="S/2", patch_size=2, depth=12, hidden=384, num_heads=6,
                            cross_attn=True)
    configs.apply_shapes_t2i(config)
    # Each latent channel standardised on its own (EDM2): the shapes autoencoder's channels
    # differ 2.6x in spread, and one scale for all left the narrow ones under-weighted.
    config.latent.per_channel = True
    if variant == "dit":
        config.optim.lr = 3e-4
    return config
