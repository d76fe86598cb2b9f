"""What a config builds: the network, its reading as a denoiser, the objective, the optimizer.

:func:`build` turns a (validated) config into a :class:`Setup`, the static half of a run
(no arrays); the dynamic half is the :class:`diffjax.training.state.TrainState`. A
``Setup`` is what a config file's *recipe* (:data:`diffjax.configs.RECIPES`: path, target,
weighting, sampler) becomes once built.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffjax import conditions, configs, models, objectives, paths
from diffjax import data as data_lib
from diffjax.autoencoder import spec as latent_spec
from diffjax.choices import GRAD_ACCUM_LOOPS
from diffjax.denoiser import Denoiser
from diffjax.text import conditioning
from diffjax.text import network as text_network
from diffjax.training import optim, power_ema

Array = jax.Array

# config.task -> wrap(net, config): a task whose network reads more than (x, noise_cond, cond)
# (e.g. a second time, diffjax.distill.nets) wraps the configured network.
NETWORKS: dict[str, Callable[[Any, ml_collections.ConfigDict], Any]] = {}


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static pieces of a run, built from its config by :func:`build`.

    Attributes:
      net: the Flax network.
      denoiser: ``net`` read as a model in the recipe's target space.
      objective: the denoising loss (:class:`diffjax.objectives.Objective`).
      optimizer, lr_schedule: from :mod:`diffjax.training.optim`.
      data_info: the shape, kind and number of classes of what the network models: the
        data set's, or its latents' under ``config.latent.autoencoder``.
      cond_kinds: the condition keys the network reads (``("label",)``, a text encoder's
        ``("context", "context_mask")`` or ``("text", "text_mask")``, or ``()``); the
        trainer passes exactly these keys of the batch's ``cond`` on.
      ema_decay, ema_warmup: the EMA of the parameters (``config.training``).
      grad_accum_steps: micro-batches per update (``config.optim.grad_accum_steps``).
      grad_accum_loop: how the micro-batches run (``config.optim.grad_accum_loop``):
        ``"scan"`` (one loop body, one micro-batch's activations in memory), ``"unroll"``
        (one copy of the step per micro-batch, in order) or ``"auto"`` (``unroll`` on CPU,
        where gradient convolutions inside a loop run ~20x slower, ``scan`` elsewhere).
      task: the name of the training task (``config.task``, :mod:`diffjax.training.tasks`).
      power_gammas: the exponents of the power-function EMAs the state keeps
        (``training.ema = "power"``, one per ``training.ema_sigma_rels``); empty otherwise.
      config: the config it was built from (tasks read their own group from it).
    """

    net: Any
    denoiser: Denoiser
    objective: objectives.Objective
    optimizer: optax.GradientTransformation
    lr_schedule: Callable[[Array], Array]
    data_info: Any
    cond_kinds: tuple[str, ...]
    ema_decay: float
    ema_warmup: bool
    grad_accum_steps: int = 1
    task: str = "denoise"
    power_gammas: tuple[float, ...] = ()
    grad_accum_loop: str = "auto"
    # The config it was built from: tasks read their own group (e.g. config.distill).
    config: Any = dataclasses.field(default=None, compare=False, repr=False)
    # The text encoder (diffjax.text.conditioning) of a text-conditioned run, else None.
    text: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def nulls(self) -> conditions.Nulls:
        """The null value of each condition the network reads (dropout and guidance)."""
        return self.objective.null_values

    @property
    def conditional(self) -> bool:
        return bool(self.cond_kinds)


def build(config: ml_collections.ConfigDict, data_info: Optional[Any] = None) -> Setup:
    """Builds network, denoiser, objective and optimizer from a (validated) config;
    ``data_info`` is the data set's (read from the config when None).

    ``model.sigma_data`` is the one data scale: EDM preconditioning and the ``edm``
    weighting both read it.

    Raises:
      ValueError: ``optim.grad_accum_steps`` below 1, or an ``optim.grad_accum_loop``
        that is not one of :data:`diffjax.choices.GRAD_ACCUM_LOOPS`.
    """
    if data_info is None:
        data_info = data_lib.info_of(config.data)
    # With config.latent.autoencoder the network models latents, not the data set's images.
    data_info = latent_spec.data_info(config, data_info)
    accum = int(config.optim.get("grad_accum_steps", 1))
    if accum < 1:
        raise ValueError(f"config.optim.grad_accum_steps={accum} must be >= 1")
    accum_loop = str(config.optim.get("grad_accum_loop", "auto"))
    if accum_loop not in GRAD_ACCUM_LOOPS:
        raise ValueError(f"config.optim.grad_accum_loop={accum_loop!r} is not one of "
                         f"{', '.join(GRAD_ACCUM_LOOPS)}")
    path = paths.get(config.path.name, **configs.path_kwargs(config.path))
    conditional = bool(config.model.get("class_conditional", False))
    text = conditioning.from_config(config)
    model_cfg = dict(config.model)
    if text is not None:  # cross-attention reads the encoder's token states
        model_cfg["context_dim"] = text.context_dim
    net = models.from_config(model_cfg, data_shape=data_info.shape,
                             num_classes=data_info.num_classes)
    if text is not None:
        net = text_network.wrap(net, text, config.get("text") or conditioning.default_config())
    if str(config.get("task", "denoise")) in NETWORKS:
        net = NETWORKS[str(config.task)](net, config)
    sigma_data = float(config.model.sigma_data)
    denoiser = Denoiser(net, path, config.model.target, config.model.preconditioning,
                        sigma_data)
    num_classes = data_info.num_classes if conditional else 0
    nulls = None
    if text is not None:
        nulls = dataclasses.replace(text.nulls(), num_classes=num_classes or None)
    objective = objectives.from_config(path, config.model.target, config.loss,
                                       num_classes=num_classes, sigma_data=sigma_data,
                                       nulls=nulls)
    optimizer, schedule = optim.make_optimizer(config.optim, config.training.num_steps)
    kinds = (("label",) if conditional else ()) + (text.keys if text is not None else ())
    kinds += tuple(getattr(net, "extra_cond_kinds", ()))  # e.g. a ControlNet's "control"
    return Setup(net, denoiser, objective, optimizer, schedule, data_info, kinds,
                 float(config.training.ema_decay), bool(config.training.ema_warmup), accum,
                 str(config.get("task", "denoise")),
                 power_gammas=power_ema.gammas(config.training), grad_accum_loop=accum_loop,
                 config=config, text=text)


def example_cond(setup: Setup, batch: int = 1) -> dict[str, Array]:
    """A condition dict of the kinds the network reads (label 0, the empty prompt),
    ``[batch]`` rows (for init)."""
    cond = {"label": jnp.zeros((batch,), jnp.int32)} if "label" in setup.cond_kinds else {}
    if setup.text is not None:
        cond.update({k: jnp.asarray(v) for k, v in setup.text.example(batch).items()})
    return cond
