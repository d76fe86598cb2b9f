"""The sampling engine: checks, the plan of evaluations, and one compiled run per setting.

:func:`sample` checks everything (:mod:`.options`), turns ``num_steps`` into a :class:`Plan`,
draws the starting noise and the step keys, and calls :func:`_run`, a ``jax.jit`` program
whose static part (:class:`_Static`: sampler, model function, path, target, shape, plan and
options) is its cache key. The parameters, the condition and every other array are traced
arguments: a new set of weights of the same structure reuses the compiled program, and the
program's size does not grow with the number of weights.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import conv, xla_options
from diffjax.paths import Path
from diffjax.samplers import adaptive as adaptive_lib
from diffjax.samplers import clipping, few_step, guidance, options as options_lib
from diffjax.samplers.base import Plan, Problem
from diffjax.samplers.grids import time_grid
from diffjax.samplers.registry import SAMPLERS, Sampler

Array = jax.Array


class SampleInfo(NamedTuple):
    """What :func:`sample` returns next to ``x`` when asked (``return_info=True``).

    nfe: model evaluations used (a Python int; an int32 scalar array for ``adaptive``). A
      guided evaluation (one batched call on ``[x; x]``, or main + guide) counts as one.
    ts: the grid ``[K + 1]`` (``[t_max, t_min]`` for ``adaptive``).
    trajectory: ``[K + 1, *shape]`` with ``return_trajectory=True``, else None.
    finished: whether the sampler reached ``t_min`` (True for fixed-step samplers; a bool
      scalar array for ``adaptive``, False when it ran out of ``num_steps``).
    """

    nfe: Union[int, Array]
    ts: Array
    trajectory: Optional[Array]
    finished: Union[bool, Array] = True


def plan(sampler: str, spec: Sampler, opts: dict, num_steps: int, denoise: int) -> Plan:
    """How ``num_steps`` evaluations are spent (raises if they leave no interval)."""
    keep = bool(opts["return_trajectory"])
    evals = num_steps - denoise
    if not spec.fixed_step:
        if evals < adaptive_lib.MIN_EVALS:
            raise ValueError(f"Sampler {sampler!r} needs num_steps >= "
                             f"{adaptive_lib.MIN_EVALS + denoise}: one Dormand-Prince step takes "
                             "7 evaluations (6 after the first)")
        return Plan(1, evals, denoise, keep)
    cost = spec.evals_per_interval(opts)
    num = -(-evals // cost) if spec.split_last else evals // cost
    if num < 1 and evals > 0:
        raise ValueError(f"Sampler {sampler!r} takes {cost} model evaluations per interval"
                         f"{' (+1 for denoise_to_zero)' if denoise else ''}: num_steps={num_steps}"
                         " leaves no interval")
    return Plan(num, evals if spec.split_last else num * cost, denoise, keep)


@dataclasses.dataclass(frozen=True)
class _Static:
    sampler: str
    model_fn: Callable
    has_params: bool
    path: Path
    target: str
    shape: tuple
    plan: Plan
    options: tuple
    # 0 or 1 (the guide or the main model alone: decided when tracing); None: any other
    # scale, a traced argument (arrays["guidance_scale"]), so a sweep over w compiles once.
    guidance_scale: Optional[float]
    guide_fn: Optional[Callable]
    guide_has_params: bool
    guide_target: Optional[str]
    interval: Optional[tuple]
    inpaint_noise: str
    callback: Optional["_StepCallback"] = None
    clip: Optional[clipping.Clip] = None
    progress: Optional[Callable] = None


class _StepCallback:
    """Host side of the ``callback`` option: ``fn(i, t, x, x0_hat)`` once per grid step.

    The program reports every denoiser evaluation's ``x0_hat`` and every step's end
    (``jax.debug.callback``, ordered); the step is handed on with the last ``x0_hat`` seen
    in it. One adapter per user function, so the compiled program is reused across calls.
    """

    _by_fn: dict = {}

    def __init__(self, fn: Callable):
        self.fn, self.x0_hat = fn, None

    @classmethod
    def of(cls, fn: Optional[Callable]) -> Optional["_StepCallback"]:
        if fn is None:
            return None
        return cls._by_fn.setdefault(fn, cls(fn))

    def evaluated(self, x0_hat) -> None:
        self.x0_hat = np.asarray(x0_hat)

    def stepped(self, i, t, x) -> None:
        self.fn(int(i), float(t), np.asarray(x), self.x0_hat)


@functools.partial(xla_options.jit, static_argnums=(0, 1))
def _run(static: _Static, conv_forward: str, eps0: Array, ts: Array, keys: Optional[Array],
         arrays: dict):
    """The compiled sampler. ``eps0`` (the starting noise) and ``keys`` are drawn outside;
    ``arrays`` holds the parameters, the conditions and the editing inputs (all traced).
    ``conv_forward`` (:func:`diffjax.conv.current_forward` when called, part of the cache key)
    says how the networks' 3x3 convolutions compute their outputs; traced as a sampling program
    (:func:`diffjax.conv.sampling`: by Winograd on CPU unless the choice says otherwise)."""
    with conv.forward(conv_forward), conv.sampling():
        return _sampling_program(static, eps0, ts, keys, arrays)


def _sampling_program(static: _Static, eps0: Array, ts: Array, keys: Optional[Array],
                      arrays: dict):
    spec, path, dtype = SAMPLERS[static.sampler], static.path, ts.dtype
    if "x_init" in arrays:
        x = guidance.noised(path, arrays["x_init"].astype(dtype), eps0, ts[0])
    else:
        x = jnp.sqrt(path.alpha(ts[0]) ** 2 + path.sigma(ts[0]) ** 2) * eps0

    cond = arrays.get("cond")
    w = static.guidance_scale if static.guidance_scale is not None else arrays["guidance_scale"]
    model = guidance.bind(static.model_fn, static.has_params, arrays.get("params"), cond)
    guide = None if static.guide_fn is None else guidance.bind(
        static.guide_fn, static.guide_has_params, arrays.get("guide_params"), cond)
    guided = guidance.guided_denoiser(path, static.target, model, cond,
                                      w=w, uncond=arrays.get("uncond"),
                                      guide=guide, guide_target=static.guide_target,
                                      interval=static.interval)

    def denoise(x, t):
        tb = jnp.full(x.shape[:1], t, x.dtype)
        x0, eps = clipping.apply(static.clip, path, *guided(x, tb), x, tb)
        if static.callback is not None:
            jax.debug.callback(static.callback.evaluated, x0, ordered=True)
        return x0, eps

    def denoise_to(x, t, s):  # a few-step model told its step's end s (.few_step)
        # A closure without a condition is not told s (it is then an instantaneous model).
        end = lambda c: few_step.with_end_time(c, s, x.shape[0], x.dtype)  # noqa: E731
        told = cond is not None or static.has_params
        cond_s, uncond, tb = end(cond) if told else None, arrays.get("uncond"), \
            jnp.full(x.shape[:1], t, x.dtype)
        model_s = guidance.bind(static.model_fn, static.has_params, arrays.get("params"), cond_s)
        x0, eps = clipping.apply(static.clip, path, *guidance.guided_denoiser(
            path, static.target, model_s, cond_s, w=w,
            uncond=None if uncond is None else end(uncond), guide=guide,
            guide_target=static.guide_target, interval=static.interval)(x, tb), x, tb)
        if static.callback is not None:
            jax.debug.callback(static.callback.evaluated, x0, ordered=True)
        return x0, eps

    constrain = lambda x, t, key: x
    if "known" in arrays:
        known = arrays["known"].astype(dtype)
        constrain = guidance.inpainting_constraint(path, known, arrays["mask"], eps0,
                                                   static.inpaint_noise == "fresh")
        x = constrain(x, ts[0], arrays.get("start_key"))

    problem = Problem(path, denoise, _reporting(constrain, static.callback, ts,
                                                static.progress), denoise_to)
    x, aux = spec.fn(problem, x, ts, keys, static.plan, **dict(static.options))
    if spec.fixed_step:
        trajectory, nfe, finished = aux, static.plan.evals, None
    else:
        trajectory, nfe, finished = None, aux.nfe, aux.success
    if static.plan.denoise:
        x = denoise(x, ts[-1])[0]
        nfe = nfe + 1
    if "known" in arrays:
        x = guidance.impose_known(x, known, arrays["mask"])
    return x, trajectory, nfe, finished


def _reporting(constrain: Callable, callback: Optional[_StepCallback], ts: Array,
               progress: Optional[Callable] = None) -> Callable:
    """``constrain`` (run after every grid step) that also reports the step to ``callback``
    (ordered, with the sample) and its index to ``progress`` (unordered, a scalar only: it
    runs on meshes of several devices, where ordered effects cannot, and moves no sample to
    the host)."""
    if callback is None and progress is None:
        return constrain
    total = int(ts.shape[0]) - 1

    def constrain_and_report(x, s, key):
        x = constrain(x, s, key)
        i = jnp.sum(ts > s) - 1                       # the step that ended at s
        if callback is not None:
            jax.debug.callback(callback.stepped, i, s, x, ordered=True)
        if progress is not None:
            jax.debug.callback(lambda i: progress(int(i), total), i)
        return x

    return constrain_and_report


class _Prepared(NamedTuple):
    """Everything :func:`sample` decides before running: checked, and the inputs of ``_run``."""

    static: _Static
    ts: Array
    eps0: Array
    keys: Optional[Array]
    arrays: dict
    fixed_step: bool
    return_info: bool


def _arrays(opts: dict, cond, uncond) -> dict:
    """The traced inputs of ``_run``: parameters, conditions and editing arrays."""
    arrays = {name: jnp.asarray(opts[name]) for name in ("x_init", "known", "mask")
              if opts[name] is not None}
    for name in ("params", "guide_params"):
        if opts[name] is not None:
            arrays[name] = opts[name]
    if cond is not None:
        arrays["cond"] = cond
    if uncond is not None:
        arrays["uncond"] = uncond
    return arrays


def _check_guide_shape(opts: dict, shape: tuple, cond) -> None:
    """The guide must predict samples of the main model's shape (abstract trace, no compute)."""
    if opts["guide_fn"] is None:
        return
    guide = guidance.bind(opts["guide_fn"], opts["guide_params"] is not None,
                          opts["guide_params"], cond)
    x = jax.ShapeDtypeStruct(shape, jnp.result_type(float))
    t = jax.ShapeDtypeStruct(shape[:1], jnp.result_type(float))
    out = jax.eval_shape(lambda x, t: guide(x, t, cond), x, t)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"guide_fn returns shape {tuple(out.shape)} for samples of shape "
                         f"{tuple(shape)}: the guide must be a model of the same data")


