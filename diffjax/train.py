"""The trainer's public names (the code lives in :mod:`diffjax.training`, one job per module).

``train(config, workdir)`` trains or resumes a run; ``restore_for_inference`` reads its
newest checkpoint; ``generate`` / ``evaluate`` sample and score EMA parameters; ``build``
turns a config into a :class:`Setup`.
"""
from diffjax.training.evaluation import (DEFAULT_METRICS, Evaluator, Sampler, evaluate,
                                         generate, metric_names)
from diffjax.training.loop import default_batches, restore_for_inference, train
from diffjax.training.optim import LR_SCHEDULES, OPTIMIZERS, lr_schedule, make_optimizer
from diffjax.training.setup import Setup, build
from diffjax.training.state import NonFiniteError, TrainState, init_state, setup_state
from diffjax.training.step import apply_gradients, describe_nonfinite, make_train_step
from diffjax.training.tasks import TASKS

import diffjax.distill.tasks  # noqa: E402,F401  (registers the few-step tasks: progressive, ...)
import diffjax.autoencoder.task  # noqa: E402,F401  (registers the autoencoder task)
import diffjax.autoencoder.latent  # noqa: E402,F401  (config.latent.autoencoder)
import diffjax.controlnet.task  # noqa: E402,F401  (registers the controlnet task)

from diffjax.choices import NONFINITE_MODES

__all__ = ["DEFAULT_METRICS", "Evaluator", "LR_SCHEDULES", "NONFINITE_MODES", "NonFiniteError",
           "OPTIMIZERS", "Sampler", "Setup", "TASKS", "TrainState", "apply_gradients", "build",
           "default_batches", "describe_nonfinite", "evaluate", "generate", "init_state",
           "lr_schedule", "make_optimizer", "make_train_step", "metric_names",
           "restore_for_inference", "setup_state", "train"]
