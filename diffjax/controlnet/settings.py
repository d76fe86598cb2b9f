"""``config.controlnet``: the keys of the ``controlnet`` task, with their defaults."""
from __future__ import annotations

import ml_collections

# config.controlnet.kind (diffjax.controlnet.maps documents each)
KINDS = ("edges", "segmentation", "scribble")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        # Workdir of the trained text-to-image U-Net run; read frozen, by reference.
        "base": "",
        # The control map the ControlNet reads: edges | segmentation | scribble.
        "kind": "edges",
        # Probability that an example's control is replaced by zeros (the null control), for
        # guidance on the control; the text is dropped independently by loss.label_dropout.
        "control_dropout": 0.1,
        # A DiT base: how many of its first blocks the trainable copy holds (0 = half).
        "dit_blocks": 0,
    })


def check(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the ``controlnet.*`` key and its valid values."""
    group = config.get("controlnet")
    if group is None:
        return
    if group.kind not in KINDS:
        raise ValueError(f"config.controlnet.kind={group.kind!r}; valid choices: "
                         f"{', '.join(KINDS)}")
    if not 0.0 <= float(group.control_dropout) < 1.0:
        raise ValueError(f"config.controlnet.control_dropout={group.control_dropout!r} must be "
                         "in [0, 1)")
    if int(group.get("dit_blocks", 0)) < 0:
        raise ValueError(f"config.controlnet.dit_blocks={group.dit_blocks!r} must be >= 0")
    if config.get("task") == "controlnet" and not group.base:
        raise ValueError("config.task='controlnet' needs config.controlnet.base: the workdir "
                         "of a trained text-to-image (U-Net) run")
    if config.get("task") == "controlnet" and config.training.eval_every:
        raise ValueError(f"config.training.eval_every={config.training.eval_every}: a "
                         "ControlNet run is evaluated with its base (diffjax.controlnet.evaluate,"
                         " experiments/controlnet_convergence.py); set it to 0")
