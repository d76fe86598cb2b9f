"""The default run configuration and the recipe table every config file starts from.

``default_config()`` holds every key a run reads, with its default; it is also the
reference against which :mod:`diffjax.config_validation` checks a config for unknown keys.
Config files under ``configs/`` call it, set the data and the network, and apply one entry
of :data:`RECIPES` with :func:`apply_recipe`, so that the recipes of one config differ only
in the keys the recipe names (path, target, preconditioning, weighting, time sampling and
the sampler).

Groups: ``data``, ``path`` (``name`` + the path's keyword arguments), ``model`` (``arch``,
the recipe keys ``target``/``preconditioning``/``sigma_data``, the arch's keys), ``loss``
(the :class:`diffjax.objectives.Objective` fields), ``optim``, ``training``, ``sampling``,
``eval``, ``latent`` (:mod:`diffjax.autoencoder.spec`), ``parallel`` and the top-level ``seed``;
``distill`` and ``autoencoder`` belong to their tasks' config files.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from diffjax import data as data_lib
from diffjax import models
from diffjax import paths as paths_lib
from diffjax.autoencoder import spec as latent_spec
from diffjax.text import conditioning as text_conditioning

ConfigDict = ml_collections.ConfigDict


def _optional(kind: type, value: Any = None) -> ml_collections.FieldReference:
    """A field that may be None but takes ``kind`` from the command line."""
    return ml_collections.FieldReference(value, field_type=kind)


def _path_keywords() -> dict[str, type]:
    """Every keyword argument of every path in :data:`diffjax.paths.PATHS`, with its type."""
    import inspect

    keywords: dict[str, type] = {}
    for cls in paths_lib.PATHS.values():
        for name, param in inspect.signature(cls).parameters.items():
            if param.default is not inspect.Parameter.empty:
                keywords.setdefault(name, type(param.default))
    return keywords


def default_path_config(name: str = "rectified_flow", **kwargs: Any) -> ConfigDict:
    """``config.path``: ``name`` and every path keyword, ``None`` meaning the path's default.

    Holding all keywords lets ``--config.path.t_max=0.999`` (or ``sigma_max``, ``rho``, ...)
    work from the command line on any config; a keyword the named path does not take is
    refused by the validation, naming the path's keywords.
    """
    cfg = ConfigDict({"name": name})
    for key, kind in _path_keywords().items():
        cfg[key] = _optional(kind, kwargs.pop(key, None))
    if kwargs:
        raise ValueError(f"Unknown path keyword(s) {sorted(kwargs)}; valid: "
                         f"{', '.join(sorted(_path_keywords()))}")
    return cfg


def path_kwargs(path_cfg: ConfigDict) -> dict[str, Any]:
    """The keyword arguments of ``paths.get(path_cfg.name, ...)``: the keys that are set."""
    return {k: v for k, v in path_cfg.items() if k != "name" and v is not None}


def default_model_config(arch: str = "unet") -> ConfigDict:
    """``config.model`` for ``arch``: the network's keys plus the recipe keys."""
    cfg = models.default_config(arch)
    cfg.target = "velocity"
    cfg.preconditioning = "none"
    cfg.sigma_data = 0.5  # the one data scale: EDM preconditioning and the edm weighting
    # "" = no text; minilm | learned | precomputed (diffjax.text; settings in config.text).
    cfg.text_encoder = ""
    return cfg


def default_loss_config() -> ConfigDict:
    """``config.loss``: the fields of :class:`diffjax.objectives.Objective`."""
    return ConfigDict({
        "weighting": "mse",
        "time_sampling": "uniform",
        "t_min": _optional(float),
        "t_max": _optional(float),
        "num_timesteps": _optional(int),
        "min_snr_gamma": 5.0,
        "p_mean": -1.2,
        "p_std": 1.2,
        "logit_mean": 0.0,
        "logit_std": 1.0,
        "label_dropout": 0.0,
    })


