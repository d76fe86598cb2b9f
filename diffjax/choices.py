"""The named choices of a run config that have no module of their own to live in.

Validation (:mod:`diffjax.config_validation`) and the code that acts on a choice both read
these tuples, so neither imports the other. Choices owned by a registry (paths, targets,
samplers, archs, weightings) stay with that registry.
"""
from __future__ import annotations

from typing import Any

# --mode of python -m diffjax.main
MODES = ("train", "sample", "eval")
# config.task: what the one train step minimises (diffjax.training.tasks registers each name;
# tests/test_structure.py checks that the two lists agree)
TASKS = ("denoise", "consistency_distillation", "consistency_training", "shortcut", "meanflow",
         "progressive", "reflow", "autoencoder", "controlnet")
# config.training.nonfinite: drop the update of a non-finite step, or stop the run there
NONFINITE_MODES = ("skip", "stop")
# config.training.ema: the classic EMA only, or also EDM2's power-function EMAs (post hoc)
EMA_MODES = ("classic", "power")
# config.optim.optimizer and config.optim.schedule
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
# config.optim.grad_accum_loop: how the micro-batches of gradient accumulation run
GRAD_ACCUM_LOOPS = ("auto", "scan", "unroll")
# config.parallel.backend and config.parallel.param_sharding
BACKENDS = ("jit", "pmap")
PARAM_SHARDINGS = ("replicated", "fsdp")
# config.eval.likelihood_divergence
LIKELIHOOD_DIVERGENCES = ("auto", "exact", "hutchinson")
# config.eval.metrics left empty: the headline metrics of each kind of data
DEFAULT_METRICS = {"image": ("fd_classifier",), "points": ("sliced_wasserstein", "mmd")}
# config.data keys (and top-level config keys) that fix the data iterator's sequence: a
# checkpointed iterator position means nothing under other values.
DATA_LOADER_KEYS = ("data.dataset", "data.batch_size", "data.num_workers",
                    "data.random_flip", "seed")


def metric_names(config: Any, kind: str) -> tuple[str, ...]:
    """``config.eval.metrics`` as a tuple; empty means :data:`DEFAULT_METRICS` of ``kind``
    (``"image"`` or ``"points"``)."""
    names = config.eval.metrics
    if isinstance(names, str):
        names = tuple(n.strip() for n in names.split(",") if n.strip())
    return tuple(names) or DEFAULT_METRICS[kind]
