"""The trainer, one job per module.

=================  ===========================================================================
module             job
=================  ===========================================================================
``setup``          :func:`build`: a config -> :class:`Setup` (network, denoiser, objective,
                   optimizer); no arrays
``optim``          the optimizer and the optax learning-rate schedule
``state``          :class:`TrainState` (a pytree), its creation, shapes and shardings
``tasks``          what the step minimises: ``loss(params, batch, key, frozen)``; registry
                   :data:`TASKS` keyed by ``config.task`` (``denoise``, ...)
``frozen``         other runs' parameters a task reads, by reference, checked on resume
``power_ema``      EDM2's power-function EMAs in the state and their snapshots on disk
``guide``          the autoguidance guide (another run, or an earlier checkpoint) for sampling
``step``           the one train step over any task (gradient accumulation, non-finite skip,
                   EMA)
``backends``       that step compiled with ``jax.jit`` over the mesh or with ``jax.pmap``
``evaluation``     sampling (compiled once, data-parallel) and metrics during training
``loop``           :func:`train` and :func:`restore_for_inference`
=================  ===========================================================================

:mod:`diffjax.train` re-exports the public names.
"""