# ``config.sampling`` keys passed to the sampler as options when set (not None).
SAMPLER_OPTIONS: dict[str, type] = {
    # every sampler: the time range sampled (None = the path's); e.g. t_max=0.999 and
    # t_min=1e-3 let the log-SNR samplers run a rectified-flow model (log-SNR finite)
    "t_min": float, "t_max": float,
    "eta": float,                      # ddim
    "s_churn": float, "s_tmin": float, "s_tmax": float, "s_noise": float,  # edm
    "order": int,                      # dpm_solver++, unipc
    "snr": float, "corrector_steps": int,  # pc
    "rho": float,                      # the karras grid
    "variable": str,                   # euler, heun, rk4: "t" | "sigma"
    "convention": str,                 # dpm_solver++, unipc: "reference" | "diffusers"
    "clip_x0": float,                  # every sampler: x0_hat clipped to [-c, c]
    "dynamic_threshold": float,        # every sampler: Imagen's percentile p
    "rtol": float, "atol": float,      # adaptive (num_steps is then its budget)
}


def sampler_options(sampling: ConfigDict) -> dict[str, Any]:
    """The sampler options set in ``config.sampling`` (those not None)."""
    return {k: sampling[k] for k in SAMPLER_OPTIONS if sampling.get(k) is not None}