def _prepare(model_fn: Callable, path: Path, shape: tuple, key: Array, *, target: str,
             sampler: str, num_steps: int, **options) -> _Prepared:
    """Checks the arguments of :func:`sample` and builds the inputs of its compiled run."""
    shape = tuple(int(n) for n in shape)
    spec, opts = options_lib.check_all(path, shape, target=target, sampler=sampler,
                                       num_steps=num_steps, **options)
    cond, uncond = options_lib.conditions_of(opts, shape[0])
    _check_guide_shape(opts, shape, cond)
    t_min, t_max = options_lib.time_range(path, opts)
    denoise = options_lib.final_denoise(spec, path, opts, t_min)
    the_plan = plan(sampler, spec, opts, num_steps, denoise)

    dtype = jnp.result_type(float)
    if spec.fixed_step and not isinstance(opts["grid"], str):
        ts = jnp.asarray(opts["grid"], dtype)
        if ts.shape[0] != the_plan.num_intervals + 1:
            raise ValueError(f"the explicit grid has {ts.shape[0]} times, but {sampler!r} with "
                             f"num_steps={num_steps} takes {the_plan.num_intervals + 1}")
    elif spec.fixed_step:
        ts = time_grid(opts["grid"], path, the_plan.num_intervals, t_min, t_max, opts["rho"],
                       dtype, final_evaluated=bool(the_plan.denoise)
                       or spec.evaluates_at_t_min(opts))
    else:
        ts = jnp.asarray([t_max, t_min], dtype)
    scale = float(opts["guidance_scale"])
    static = _Static(sampler, model_fn, opts["params"] is not None, path, target, shape,
                     the_plan, tuple(sorted((k, opts[k]) for k in spec.options)),
                     scale if scale in (0.0, 1.0) else None, opts["guide_fn"],
                     opts["guide_params"] is not None, opts["guide_target"],
                     opts["guidance_interval"], opts["inpaint_noise"],
                     _StepCallback.of(opts["callback"]),
                     clipping.from_options(opts["clip_x0"], opts["dynamic_threshold"]),
                     opts["progress"])
    arrays = _arrays(opts, cond, uncond)
    if scale not in (0.0, 1.0):
        arrays["guidance_scale"] = jnp.asarray(scale, dtype)
    k_prior, k_loop, k_start = jax.random.split(key, 3)
    eps0 = jax.random.normal(k_prior, shape, dtype)
    fresh = opts["known"] is not None and opts["inpaint_noise"] == "fresh"
    keys = None
    if spec.fixed_step and (spec.stochastic(opts) or fresh) and the_plan.num_intervals > 0:
        keys = jax.random.split(k_loop, (the_plan.num_intervals, 2))
    if fresh:
        arrays["start_key"] = k_start
    return _Prepared(static, ts, eps0, keys, arrays, spec.fixed_step,
                     bool(opts["return_info"] or opts["return_trajectory"]))


