"""Checks a run config before any compute: unknown keys, unknown names, impossible values.

Every problem is a :class:`ConfigError` whose message is one line naming the key, the value
and what is accepted, e.g.::

    config.model.arch='resnet' is not valid; valid choices: unet, mlp
    config.trainig is not a valid key; did you mean config.training?

Valid keys are those of :func:`diffjax.configs.reference_config` (the defaults, with the keys
of every arch under ``model`` and every path keyword under ``path``; the named path refuses
the keywords it does not take).
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional

import ml_collections

from diffjax import choices, configs, objectives, paths, targets
from diffjax.autoencoder import spec as latent_spec
from diffjax.denoiser import PRECONDITIONINGS
from diffjax.errors import ConfigError  # noqa: F401  (re-exported: its old home)
from diffjax.guide_checks import check_guide, guide_dir  # noqa: F401  (re-exported)


def _choices_error(key: str, value: Any, choices: Iterable[str]) -> ConfigError:
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"config.{key}={value!r} is not valid{hint}; valid choices: "
                       f"{', '.join(map(str, choices))}")


def check_choice(key: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise _choices_error(key, value, choices)


def unknown_key(key: str, valid: Iterable[str], prefix: str) -> ConfigError:
    """The error for ``prefix + key`` not in ``valid``, naming the nearest valid key."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean config.{prefix}{close[0]}?" if close else ""
    return ConfigError(f"config.{prefix}{key} is not a valid key{hint} (valid keys under "
                       f"config.{prefix.rstrip('.') or '*'}: {', '.join(sorted(valid))})")


def check_keys(config: ml_collections.ConfigDict,
               reference: Optional[ml_collections.ConfigDict] = None) -> None:
    """Raises ConfigError for the first key of ``config`` that the reference does not have."""
    reference = configs.reference_config() if reference is None else reference
    _check_keys(config, reference, "")


def _check_keys(config: Any, reference: Any, prefix: str) -> None:
    for key in config.keys():
        valid = set(reference.keys())
        if key not in valid:
            raise unknown_key(key, valid, prefix)
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict) and isinstance(
                reference.get(key), ml_collections.ConfigDict):
            _check_keys(value, reference[key], f"{prefix}{key}.")


def is_known_override(dotted: str) -> Optional[ConfigError]:
    """None if ``--config.<dotted>`` names a valid key, else the error to report."""
    reference = configs.reference_config()
    node: Any = reference
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        prefix = "".join(p + "." for p in parts[:i])
        if not isinstance(node, ml_collections.ConfigDict):
            return ConfigError(f"config.{prefix.rstrip('.')} is not a group; it has no key {part!r}")
        if part not in node:
            return unknown_key(part, node.keys(), prefix)
        node = node[part]
    return None


