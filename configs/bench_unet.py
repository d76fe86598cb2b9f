"""The U-Net of the side-by-side benchmarks against PyTorch/diffusers (6.47M parameters).

diffusers' ``UNet2DModel(sample_size=32, in_channels=3, out_channels=3,
block_out_channels=(64, 128, 128), layers_per_block=2,
down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))`` is the same network: three levels
(32x32 of 64 channels, 16x16 and 8x8 of 128), two residual blocks per level down and three up,
self-attention at 16x16 and in the middle with diffusers' default head width 8 (16 heads of 128
channels), a strided-conv downsampler and a nearest-upsample + conv upsampler, a 64-feature
sinusoidal time embedding projected to 256, no dropout. Both have 6,472,195 parameters
(tests/test_bench_unet.py derives the count from this description). The recipe is DDPM's
(eps target, discrete time, L_simple) with Adam; the data are the bundled 32x32 RGB ``shapes``.

    python experiments/benchmarks/train_vs_torch.py     # examples/s against PyTorch
    python experiments/benchmarks/sample_vs_torch.py    # 20-step DPM-Solver++ against diffusers
    python -m diffjax.main --config=configs/bench_unet.py --workdir=runs/bench_unet
"""
from diffjax import configs


def get_config(recipe: str = "ddpm"):
    config = configs.default_config()
    config.data.dataset = "shapes"
    config.data.batch_size = 128
    config.model = configs.default_model_config("unet")
    config.model.ch = 64
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)
    config.model.num_heads = 16
    config.model.dropout = 0.0
    config.optim.optimizer = "adam"
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.0
    config.training.num_steps = 100_000
    config.training.ema_decay = 0.9999
    config.training.ema_warmup = False
    config.sampling.num_steps = 20
    config.sampling.num_samples = 64
    config = configs.apply_recipe(config, recipe or "ddpm")
    config.sampling.sampler = "dpm_solver++"
    return config
