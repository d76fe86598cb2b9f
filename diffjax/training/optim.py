"""The optimizer of a run: global-norm clipping, Adam/AdamW, and the learning-rate schedule.

The schedule is built from optax pieces: a linear warm-up ``lr * (s + 1) / warmup`` over
steps ``0 .. warmup - 1`` (the first update already moves), then a constant rate or a cosine
decay to ``end_lr_factor * lr`` at ``num_steps`` (Loshchilov & Hutter 2017). ``s`` counts
*applied* updates: optax advances its count only when an update is applied, and the trainer
skips non-finite updates, so a skipped step does not advance the schedule.
"""
from __future__ import annotations

from typing import Callable

import ml_collections
import optax

from diffjax.choices import LR_SCHEDULES, OPTIMIZERS

Schedule = Callable


def lr_schedule(optim_cfg: ml_collections.ConfigDict, num_steps: int) -> Schedule:
    """``schedule(count) -> lr`` from ``config.optim`` (``lr``, ``warmup_steps``,
    ``schedule``, ``end_lr_factor``) for a run of ``num_steps`` updates."""
    lr, warmup = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
    if optim_cfg.schedule not in LR_SCHEDULES:
        raise ValueError(f"Unknown optim.schedule {optim_cfg.schedule!r}; valid choices: "
                         f"{', '.join(LR_SCHEDULES)}")
    if optim_cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps=max(num_steps - warmup, 1),
                                            alpha=float(optim_cfg.end_lr_factor))
    else:
        after = optax.constant_schedule(lr)
    if warmup == 0:
        return after
    # (s + 1) / warmup: linear from lr / warmup at s = 0 to lr at s = warmup - 1.
    ramp = optax.linear_schedule(lr / warmup, lr, transition_steps=max(warmup - 1, 1))
    return optax.join_schedules([ramp, after], [warmup])


def make_optimizer(optim_cfg: ml_collections.ConfigDict,
                   num_steps: int) -> tuple[optax.GradientTransformation, Schedule]:
    """``(optimizer, schedule)``: global-norm clipping (if ``grad_clip > 0``) then Adam or
    AdamW on :func:`lr_schedule`."""
    if optim_cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optim.optimizer {optim_cfg.optimizer!r}; valid choices: "
                         f"{', '.join(OPTIMIZERS)}")
    schedule = lr_schedule(optim_cfg, num_steps)
    adam_kwargs = dict(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)
    if optim_cfg.optimizer == "adamw":
        adam = optax.adamw(schedule, weight_decay=optim_cfg.weight_decay, **adam_kwargs)
    else:
        adam = optax.adam(schedule, **adam_kwargs)
    parts = [optax.clip_by_global_norm(optim_cfg.grad_clip)] if optim_cfg.grad_clip > 0 else []
    return optax.chain(*parts, adam), schedule