def check(path: Path, shape: tuple, *, target: str, sampler: str, num_steps: int,
          **options) -> None:
    """Raises ``ValueError`` if :func:`sample` would refuse these arguments; runs no model,
    draws no noise (for validating a configuration before a run)."""
    with jax.ensure_compile_time_eval():
        shape = tuple(int(n) for n in shape)
        spec, opts = options_lib.check_all(path, shape, target=target, sampler=sampler,
                                           num_steps=num_steps, **options)
        t_min, _ = options_lib.time_range(path, opts)
        plan(sampler, spec, opts, num_steps, options_lib.final_denoise(spec, path, opts, t_min))


def sample(model_fn: Callable, path: Path, shape: tuple, key: Array, *, target: str,
           sampler: str, num_steps: int, params: Any = None, cond: Optional[dict] = None,
           uncond: Optional[dict] = None, guidance_scale: float = 1.0, **options):
    """Draws samples ``x: shape`` from the model by the named sampler; see the package docstring.

    Args:
      model_fn: with ``params``, ``f(params, x [B, ...], t [B], cond) -> prediction of
        target``; without, a closure ``f(x, t)`` (``f(x, t, cond)`` when a condition is given).
      path: a :class:`diffjax.paths.Path`.
      shape: ``(B, ...)``.
      key: PRNG key (initial noise, and the noise of stochastic samplers).
      target: the model's parameterisation, ``"eps" | "x0" | "score" | "v" | "velocity"``.
      sampler: a name in :data:`SAMPLERS`.
      num_steps: number of model evaluations (NFE budget; exact per the sampler table).
      params: the model's parameters (a pytree; traced, never baked into the program).
      cond: the condition pytree (:mod:`diffjax.conditions`), leaves ``[B, ...]``;
        ``label=`` is shorthand for ``cond={"label": label}``.
      uncond: the null condition of classifier-free guidance (default: the null of each kind,
        from ``nulls=`` or ``num_classes=``).
      guidance_scale: ``w``; 1 is the conditional (main) model, 0 the unconditional (guide).

    Returns:
      ``x: shape``; or ``(x, SampleInfo)`` with ``return_info`` / ``return_trajectory``.

    Raises:
      ValueError: wrong arguments (before any compute), or ``adaptive`` out of its budget.
    """
    with jax.ensure_compile_time_eval():  # the checks read the path's constants with float()
        prep = _prepare(model_fn, path, shape, key, target=target, sampler=sampler,
                        num_steps=num_steps, params=params, cond=cond, uncond=uncond,
                        guidance_scale=guidance_scale, **options)
    x, trajectory, nfe, finished = _run(prep.static, conv.current_forward(), prep.eps0, prep.ts,
                                        prep.keys, prep.arrays)
    if finished is None:
        finished = True
    else:
        opts = dict(prep.static.options)
        adaptive_lib.check_finished(finished, f"Sampler {sampler!r}", f"num_steps={num_steps}",
                                    opts["rtol"], opts["atol"])
    if not prep.return_info:
        return x
    return x, SampleInfo(prep.static.plan.nfe if prep.fixed_step else nfe, prep.ts, trajectory,
                         finished)
