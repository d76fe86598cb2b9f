"""The guiding model of autoguidance, read from a run directory (``config.sampling``).

Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself")
samples ``D_w = D_guide + w (D_main - D_guide)`` with a weaker model of the same data as the
guide: a smaller run, or an earlier checkpoint of the same run. ``sampling.guide_workdir``
names that run and ``sampling.guide_step`` its checkpoint (None: the newest); its EMA
parameters are the guide (:func:`diffjax.sample`'s ``guide_fn``/``guide_params``). The guide
may have another network, target or preconditioning, but must model the same data on the
same path (its denoiser is mixed with the main one in ``(x0_hat, eps_hat)`` at the same
``x_t``): :func:`diffjax.guide_checks.check_guide` refuses anything else before
any compute.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import ml_collections

from diffjax import guide_checks
from diffjax.training import frozen


@dataclasses.dataclass(frozen=True)
class Guide:
    """A run's denoiser and EMA parameters, as :func:`diffjax.sample` takes a guide.

    fn: ``f(params, x, t, cond)`` in the guide's ``target`` (it reads only the condition
    kinds its network takes: an unconditional guide ignores the labels).
    """

    fn: Callable
    params: Any
    target: str
    step: int
    workdir: str


def load(sampling: ml_collections.ConfigDict, path_cfg: ml_collections.ConfigDict,
         data_info: Any) -> Optional[Guide]:
    """The guide that ``sampling`` names (None without ``guide_workdir``), checked
    (:func:`diffjax.guide_checks.check_guide`) before anything is read."""
    guide_cfg = guide_checks.check_guide(sampling, path_cfg, data_info)
    if guide_cfg is None:
        return None
    setup, state, step = frozen.restore_newest(guide_cfg, guide_checks.guide_dir(sampling),
                                               sampling.get("guide_step"))
    kinds, fn = setup.cond_kinds, setup.denoiser.fn

    def guide_fn(params, x, t, cond):
        return fn(params, x, t, {k: v for k, v in (cond or {}).items() if k in kinds})

    return Guide(guide_fn, state.ema_params, setup.denoiser.target, int(step),
                 guide_checks.guide_dir(sampling))