def default_config() -> ConfigDict:
    """Every key a run reads, with its default (a flow-matching U-Net on digits)."""
    config = ConfigDict()
    config.seed = 0
    # The training task (diffjax.training.tasks.TASKS): what the one train step minimises.
    config.task = "denoise"
    config.data = data_lib.default_config()
    config.path = default_path_config("rectified_flow")
    config.model = default_model_config("unet")
    config.loss = default_loss_config()
    config.text = text_conditioning.default_config()
    config.optim = ConfigDict({
        "optimizer": "adamw",          # adam | adamw
        "lr": 1e-3,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "grad_clip": 1.0,              # global-norm clipping; 0 disables it
        "warmup_steps": 100,           # linear warm-up from 0
        "schedule": "constant",        # constant | cosine (decays to end_lr_factor * lr)
        "end_lr_factor": 0.0,
        # Micro-batches per update: data.batch_size rows are split into this many and their
        # gradients averaged, so a paper's batch fits any device's memory.
        "grad_accum_steps": 1,
        # How the micro-batches run: scan (a loop: one micro-batch's activations in memory),
        # unroll (a copy per micro-batch: XLA:CPU runs the gradient convolutions of a loop
        # body ~20x slower) or auto (unroll on CPU, scan elsewhere).
        "grad_accum_loop": "auto",
    })
    config.training = ConfigDict({
        "num_steps": 10_000,
        "log_every": 100,
        "eval_every": 5_000,           # also at the last step; 0 disables evaluation
        "checkpoint_every": 1_000,     # also at the last step
        "keep_checkpoints": 3,
        "ema_decay": 0.999,
        # EMA decay min(ema_decay, (1 + step) / (10 + step)): early EMA tracks the weights.
        "ema_warmup": True,
        # "classic" (the EMA above) | "power": also keep EDM2's power-function EMAs of these
        # lengths and snapshot them every ema_snapshot_every steps (and at the last step) for
        # python -m diffjax.ema (post-hoc EMA; disk: diffjax.training.power_ema).
        "ema": "classic",
        "ema_sigma_rels": (0.05, 0.10),
        "ema_snapshot_every": 1_000,
        "nonfinite": "skip",           # skip | stop
        # Under "skip": stop (NonFiniteError) after this many skipped steps in a row; 0 = never.
        "max_consecutive_nonfinite": 50,
        "progress_bar": True,
    })
    config.sampling = ConfigDict({
        "sampler": "heun",
        "num_steps": 50,
        "guidance_scale": 1.0,
        "num_samples": 64,
        "grid": _optional(str),        # None = the sampler's own default grid
        "seed": 1,
        # > 0: each sampling program runs its rows micro_batch at a time, one chunk after
        # another inside the one compiled program (lax.map; each chunk its own noise). On
        # CPU, 64 rows 16 at a time sample ~1.25x faster than all 64 at once (README,
        # "Against PyTorch/diffusers"). 0: the whole batch at once.
        "micro_batch": 0,
        # --mode=sample of a text-conditioned run: one prompt, or a file of one per line;
        # samples_per_prompt images each (a grid row per prompt, titled, + an .npz).
        "prompt": _optional(str),
        "prompts_file": _optional(str),
        "samples_per_prompt": 8,
        # Which EMA to sample: "" = the run's EMA; "sigma_rel:<s>" = the post-hoc EMA that
        # python -m diffjax.ema reconstructed at length s (training.ema="power" runs).
        "ema": "",
        # --mode=sample/eval: sample this checkpoint step of the run (None = its newest),
        # e.g. to score a run's earlier checkpoints after it finished.
        "step": _optional(int),
        # Autoguidance (Karras et al. 2024): guide with another run's EMA (or an earlier
        # checkpoint of this one, guide_step; None = its newest) at guidance_scale.
        "guide_workdir": _optional(str),
        "guide_step": _optional(int),
        # (sigma_lo, sigma_hi) in sigma/alpha: guide only there (Kynkaanniemi et al. 2024).
        "guidance_interval": _optional(tuple),
        # --mode=sample, editing and control (diffjax.controlnet.editing): a control map image
        # of the ControlNet's kind, or an image to extract it from; the residuals' scale;
        # image-to-image (SDEdit) from init_image at strength in (0, 1]; inpainting of
        # init_image where the mask image is black (white = keep).
        "control": _optional(str),
        "control_from": _optional(str),
        "control_scale": 1.0,
        "init_image": _optional(str),
        "strength": 0.6,
        "mask": _optional(str),
        # Sampler options (diffjax.sample's table); None = the sampler's default. Setting
        # one the chosen sampler does not take is a config error.
        **{name: _optional(kind) for name, kind in SAMPLER_OPTIONS.items()},
    })
    config.eval = ConfigDict({
        # Comma-separated names of diffjax.evaluate.METRICS; "" = the default for the data
        # kind (fd_classifier for images, sliced_wasserstein,mmd for points).
        "metrics": "",
        "num_samples": 1000,
        "batch_size": 500,
        "cache_dir": _optional(str),   # None = ~/.cache/diffjax/eval
        "inception_weights": _optional(str),  # local .npz, for fid_inception
        # Text models: the prompts of the evaluation samples: the test captions ("test"),
        # or the same scenes in held-out wording ("reordered", "reworded"; shapes).
        "prompt_set": "test",
        # nll / bits_per_dim (diffjax.likelihood on the test split): examples, and the
        # divergence: exact | hutchinson | auto (exact up to 16 dimensions).
        "likelihood_examples": 256,
        "likelihood_divergence": "auto",
    })
    # Diffusion in an autoencoder's latent space (diffjax.autoencoder.spec.latent_config).
    config.latent = latent_spec.latent_config()
    config.parallel = ConfigDict({
        "backend": "jit",              # jit | pmap
        "param_sharding": "replicated",  # replicated | fsdp
        "fsdp_min_size": 2**18,        # parameters with fewer elements stay replicated
    })
    return config


def reference_config() -> ConfigDict:
    """The default config with the keys of every arch in ``model``: the set of valid keys."""
    config = default_config()
    with config.unlocked():
        from diffjax.controlnet import settings as controlnet_settings
        from diffjax.distill import settings as distill_settings

        config.distill = distill_settings.default_config()
        config.autoencoder = latent_spec.autoencoder_config()
        config.controlnet = controlnet_settings.default_config()
        for arch in models.ARCHS:
            for key, value in default_model_config(arch).items():
                if key not in config.model:
                    config.model[key] = value
    return config


