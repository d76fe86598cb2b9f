"""ControlNet on shapes: edges (or segmentation, scribbles) as rails beside a frozen
text-to-image base (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models").

    python -m diffjax.main --config=configs/shapes_t2i.py --workdir=runs/shapes_t2i
    python -m diffjax.main --config=configs/shapes_controlnet.py --workdir=runs/shapes_cn \\
        --config.controlnet.base=runs/shapes_t2i
    python -m diffjax.main --config=configs/shapes_controlnet.py --workdir=runs/shapes_cn \\
        --config.controlnet.base=runs/shapes_t2i --mode=sample \\
        --config.sampling.prompt="a red circle above a blue square" \\
        --config.sampling.control_from=some_shapes_image.png

Variants: ``cpu`` (default) and ``gpu``, each on the base of the same ``configs/shapes_t2i.py``
variant: the network, path and text encoder are the base's (the run refuses any other);
``edges``, ``segmentation``, ``scribble`` after a comma pick the control kind
(``configs/shapes_controlnet.py:gpu,segmentation``).

As in the paper: the base is locked, the encoder copy starts as the base's encoder, every
zero convolution at 0; the text is dropped to the empty prompt for half of the examples (the
paper's 50%, which makes the ControlNet read the control rather than the text) and the
control for 10% (guidance on the control). Evaluation runs outside training
(``experiments/controlnet_convergence.py``), as the samples need the base.
"""
import importlib.util
import os

from diffjax.controlnet import settings

VARIANTS = ("cpu", "gpu")


def _t2i(variant: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes_t2i.py")
    spec = importlib.util.spec_from_file_location("shapes_t2i_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def get_config(variant: str = "cpu"):
    size, _, kind = (variant or "cpu").partition(",")
    size, kind = size or "cpu", kind or "edges"
    if size not in VARIANTS or kind not in settings.KINDS:
        raise ValueError(f"configs/shapes_controlnet.py:{variant}: valid choices: one of "
                         f"{', '.join(VARIANTS)}, optionally ',' and one of "
                         f"{', '.join(settings.KINDS)}")
    config = _t2i(size)
    config.task = "controlnet"
    config.controlnet = settings.default_config()
    config.controlnet.kind = kind
    config.controlnet.control_dropout = 0.1
    config.loss.label_dropout = 0.5
    # 1e-4 left control_f1 at the base's level after 500 CPU steps (0.292 vs 0.291); 1e-3
    # (half the base's own rate) follows the edges within 300 steps (experiments/README.md,
    # controlnet_convergence).
    config.optim.lr = 1e-3 if size == "cpu" else 1e-4
    config.optim.warmup_steps = 0
    config.optim.schedule = "constant"
    config.training.num_steps = 4000 if size == "cpu" else 12_000
    config.training.log_every = 100
    config.training.eval_every = 0
    config.training.checkpoint_every = 250 if size == "cpu" else 1000
    config.eval.metrics = "control_f1,shapes_eval"
    # Edges are read off the samples: 8 Heun steps leave a residual noise texture that the
    # edge extractor reads as spurious edges (control_f1 0.49-0.51 against 0.98 with 32).
    config.sampling.num_steps = 32
    return config
