"""Networks of the few-step methods, as wrappers of the configured network.

The networks of :mod:`diffjax.models` take ``(x, noise_cond, cond)``. Two methods need more:

* :class:`EndTime` -- shortcut models and MeanFlow read a second time, the end ``r`` of the
  step (step size ``d = t - r``). It arrives as ``cond["r"]: [B]`` (the condition dict flows
  unchanged through the Denoiser and the samplers) and is fed to the wrapped network as
  sinusoidal features of ``d`` concatenated to ``x``'s channels; the wrapped network's extra
  output channels are dropped. Without ``cond["r"]`` the step size is 0: the network is then
  the instantaneous velocity, so every ODE sampler of :func:`diffjax.sample` reads it.
  This works with any network of the registry without editing it; a network that embeds
  ``r`` next to its noise embedding could replace the wrapper.
* :class:`Consistency` -- the consistency function with its boundary condition built in
  (Song et al. 2023, app. C; EDM's scalings with ``sigma - sigma_min``): with the VE noise
  level ``s = sigma/alpha`` and ``x~ = x/alpha``,
  ``f(x, t) = c_skip(s) x~ + c_out(s) F(c_in(s) x~, log(s)/4)``,
  ``c_skip = sd^2 / ((s - s_min)^2 + sd^2)``, ``c_out = sd (s - s_min) / sqrt(s^2 + sd^2)``,
  so ``f(x, 0) = x~`` exactly. It is read as an ``x0`` model with ``preconditioning="none"``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from diffjax import configs, paths
from diffjax.samplers import few_step
from diffjax.models.blocks.embeddings import sinusoidal_embedding
from diffjax.paths import broadcast_to_x

R_KEY = few_step.END_TIME_KEY  # the samplers tell the network its step's end here


class EndTime(nn.Module):
    """``u(x, t, r)``: ``base`` fed ``x`` with sinusoidal features of ``d = t - r`` as extra
    channels. ``x: [B, ..., C]``, ``noise_cond: [B]`` (= t), ``cond[R_KEY]: [B]`` optional."""

    base: nn.Module
    features: int = 16
    # Sinusoid frequencies up to ``scale`` per unit of d: MeanFlow differentiates the network
    # in t (jvp), and features of frequency 1000 (the default for noise levels) make that
    # derivative 1000 times the network's slope.
    scale: float = 50.0

    @nn.compact
    def __call__(self, x, noise_cond, cond: Optional[Mapping[str, Any]] = None, train=False):
        cond = dict(cond or {})
        r = cond.pop(R_KEY, noise_cond)
        d = sinusoidal_embedding(noise_cond - r, self.features, scale=self.scale)
        d = jnp.broadcast_to(d.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (self.features,)),
                             x.shape[:-1] + (self.features,))
        out = self.base(jnp.concatenate([x, d.astype(x.dtype)], axis=-1), noise_cond,
                        cond or None, train=train)
        return out[..., :x.shape[-1]]


class Consistency(nn.Module):
    """``f(x, t)`` with ``f(x, 0) = x / alpha(0)`` exactly; ``noise_cond`` is ``t``."""

    base: nn.Module
    diffusion_path: Any
    sigma_data: float = 0.5

    @nn.compact
    def __call__(self, x, noise_cond, cond: Optional[Mapping[str, Any]] = None, train=False):
        t = noise_cond
        s = jnp.exp(-0.5 * self.diffusion_path.logsnr(t))
        s_min = jnp.exp(-0.5 * self.diffusion_path.logsnr(jnp.zeros_like(t)))
        sd = self.sigma_data
        c_skip = sd**2 / ((s - s_min) ** 2 + sd**2)
        c_out = sd * (s - s_min) / jnp.sqrt(s**2 + sd**2)
        c_in = 1.0 / jnp.sqrt(s**2 + sd**2)
        x_ve = x / broadcast_to_x(self.diffusion_path.alpha(t), x)
        f = self.base(broadcast_to_x(c_in, x) * x_ve, 0.25 * jnp.log(s), cond, train=train)
        return broadcast_to_x(c_skip, x) * x_ve + broadcast_to_x(c_out, x) * f


def end_time(net: nn.Module, config: ml_collections.ConfigDict) -> EndTime:
    return EndTime(net)


def consistency(net: nn.Module, config: ml_collections.ConfigDict) -> Consistency:
    path = paths.get(config.path.name, **configs.path_kwargs(config.path))
    return Consistency(net, path, float(config.model.sigma_data))