# The recipe keys of each formulation; everything else in a config is shared.
RECIPES: dict[str, dict[str, Any]] = {
    # Ho et al. 2020: discrete VP path, eps target, L_simple, DDIM sampling.
    "ddpm": {
        "path": {"name": "ddpm"},
        "model": {"target": "eps", "preconditioning": "none"},
        "loss": {"weighting": "mse", "time_sampling": "discrete"},
        "sampling": {"sampler": "ddim"},
    },
    # Song et al. 2021, VE SDE: score target with lambda(t) = sigma^2 (the eps weighting),
    # predictor-corrector sampling.
    "score_ve": {
        "path": {"name": "ve"},
        "model": {"target": "score", "preconditioning": "none"},
        "loss": {"weighting": "eps", "time_sampling": "uniform"},
        "sampling": {"sampler": "pc"},
    },
    # Song et al. 2021, VP SDE (continuous DDPM): score target, reverse-SDE sampling.
    "score_vp": {
        "path": {"name": "vp_linear"},
        "model": {"target": "score", "preconditioning": "none"},
        "loss": {"weighting": "eps", "time_sampling": "uniform"},
        "sampling": {"sampler": "euler_maruyama"},
    },
    # Lipman et al. 2022 / Liu et al. 2022: straight path, velocity target, ODE sampling.
    "flow": {
        "path": {"name": "rectified_flow"},
        "model": {"target": "velocity", "preconditioning": "none"},
        "loss": {"weighting": "mse", "time_sampling": "uniform"},
        "sampling": {"sampler": "heun"},
    },
    # Karras et al. 2022: preconditioned x0 model, EDM weighting, log-normal noise levels,
    # EDM's Heun sampler on the rho = 7 grid. The network sees
    # c_noise = log(sigma)/4, a range of about 2.6, hence Fourier features.
    "edm": {
        "path": {"name": "edm"},
        "model": {"target": "x0", "preconditioning": "edm", "embedding": "fourier"},
        "loss": {"weighting": "edm", "time_sampling": "lognormal"},
        "sampling": {"sampler": "edm"},
    },
}


def apply_recipe(config: ConfigDict, recipe: str, **path_kwargs: Any) -> ConfigDict:
    """Sets the recipe keys of ``config`` in place (and returns it).

    ``path_kwargs`` add keyword arguments of the recipe's path (e.g. ``sigma_max`` for a VE
    path matched to the data's scale); they become ``config.path`` keys.

    Raises:
      ValueError: unknown recipe.
    """
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
    with config.unlocked():
        for group, values in RECIPES[recipe].items():
            if group == "path":
                config.path = default_path_config(**values, **path_kwargs)
            else:
                config[group].update(values)
    return config


def recipe_names() -> tuple[str, ...]:
    return tuple(RECIPES)


def apply_shapes_t2i(config: ConfigDict, text_encoder: str = "minilm") -> ConfigDict:
    """The shapes text-to-image job's recipe (DESIGN §9), shared by configs/shapes_t2i.py
    (pixels) and configs/shapes_latent.py (latents), in place, after ``config.model`` is
    chosen: rectified flow with the velocity target and logit-normal times (Esser et al.
    2024), the text dropped to the empty prompt for 10% of examples (Ho & Salimans 2022),
    2000 steps of batch 32 (what fills the pixel job's 20 CPU minutes), Heun sampling with
    guidance 3 applied only at ``sigma/alpha <= 2`` (a guidance interval, Kynkäänniemi et al.
    2024: guiding at high noise, where the layout is decided, extrapolates the object count of
    a vague prompt to empty images), and ``shapes_eval`` and ``fd_shapes`` on 500 test
    captions."""
    config.data.dataset = "shapes"
    config.data.batch_size = 32
    config.path = default_path_config("rectified_flow")
    config.model.target = "velocity"
    config.model.text_encoder = text_encoder
    config.text.max_length = 24
    config.loss.time_sampling = "logit_normal"
    config.loss.label_dropout = 0.1  # conditions (here: the text) -> the empty prompt
    config.optim.update(lr=2e-3, warmup_steps=100, schedule="cosine", end_lr_factor=0.05)
    config.training.update(num_steps=2000, log_every=100, eval_every=2000, checkpoint_every=500,
                           ema_decay=0.995)
    config.sampling.update(sampler="heun", num_steps=8, guidance_scale=3.0, num_samples=64,
                           guidance_interval=(0.0, 2.0))
    config.eval.update(metrics="shapes_eval,fd_shapes", num_samples=500, batch_size=250)
    return config
