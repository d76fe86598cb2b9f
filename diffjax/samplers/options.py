"""Every check of :func:`diffjax.sample`'s arguments, before any compute: :func:`check`.

The checks need the path's constants (``alpha(t_max)``, ``sigma(t_min)``) and nothing else:
no model, no random numbers, no time grid. :func:`diffjax.samplers.check` is the public entry
(config validation calls it with the config's sampler settings).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import jax.numpy as jnp

from diffjax import conditions
from diffjax import targets as targets_lib
from diffjax.paths import Path
from diffjax.samplers import clipping, conventions
from diffjax.samplers.grids import LOGSNR_GRIDS, check_grid
from diffjax.samplers.registry import Sampler, get

# Options every sampler takes (with their defaults); fixed-step samplers also take GRID.
COMMON = {"t_min": None, "t_max": None, "denoise_to_zero": None, "return_info": False,
          "return_trajectory": False, "label": None, "num_classes": None, "nulls": None,
          "guide_fn": None, "guide_params": None, "guide_target": None,
          "guidance_interval": None, "callback": None, "progress": None, "x_init": None,
          "known": None, "mask": None,
          "inpaint_noise": "fixed", "clip_x0": None, "dynamic_threshold": None}
GRID = {"grid": None, "rho": 7.0}
# Arguments of sample() that are not options: they are handled here all the same.
ARGUMENTS = {"params": None, "cond": None, "uncond": None, "guidance_scale": 1.0}


def resolve(sampler: str, spec: Sampler, options: Mapping[str, Any]) -> dict:
    """The options with defaults filled in; unknown names and bad values raise."""
    accepted = dict(COMMON, **spec.options, **(GRID if spec.fixed_step else {}))
    unknown = sorted(set(options) - set(accepted) - set(ARGUMENTS))
    if unknown:
        raise ValueError(f"Sampler {sampler!r} got unknown option(s) {unknown}; it takes: "
                         f"{', '.join(sorted(accepted))}")
    opts = {**ARGUMENTS, **accepted, **options}
    if spec.fixed_step and opts["grid"] is None:
        check_grid("uniform", opts["rho"])  # the grid is chosen with the path (conventions)
    elif spec.fixed_step:
        _check_grid_option(opts)
    else:
        for name in ("return_trajectory", "callback", "progress"):
            if opts[name]:
                raise ValueError(f"Sampler {sampler!r} does not take {name}: its steps are "
                                 "chosen at run time")
    if opts["callback"] is not None and not callable(opts["callback"]):
        raise ValueError(f"option callback must be a function (i, t, x, x0_hat), got "
                         f"{opts['callback']!r}")
    if opts["progress"] is not None and not callable(opts["progress"]):
        raise ValueError(f"option progress must be a function (i, n), got "
                         f"{opts['progress']!r}")
    spec.check(opts)
    clipping.from_options(opts["clip_x0"], opts["dynamic_threshold"])
    return opts


def _check_grid_option(opts: dict) -> None:
    if isinstance(opts["grid"], str):
        check_grid(opts["grid"], opts["rho"])
        return
    ts = jnp.asarray(opts["grid"])
    if ts.ndim != 1 or ts.shape[0] < 1 or not bool(jnp.all(jnp.diff(ts) < 0)):
        raise ValueError("an explicit grid must be a 1-d array of strictly decreasing times "
                         f"(t_max ... t_min), got {ts}")
    if opts["t_min"] is not None or opts["t_max"] is not None:
        raise ValueError("an explicit grid sets t_max and t_min itself; do not pass them")
    opts["t_max"], opts["t_min"] = float(ts[0]), float(ts[-1])


def conditions_of(opts: dict, batch: int) -> tuple[Optional[dict], Optional[dict]]:
    """``(cond, uncond)`` from ``cond``/``label``/``uncond``/``nulls``/``num_classes``.

    ``uncond`` is only built when classifier-free guidance needs it (``w != 1`` and no
    ``guide_fn``); by default it is the null of each kind of ``cond``
    (:class:`diffjax.conditions.Nulls`; ``num_classes=n`` is short for ``Nulls(num_classes=n)``).
    """
    if opts["label"] is not None and opts["cond"] is not None:
        raise ValueError("pass the condition once: label= is shorthand for cond={'label': ...}")
    if opts["label"] is not None:
        if tuple(jnp.shape(opts["label"])) != (batch,):
            raise ValueError(f"label must have shape {(batch,)}, got {jnp.shape(opts['label'])}")
        cond = conditions.from_label(opts["label"])
    else:
        cond = None if opts["cond"] is None else conditions.check(opts["cond"], batch)
    w, guided = float(opts["guidance_scale"]), opts["guide_fn"] is not None
    if w != 1.0 and cond is None and not guided:
        raise ValueError(f"guidance_scale={w:g} needs label (or cond=) to guide towards, or "
                         "guide_fn= (autoguidance)")
    if opts["uncond"] is not None and guided:
        raise ValueError("pass either uncond (classifier-free guidance) or guide_fn "
                         "(autoguidance), not both")
    if w == 1.0 or guided:
        return cond, None
    if opts["uncond"] is not None:
        uncond = conditions.check(opts["uncond"], batch)
        if set(uncond) != set(cond):
            raise ValueError(f"uncond must have the keys of cond {sorted(cond)}, got "
                             f"{sorted(uncond)}")
        return cond, uncond
    nulls = opts["nulls"]
    if nulls is None and opts["num_classes"] is not None:
        nulls = conditions.Nulls(num_classes=opts["num_classes"])
    if nulls is None:
        raise ValueError("classifier-free guidance (guidance_scale != 1) needs the null "
                         "condition: num_classes (the null label of the conditional model), "
                         "nulls= (a diffjax.conditions.Nulls) or uncond=")
    if "label" in cond and not isinstance(nulls.num_classes, int):
        raise ValueError("classifier-free guidance (guidance_scale != 1) needs num_classes, "
                         "the null label of the conditional model")
    return cond, nulls.null(cond)


def check_guide(opts: dict, path: Path) -> None:
    """Autoguidance and the guidance interval."""
    if opts["guide_fn"] is None:
        for name in ("guide_params", "guide_target"):
            if opts[name] is not None:
                raise ValueError(f"option {name} needs guide_fn (the guiding model)")
    elif opts["guide_target"] is not None:
        targets_lib.check_target(opts["guide_target"])
    interval = opts["guidance_interval"]
    if interval is None:
        return
    if opts["guide_fn"] is None and opts["uncond"] is None and opts["guidance_scale"] == 1.0:
        raise ValueError("guidance_interval needs guidance (guidance_scale != 1)")
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be (sigma_lo, sigma_hi) in sigma/alpha, got "
                         f"{interval!r}") from None
    if not 0.0 <= lo <= hi:
        raise ValueError(f"guidance_interval must satisfy 0 <= sigma_lo <= sigma_hi (noise "
                         f"levels sigma/alpha on {path.name}), got {interval!r}")
    opts["guidance_interval"] = (lo, hi)


def check_editing(sampler: str, spec: Sampler, opts: dict, shape: tuple) -> None:
    """SDEdit and inpainting options."""
    if opts["inpaint_noise"] not in ("fixed", "fresh"):
        raise ValueError(f"option inpaint_noise must be 'fixed' or 'fresh', got "
                         f"{opts['inpaint_noise']!r}")
    for name in ("x_init", "known"):
        if opts[name] is not None and tuple(jnp.shape(opts[name])) != tuple(shape):
            raise ValueError(f"option {name} must have the sample shape {tuple(shape)}, got "
                             f"{jnp.shape(opts[name])}")
    if (opts["known"] is None) != (opts["mask"] is None):
        raise ValueError("inpainting needs both known and mask")
    if opts["known"] is not None:
        if not spec.fixed_step:
            raise ValueError(f"Sampler {sampler!r} does not take known/mask: inpainting re-imposes "
                             "the known region on a fixed grid")
        try:
            jnp.broadcast_shapes(jnp.shape(opts["mask"]), tuple(shape))
        except ValueError:
            raise ValueError(f"mask of shape {jnp.shape(opts['mask'])} does not broadcast to "
                             f"{tuple(shape)}") from None


def check_domain(sampler: str, spec: Sampler, path: Path, target: str, opts: dict,
                 t_min: float, t_max: float, denoise: bool) -> None:
    """The path/target/sampler/grid combination can work on ``[t_min, t_max]``."""
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    alpha_max = float(path.alpha(jnp.asarray(t_max)))
    sigma_min = float(path.sigma(jnp.asarray(t_min)))
    for role, tgt in (("target", target), ("guide_target", opts["guide_target"])):
        if tgt in ("eps", "score") and not alpha_max > 0:
            raise ValueError(
                f"{role} {tgt!r} cannot give x0_hat = (x - sigma eps) / alpha at t_max={t_max}, "
                f"where alpha = 0 on {path.name}: pass t_max < {t_max} (e.g. t_max=0.999) or use "
                "a model with target 'velocity', 'v' or 'x0'")
        if tgt == "x0" and not sigma_min > 0 and (spec.evaluates_at_t_min(opts) or denoise):
            raise ValueError(
                f"{role} 'x0' cannot give eps_hat = (x - alpha x0) / sigma at t_min={t_min}, "
                f"where sigma = 0 on {path.name}, and {sampler!r} evaluates the model there: "
                "pass t_min > 0")
    needs = ([f"sampler {sampler!r}"] if spec.finite_logsnr else []) + \
        ([f"grid {opts['grid']!r}"] if spec.fixed_step and isinstance(opts["grid"], str)
         and opts["grid"] in LOGSNR_GRIDS else [])
    if needs and not (alpha_max > 0 and sigma_min > 0):
        raise ValueError(
            f"{' and '.join(needs)} {'needs' if len(needs) == 1 else 'need'} a finite log-SNR "
            f"on [t_min, t_max], but on {path.name} "
            f"alpha(t_max={t_max}) = {alpha_max:g} and sigma(t_min={t_min}) = {sigma_min:g}: pass "
            "t_max < 1 (e.g. 0.999) and/or t_min > 0 (e.g. 1e-3)")


def check_num_steps(num_steps: Any) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1 (the number of model evaluations), "
                         f"got {num_steps!r}")


def time_range(path: Path, opts: dict) -> tuple[float, float]:
    t_min = float(path.t_min if opts["t_min"] is None else opts["t_min"])
    t_max = float(path.t_max if opts["t_max"] is None else opts["t_max"])
    return t_min, t_max


def final_denoise(spec: Sampler, path: Path, opts: dict, t_min: float) -> int:
    """1 if the run ends with the ``x0_hat`` evaluation (``denoise_to_zero``), else 0."""
    denoise = opts["denoise_to_zero"]
    if denoise is None:
        default = spec.denoise_to_zero
        default = default(opts) if callable(default) else default
        denoise = default and float(path.sigma(jnp.asarray(t_min))) > 0
    return int(bool(denoise))


def check_all(path: Path, shape: tuple, *, target: str, sampler: str, num_steps: int,
              **options) -> tuple[Sampler, dict]:
    """Every argument check; returns the registry entry and the resolved options."""
    spec = get(sampler)
    check_num_steps(num_steps)
    targets_lib.check_target(target)
    opts = resolve(sampler, spec, options)
    check_editing(sampler, spec, opts, shape)
    check_guide(opts, path)
    conditions_of(opts, shape[0])
    t_min, t_max = time_range(path, opts)
    # The grid and ODE variable of this path (integer spacings on discrete-time paths).
    opts = conventions.resolve(sampler, path, opts, t_min, t_max, default_grid=spec.grid,
                               fixed_step=spec.fixed_step, off_grid=spec.off_grid(opts))
    if spec.fixed_step and isinstance(opts["grid"], str):
        check_grid(opts["grid"], opts["rho"])
    denoise = final_denoise(spec, path, opts, t_min)
    check_domain(sampler, spec, path, target, opts, t_min, t_max, bool(denoise))
    return spec, opts
