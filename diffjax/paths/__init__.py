"""Gaussian paths ``x_t = alpha(t) x0 + sigma(t) eps`` with time running data -> noise.

Every diffusion or flow model in diffjax is one of these paths plus a regression target
and a loss weighting. A path knows its coefficients, their time derivatives, its log-SNR
``lambda(t) = log(alpha^2 / sigma^2)`` and the inverse ``t(lambda)``, the forward SDE
``dx = f(t) x dt + g(t) dW`` that has these marginals, and the prior at ``t_max``.

For any such path (Kingma et al. 2021, "Variational Diffusion Models", eq. 1-4):

    f(t)   = alpha'(t) / alpha(t)
    g(t)^2 = d sigma^2/dt - 2 f(t) sigma^2 = -sigma(t)^2 lambda'(t).

Paths (``get(name, **kwargs)``; keyword arguments default to the papers' values):

=================  ==========================================================  ============
name               alpha(t), sigma(t)                                          source
=================  ==========================================================  ============
``vp_linear``      log alpha = -t^2 (b1-b0)/4 - t b0/2, sigma = sqrt(1-alpha^2)  Song et al. 2021 (score SDE)
``ddpm``           alpha^2 = prod_{j<=i} (1 - beta_j) at t = i/T, beta linear  Ho et al. 2020
``vp_cosine``      alpha^2 = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2)      Nichol & Dhariwal 2021
``ve``             alpha = 1, sigma = s_min (s_max/s_min)^t                     Song & Ermon 2019
``subvp``          alpha as vp_linear, sigma = 1 - alpha^2                      Song et al. 2021
``edm``            alpha = 1, sigma = (s_min^(1/rho) + t (s_max^(1/rho) - s_min^(1/rho)))^rho   Karras et al. 2022
``rectified_flow`` alpha = 1 - t, sigma = t                                     Liu et al. 2022; Lipman et al. 2022
=================  ==========================================================  ============

The ``edm`` path puts Karras et al.'s rho-spaced noise levels on ``t``, so a uniform grid
in ``t`` on this path *is* the EDM sampling grid.

All methods take arrays of any shape and are elementwise; they are jit-, vmap- and
grad-friendly. ``t_min``/``t_max`` are the ends of the range on which the path is used by
default for training and sampling (where coefficients are finite and the conversions
between targets are well conditioned).
"""
from __future__ import annotations

import inspect

from diffjax.paths.base import Array, Path, broadcast_to_x
from diffjax.paths.others import EDM, VE, RectifiedFlow
from diffjax.paths.vp import DDPM, SubVP, VPCosine, VPLinear

PATHS: dict[str, type[Path]] = {
    "vp_linear": VPLinear,
    "ddpm": DDPM,
    "vp_cosine": VPCosine,
    "ve": VE,
    "subvp": SubVP,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
}


def get(name: str, **kwargs) -> Path:
    """Returns the path called ``name`` built with ``kwargs`` (the papers' defaults otherwise).

    Raises:
      ValueError: unknown name, or a keyword the path does not take.
    """
    if name not in PATHS:
        raise ValueError(f"Unknown path {name!r}; valid paths: {', '.join(sorted(PATHS))}")
    cls = PATHS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"Path {name!r} got unknown option(s) {unknown}; it takes: "
                         f"{', '.join(accepted) or 'no options'}")
    return cls(**kwargs)


__all__ = ["Array", "DDPM", "EDM", "PATHS", "Path", "RectifiedFlow", "SubVP", "VE", "VPCosine",
           "VPLinear", "broadcast_to_x", "get"]