# --------------------------------------------------------------------------- values
def _positive(key: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config.{key}={value!r} must be an int {bound}")


def _in_range(key: str, value: Any, lo: float, hi: float) -> None:
    if not isinstance(value, (int, float)) or not lo <= value < hi:
        raise ConfigError(f"config.{key}={value!r} must be a number in [{lo}, {hi})")


def _check_numbers(config: ml_collections.ConfigDict) -> None:
    t = config.training
    for key in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        _positive(f"training.{key}", t[key])
    _positive("training.eval_every", t.eval_every, allow_zero=True)
    _positive("training.max_consecutive_nonfinite", t.max_consecutive_nonfinite,
              allow_zero=True)
    _positive("optim.grad_accum_steps", config.optim.grad_accum_steps)
    _in_range("training.ema_decay", t.ema_decay, 0.0, 1.0)
    _positive("data.batch_size", config.data.batch_size)
    _positive("seed", config.seed, allow_zero=True)
    _positive("optim.warmup_steps", config.optim.warmup_steps, allow_zero=True)
    if not config.optim.lr > 0:
        raise ConfigError(f"config.optim.lr={config.optim.lr!r} must be > 0")
    if not config.optim.grad_clip >= 0:
        raise ConfigError(f"config.optim.grad_clip={config.optim.grad_clip!r} must be >= 0 "
                          "(0 disables clipping)")
    for key in ("num_steps", "num_samples"):
        _positive(f"sampling.{key}", config.sampling[key])
    for key in ("num_samples", "batch_size"):
        _positive(f"eval.{key}", config.eval[key])
    _positive("parallel.fsdp_min_size", config.parallel.fsdp_min_size, allow_zero=True)
    _positive("eval.likelihood_examples", config.eval.likelihood_examples)
    _check_ema(config)


def _check_ema(config: ml_collections.ConfigDict) -> None:
    """training.ema* (power-function EMAs) and sampling.ema / guide_step."""
    from diffjax import phema

    t = config.training
    check_choice("training.ema", t.get("ema", "classic"), choices.EMA_MODES)
    _positive("training.ema_snapshot_every", t.get("ema_snapshot_every", 1))
    rels = t.get("ema_sigma_rels", phema.DEFAULT_SIGMA_RELS)
    if not isinstance(rels, (tuple, list)) or not rels or len(set(rels)) != len(rels) or not all(
            isinstance(s, (int, float)) and 0 < s <= phema.MAX_SIGMA_REL for s in rels):
        raise ConfigError(f"config.training.ema_sigma_rels={rels!r} must be distinct numbers in "
                          f"(0, {phema.MAX_SIGMA_REL:.4f}] (EDM2: (0.05, 0.1))")
    try:
        phema.parse_spec(config.sampling.get("ema", ""))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.sampling.get("guide_step") is not None:
        _positive("sampling.guide_step", config.sampling.guide_step)


def _check_names(config: ml_collections.ConfigDict) -> None:
    from diffjax import models

    check_choice("path.name", config.path.name, paths.PATHS)
    check_choice("model.arch", config.model.arch, models.ARCHS)
    check_choice("task", config.task, choices.TASKS)
    check_choice("model.target", config.model.target, targets.TARGETS)
    check_choice("model.preconditioning", config.model.preconditioning, PRECONDITIONINGS)
    check_choice("loss.weighting", config.loss.weighting, objectives.WEIGHTINGS)
    check_choice("loss.time_sampling", config.loss.time_sampling, objectives.TIME_SAMPLINGS)
    check_choice("optim.optimizer", config.optim.optimizer, choices.OPTIMIZERS)
    check_choice("optim.schedule", config.optim.schedule, choices.LR_SCHEDULES)
    check_choice("optim.grad_accum_loop", config.optim.get("grad_accum_loop", "auto"),
                 choices.GRAD_ACCUM_LOOPS)
    check_choice("training.nonfinite", config.training.nonfinite, choices.NONFINITE_MODES)
    check_choice("parallel.backend", config.parallel.backend, choices.BACKENDS)
    check_choice("eval.likelihood_divergence", config.eval.likelihood_divergence,
                 choices.LIKELIHOOD_DIVERGENCES)
    check_choice("parallel.param_sharding", config.parallel.param_sharding,
                 choices.PARAM_SHARDINGS)
    _check_sampler(config.sampling)
    _check_text(config)
    if config.model.preconditioning == "edm" and config.model.target != "x0":
        raise ConfigError(f"config.model.preconditioning='edm' needs config.model.target='x0' "
                          f"(EDM's D is an x0 predictor), got config.model.target="
                          f"{config.model.target!r}; valid choices: x0")
    if config.parallel.param_sharding == "fsdp" and config.parallel.backend != "jit":
        raise ConfigError("config.parallel.param_sharding='fsdp' needs config.parallel.backend="
                          f"'jit', got {config.parallel.backend!r}; valid choices: jit")


def _check_text(config: ml_collections.ConfigDict) -> None:
    """``model.text_encoder`` and ``config.text``: choices, a captioned data set, and a
    network that reads text (cross-attention), before any data or weights are loaded."""
    from diffjax.text import ENCODERS, conditioning

    from diffjax.data import shapes_paraphrase

    check_choice("eval.prompt_set", config.eval.get("prompt_set", "test"),
                 shapes_paraphrase.SETS)
    name = config.model.get("text_encoder") or ""
    if not name:
        return
    check_choice("model.text_encoder", name, ENCODERS)
    text = config.get("text")
    if text is not None:
        _positive("text.max_length", text.max_length)
        for key in ("width", "depth", "num_heads"):
            _positive(f"text.{key}", text[key])
        if text.width % text.num_heads:
            raise ConfigError(f"config.text.width={text.width} must be divisible by "
                              f"config.text.num_heads={text.num_heads}")
    if name != "precomputed" and config.data.dataset not in conditioning.CAPTIONED:
        raise ConfigError(f"config.model.text_encoder={name!r} needs captions; "
                          f"config.data.dataset={config.data.dataset!r} has none (valid "
                          f"choices: {', '.join(conditioning.CAPTIONED)}, or text_encoder="
                          "'precomputed' with your own embeddings)")
    if name == "precomputed" and "{split}" not in str((text or {}).get("embeddings") or ""):
        raise ConfigError("config.text.embeddings must be a file path with '{split}' for "
                          "model.text_encoder='precomputed' (e.g. /data/t5_{split}.npz)")
    reads = {"unet": "cross_attn_resolutions", "dit": "cross_attn", "mmdit": None}
    arch = config.model.arch
    if arch not in reads or (reads[arch] and not config.model.get(reads[arch])):
        hint = f"set config.model.{reads[arch]}" if reads.get(arch) else \
            f"model.arch={arch!r} has no cross-attention; valid choices: unet, dit, mmdit"
        raise ConfigError(f"config.model.text_encoder={name!r} needs a network that attends "
                          f"to text: {hint}")


def _check_sampler(sampling_cfg: ml_collections.ConfigDict) -> None:
    from diffjax import samplers

    check_choice("sampling.sampler", sampling_cfg.sampler, samplers.SAMPLERS)
    step = sampling_cfg.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ConfigError(f"config.sampling.step={step!r} must be a checkpoint step (an "
                          "integer >= 0) or None for the newest")
    if step is not None and sampling_cfg.get("ema"):
        raise ConfigError(f"config.sampling.step={step} and config.sampling.ema="
                          f"{sampling_cfg.ema!r} both choose the weights: set one")
    micro = sampling_cfg.get("micro_batch", 0)
    if isinstance(micro, bool) or not isinstance(micro, int) or micro < 0:
        raise ConfigError(f"config.sampling.micro_batch={micro!r} must be an integer >= 0 "
                          "(0: the whole batch at once)")
    if sampling_cfg.grid is not None:
        check_choice("sampling.grid", sampling_cfg.grid, samplers.GRIDS)
    spec = samplers.SAMPLERS[sampling_cfg.sampler]
    takes = set(spec.options) | ({"rho"} if spec.fixed_step else set()) | \
        {"clip_x0", "dynamic_threshold", "t_min", "t_max"}  # options of every sampler
    for key in configs.sampler_options(sampling_cfg):
        if key not in takes:
            raise ConfigError(
                f"config.sampling.{key}={sampling_cfg[key]!r} is not an option of "
                f"config.sampling.sampler={sampling_cfg.sampler!r}; its options: "
                f"{', '.join(sorted(takes)) or '(none)'}")


def _check_sampling_run(config: ml_collections.ConfigDict, path: Any, data_info: Any) -> None:
    """The sampler's own checks of option values and of the path/target/grid pair
    (:func:`diffjax.samplers.check`: no model is run, no noise drawn)."""
    import numpy as np

    from diffjax import samplers

    sampling = config.sampling
    options = configs.sampler_options(sampling)
    if sampling.grid is not None:
        options["grid"] = sampling.grid
    if config.model.class_conditional:
        options.update(label=np.zeros((1,), np.int32), guidance_scale=sampling.guidance_scale,
                       num_classes=data_info.num_classes)
    elif config.model.get("text_encoder"):  # a stand-in text condition and its null
        text = {"text": np.zeros((1, 1), np.int32)}
        options.update(cond=text, uncond=text, guidance_scale=sampling.guidance_scale)
    if sampling.get("guide_workdir"):  # autoguidance; the guide is checked in validate()
        options.update(guidance_scale=sampling.guidance_scale, guide_fn=abs)
        options.pop("uncond", None)
    if sampling.get("guidance_interval") is not None:
        options["guidance_interval"] = sampling.guidance_interval
    try:
        samplers.check(path, (1, *data_info.shape), target=config.model.target,
                       sampler=sampling.sampler, num_steps=sampling.num_steps, **options)
    except ValueError as e:
        raise ConfigError(f"config.sampling (sampler={sampling.sampler!r}, "
                          f"num_steps={sampling.num_steps}): {e}") from None


def _check_metrics(config: ml_collections.ConfigDict, data_info: Any) -> None:
    from diffjax.evaluate import metrics

    names = choices.metric_names(config, data_info.kind)
    prompted = [n for n in names if getattr(metrics.METRICS.get(n), "needs_prompts", False)]
    if prompted and not config.model.get("text_encoder"):
        raise ConfigError(f"config.eval.metrics: {', '.join(prompted)} scores samples against "
                          "the prompts they were generated from; it needs a text-conditioned "
                          "model (config.model.text_encoder: minilm, learned or precomputed)")
    try:
        metrics.validate(names, data_info.kind,
                         conditional=bool(config.model.class_conditional),
                         inception_weights=config.eval.inception_weights)
        from diffjax.evaluate import nll
        kwargs = configs.path_kwargs(config.path)
        nll.check(metrics.split_metrics(names)[1], data_info.kind,
                  paths.get(config.path.name, **kwargs), config.model.target)
    except (ValueError, OSError) as e:
        raise ConfigError(f"config.eval.metrics={','.join(names)!r}: {e}") from None


def _check_recipe(config: ml_collections.ConfigDict, data_info: Any) -> None:
    """Builds the path, checks the network and the objective (all cheap, nothing traced)."""
    from diffjax import models

    kwargs = configs.path_kwargs(config.path)
    try:
        path = paths.get(config.path.name, **kwargs)
    except ValueError as e:
        raise ConfigError(f"config.path: {e}") from None
    try:
        models.validate(config.model, data_info.shape, data_info.num_classes)
    except ValueError as e:
        message = str(e)  # the models name their keys "model.<key>"
        prefix = "config." if message.startswith("model.") else "config.model: "
        raise ConfigError(prefix + message) from None
    num_classes = data_info.num_classes if config.model.class_conditional else 0
    try:
        objectives.from_config(path, config.model.target, config.loss, num_classes=num_classes)
    except ValueError as e:
        raise ConfigError(f"config.loss: {e}") from None
    _check_sampling_run(config, path, data_info)


def validate_static(config: ml_collections.ConfigDict) -> None:
    """Keys, numbers and names: the checks that run no JAX computation, so they may come
    before ``jax.distributed.initialize`` (which refuses to start after one).

    Raises:
      ConfigError: the first problem found, as a one-line message.
    """
    check_keys(config)
    _check_numbers(config)
    _check_names(config)
    _check_controlnet(config)


def _check_controlnet(config: ml_collections.ConfigDict) -> None:
    """``config.controlnet`` and the editing/control keys of ``config.sampling``."""
    from diffjax.controlnet import settings

    try:
        settings.check(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    sampling = config.sampling
    strength = sampling.get("strength", 0.6)
    if not 0.0 < float(strength) <= 1.0:
        raise ConfigError(f"config.sampling.strength={strength!r} must be in (0, 1] (1 = "
                          "start from pure noise)")
    if float(sampling.get("control_scale", 1.0)) < 0:
        raise ConfigError(f"config.sampling.control_scale={sampling.control_scale!r} must be "
                          ">= 0")
    if sampling.get("control") and sampling.get("control_from"):
        raise ConfigError("config.sampling.control and config.sampling.control_from are "
                          "exclusive: give the control map or the image to extract it from")
    if sampling.get("mask") and not sampling.get("init_image"):
        raise ConfigError(f"config.sampling.mask={sampling.mask!r} needs "
                          "config.sampling.init_image (the image to inpaint)")


def validate(config: ml_collections.ConfigDict, *, process_count: int = 1):
    """Checks everything that can be checked without devices; returns the data's DataInfo
    (the data set's, also when ``config.latent.autoencoder`` makes the network see latents).

    Some checks run small JAX computations (a sampler's time grid): in a multi-process run
    call it after :func:`diffjax.parallel.initialize`.

    Raises:
      ConfigError: the first problem found, as a one-line message.
    """
    from diffjax import data

    validate_static(config)
    try:
        data_info = data.validate_config(config.data, process_count)
    except ValueError as e:
        message = str(e)
        raise ConfigError(message if message.startswith("config.") else
                          f"config.data: {message}") from None
    latent_spec.check(config, data_info)
    modelled = latent_spec.data_info(config, data_info)
    _check_recipe(config, modelled)
    if config.task != "autoencoder":  # an autoencoder run reports its own metrics
        _check_metrics(config, data_info)
    check_guide(config.sampling, config.path, modelled)
    return data_info


def check_devices(config: ml_collections.ConfigDict, device_count: int,
                  process_count: int = 1) -> None:
    """The global batch must split evenly over all devices of all processes."""
    batch = config.data.batch_size
    if batch % device_count:
        raise ConfigError(
            f"config.data.batch_size={batch} (the global batch) is not divisible by the "
            f"{device_count} devices ({process_count} process(es)); valid choices: multiples "
            f"of {device_count}")
