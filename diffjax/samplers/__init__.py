"""Sampling: ``sample(model_fn, path, shape, key, *, target, sampler, num_steps, **options)``.

The model's output is turned into ``(x0_hat, eps_hat)`` once (:func:`diffjax.targets.to_x0_eps`)
and every sampler is a small function of that pair (:mod:`.base`). The whole loop is one
``lax.scan`` (``lax.while_loop`` for ``adaptive``) under ``jax.jit``: no host round trip per
step. Time runs data -> noise, so samplers integrate from ``t_max`` down to ``t_min``.

``num_steps`` is the number of model evaluations (NFE). It is spent on ``K`` grid intervals
and, with ``denoise_to_zero``, one final evaluation that returns ``x0_hat(x_{t_min}, t_min)``
(the last step "to data": exactly the DDPM / DDIM / Euler-in-``sigma`` step to ``sigma = 0``).

==============  ===================================  =========  ==  ==========================
sampler         options (defaults)                   grid       d   NFE (n = num_steps)
==============  ===================================  =========  ==  ==========================
ddpm            --                                   uniform    1   n; K = n - d
ddim            eta=0.0                              uniform    1   n; K = n - d
euler_maruyama  --                                   uniform    1   n; K = n - d
pc              snr=0.16, corrector_steps=1 (c)      uniform    1   K (1+c) + d; K = (n-d)//(1+c)
euler           variable (per path, below)           uniform    1   n; K = n - d
heun            variable                             uniform    1   n; K = ceil((n-d)/2), the
                                                                    last interval Euler if n-d
                                                                    is odd
rk4             variable                             uniform    1   4K + d; K = (n-d)//4
edm             s_churn=0, s_tmin=0, s_tmax=inf,     karras     1   as heun
                s_noise=1
dpm_solver++    order=2, lower_order_final=True,     logsnr     0   n; K = n - d
                sde=False, convention="reference"              (1 with "diffusers")
unipc           order=3, variant="bh2",              logsnr     0   n; K = n - d
                lower_order_final=True,                        (1 with "diffusers")
                convention="reference"
deis            order=3                              quadratic  0   n; K = n - d
adaptive        rtol=1e-5, atol=1e-5                 --         0   chosen by the solver, at
                                                                    most n; in SampleInfo.nfe.
                                                                    Raises if n is too few
==============  ===================================  =========  ==  ==========================

``d`` is the default of ``denoise_to_zero``, each paper's own convention (DDPM's last step,
DDIM's step to ``alpha = 1``, score-SDE's noise removal and EDM's final Euler step all return
``x0_hat``; DPM-Solver++, UniPC and DEIS stop at ``t_min``). With ``num_steps = T`` and
``t_min = 1/T`` the ``ddpm`` sampler on the ``ddpm`` path is Ho et al.'s sampler exactly.

On a discrete-time path (``ddpm``: trained only at ``t = i/T``) the grid column is replaced by
the integer spacing ``trailing`` and the model is evaluated only at training times
(:mod:`.conventions`, :mod:`.grids`): ``rk4``, ``adaptive`` and ``edm`` with churn are refused
there, and continuous grid names are rounded to ``i/T``.

``variable`` (:mod:`.ode`): ``"t"`` steps in the path's time, ``"sigma"`` in ``sigma/alpha``
(Karras et al. 2022); the default is ``"sigma"`` on the ``edm`` path, ``"t"`` elsewhere. ``convention`` (:mod:`.dpm_solver`):
``"reference"`` (Lu et al.'s / Zhao et al.'s code) or ``"diffusers"`` (final step to
``sigma = 0``, lower order below 15 steps); the defaults are measured on the exact digits
mixture by ``experiments/benchmarks/sampler_numerics.py``.

Options every sampler takes:

* ``t_min``, ``t_max``: the time range (default ``path.t_min``, ``path.t_max``). Samples
  start from ``N(0, (alpha^2 + sigma^2)(t_max) I)``.
* ``clip_x0`` (``c``) and ``dynamic_threshold`` (``p``): ``x0_hat`` clipped to ``[-c, c]``
  (Ho et al. 2020) or dynamically thresholded (Saharia et al. 2022) in the one
  ``(x0_hat, eps_hat)`` conversion, ``eps_hat`` recomputed from it (:mod:`.clipping`).
* ``denoise_to_zero``: the final ``x0_hat`` step (default per the table above, and off
  where ``sigma(t_min) = 0``, e.g. rectified flow's ``t_min = 0``: ``x_{t_min}`` is data).
* ``return_info``: return ``(x, SampleInfo)`` instead of ``x``; ``return_trajectory`` also
  fills ``SampleInfo.trajectory`` (``[K + 1, *shape]``, ``x`` at each grid time; fixed-step
  samplers only).
* Guidance: ``label`` (``[B]`` ints) makes ``model_fn`` a conditional ``f(x, t, label)``;
  ``guidance_scale`` ``w`` (default 1) and ``num_classes`` (the null label) give
  classifier-free guidance, :mod:`.guidance`.
* SDEdit: ``x_init`` (``shape``) starts from ``alpha(t_max) x_init + sigma(t_max) eps``; pass
  ``t_max`` = the editing strength.
* Inpainting: ``known`` (``shape``) and ``mask`` (broadcastable, 1 = known) re-impose the known
  region at every grid time at its noise level; ``inpaint_noise`` ``"fixed"`` (one ``eps``,
  the starting noise) or ``"fresh"`` (a new draw each step). The returned sample equals
  ``known`` where ``mask = 1``. Not with ``adaptive``.

Fixed-step samplers also take ``grid`` (:mod:`.grids`: uniform, quadratic, logsnr, karras,
leading, trailing, linspace (discrete paths), or an explicit decreasing array of ``K + 1`` times, e.g. from :func:`.tuning.optimise_grid`;
it then sets ``t_max`` and ``t_min``) and ``rho`` (karras, default 7).

Unknown samplers, grids or options, ``num_steps < 1`` and a path/target/sampler pair that
cannot work on ``[t_min, t_max]`` raise ``ValueError`` before any compute, naming the problem
and the valid choices. In particular ``alpha(t_max) = 0`` (rectified flow at ``t = 1``) leaves
``x0_hat`` undefined for ``eps``/``score`` models, and log-SNR based samplers and grids
(``dpm_solver++``, ``unipc``, ``deis``, ``edm``, ``euler_maruyama``, ``pc``, ``logsnr``,
``karras``) need ``alpha(t_max) > 0`` and ``sigma(t_min) > 0``: pass e.g. ``t_max=0.999``
there.

``adaptive`` that runs out of its budget ``n`` before ``t_min`` raises ``ValueError`` naming
``num_steps`` and the tolerances. Called under a trace (inside the caller's own ``jit``) it
cannot raise: it then returns NaN samples and ``SampleInfo.finished = False``.

Jitted runs are cached on ``(sampler, model_fn, path, target, shape, plan, options)``: reuse
the same ``model_fn`` object to avoid recompiling.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from diffjax import targets as targets_lib
from diffjax.paths import Path
from diffjax.samplers import adaptive as adaptive_lib
from diffjax.samplers import ancestral, clipping, conventions, deis, dpm_solver, edm, guidance
from diffjax.samplers import ode, sde, unipc
from diffjax.samplers.base import Plan, Problem
from diffjax.samplers.grids import GRIDS, LOGSNR_GRIDS, check_grid, time_grid

Array = jax.Array


class SampleInfo(NamedTuple):
    """What :func:`sample` returns next to ``x`` when asked (``return_info=True``).

    nfe: model evaluations used (a Python int; an int32 scalar array for ``adaptive``).
    ts: the grid ``[K + 1]`` (``[t_max, t_min]`` for ``adaptive``).
    trajectory: ``[K + 1, *shape]`` with ``return_trajectory=True``, else None.
    finished: whether the sampler reached ``t_min`` (True for fixed-step samplers; a bool
      scalar array for ``adaptive``, False when it ran out of ``num_steps``).
    """

    nfe: Union[int, Array]
    ts: Array
    trajectory: Optional[Array]
    finished: Union[bool, Array] = True


# -- options checks ---------------------------------------------------------------------
def _in_range(name, lo, hi):
    def check(opts):
        if not lo <= opts[name] <= hi:
            raise ValueError(f"option {name} must be in [{lo}, {hi}], got {opts[name]!r}")
    return check


def _check_pc(opts):
    if not opts["snr"] > 0:
        raise ValueError(f"option snr must be > 0, got {opts['snr']!r}")
    c = opts["corrector_steps"]
    if not isinstance(c, int) or c < 0:
        raise ValueError(f"option corrector_steps must be an int >= 0, got {c!r}")


def _check_edm(opts):
    for name in ("s_churn", "s_noise", "s_tmin"):
        if not opts[name] >= 0:
            raise ValueError(f"option {name} must be >= 0, got {opts[name]!r}")
    if not opts["s_tmin"] <= opts["s_tmax"]:
        raise ValueError(f"options need s_tmin <= s_tmax, got {opts['s_tmin']}, {opts['s_tmax']}")


def _check_dpm(opts):
    if opts["order"] not in (1, 2, 3):
        raise ValueError(f"option order must be one of 1, 2, 3; got {opts['order']!r}")
    _check_convention(opts)
    if opts["sde"] and opts["order"] == 3:
        raise ValueError("dpm_solver++ with sde=True has orders 1 and 2 (SDE-DPM-Solver++(2M)); "
                         "got order=3")


def _check_unipc(opts):
    if opts["order"] not in (1, 2, 3):
        raise ValueError(f"option order must be one of 1, 2, 3; got {opts['order']!r}")
    if opts["variant"] not in ("bh1", "bh2"):
        raise ValueError(f"option variant must be 'bh1' or 'bh2', got {opts['variant']!r}")
    _check_convention(opts)


def _check_convention(opts):
    if opts["convention"] not in dpm_solver.CONVENTIONS:
        raise ValueError(f"option convention must be one of {', '.join(dpm_solver.CONVENTIONS)}, "
                         f"got {opts['convention']!r}")


def _check_deis(opts):
    if opts["order"] not in (1, 2, 3):
        raise ValueError(f"option order must be one of 1, 2, 3; got {opts['order']!r}")


def _check_tolerances(opts):
    for name in ("rtol", "atol"):
        if not opts[name] > 0:
            raise ValueError(f"option {name} must be > 0, got {opts[name]!r}")


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A registry entry: the function and what :func:`sample` must know about it."""

    fn: Callable
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cost: Callable[[Mapping[str, Any]], int] = lambda opts: 1  # evaluations per interval
    split_last: bool = False          # Heun-type: an odd leftover NFE becomes a final Euler step
    finite_logsnr: bool = False       # needs alpha(t_max) > 0 and sigma(t_min) > 0
    evaluates_at_t_min: bool = False
    fixed_step: bool = True
    grid: str = "uniform"
    denoise_to_zero: Union[bool, Callable[[Mapping[str, Any]], bool]] = True
    off_grid: Callable[[Mapping[str, Any]], bool] = lambda opts: False  # evaluates between grid times
    check: Callable[[Mapping[str, Any]], None] = lambda opts: None
    stochastic: Callable[[Mapping[str, Any]], bool] = lambda opts: False


#: Final-step convention of dpm_solver++ and unipc (:func:`.dpm_solver.step_order`). Measured
#: on the exact digits mixture (logsnr grid, vp_linear / vp_cosine), FD/floor at 5-10 NFE:
#: "reference" is better in 28 of 30 cells (NFE 5, 6, 7, 8, 10; e.g. UniPC-3 at 7 NFE 6.1 vs
#: 14.7, DPM-Solver++(3M) at 8 NFE 3.8 vs 5.7 on vp_linear); "diffusers" only for 2M at 5 NFE
#: (3.2 vs 4.0 on vp_linear, 6.4 vs 6.9 on vp_cosine).
DEFAULT_CONVENTION = "reference"


def _final_step_to_zero(opts) -> bool:
    return opts["convention"] == "diffusers"


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(ancestral.ddpm, stochastic=lambda opts: True),
    "ddim": Sampler(ancestral.ddim, {"eta": 0.0}, check=_in_range("eta", 0.0, 1.0),
                    stochastic=lambda opts: opts["eta"] > 0),
    "euler_maruyama": Sampler(sde.euler_maruyama, finite_logsnr=True,
                              stochastic=lambda opts: True),
    "pc": Sampler(sde.pc, {"snr": 0.16, "corrector_steps": 1},
                  cost=lambda opts: 1 + opts["corrector_steps"], finite_logsnr=True,
                  check=_check_pc, stochastic=lambda opts: True),
    "euler": Sampler(ode.euler, {"variable": None}),
    "heun": Sampler(ode.heun, {"variable": None}, cost=lambda opts: 2, split_last=True,
                    evaluates_at_t_min=True),
    "rk4": Sampler(ode.rk4, {"variable": None}, cost=lambda opts: 4, evaluates_at_t_min=True,
                   off_grid=lambda opts: True),
    "edm": Sampler(edm.edm, {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0},
                   cost=lambda opts: 2, split_last=True, finite_logsnr=True,
                   evaluates_at_t_min=True, grid="karras", check=_check_edm,
                   stochastic=lambda opts: opts["s_churn"] > 0,
                   off_grid=lambda opts: opts["s_churn"] > 0),
    "dpm_solver++": Sampler(dpm_solver.dpm_solver_pp,
                            {"order": 2, "lower_order_final": True, "sde": False,
                             "convention": DEFAULT_CONVENTION},
                            finite_logsnr=True, grid="logsnr", denoise_to_zero=_final_step_to_zero,
                            check=_check_dpm, stochastic=lambda opts: opts["sde"]),
    "unipc": Sampler(unipc.unipc, {"order": 3, "variant": "bh2", "lower_order_final": True,
                                   "convention": DEFAULT_CONVENTION},
                     finite_logsnr=True, grid="logsnr", denoise_to_zero=_final_step_to_zero,
                     check=_check_unipc),
    "deis": Sampler(deis.deis, {"order": 3}, finite_logsnr=True, grid="quadratic",
                    denoise_to_zero=False, check=_check_deis),
    "adaptive": Sampler(adaptive_lib.adaptive, {"rtol": 1e-5, "atol": 1e-5},
                        evaluates_at_t_min=True, fixed_step=False, denoise_to_zero=False,
                        check=_check_tolerances, off_grid=lambda opts: True),
}

_COMMON = {"t_min": None, "t_max": None, "denoise_to_zero": None, "return_info": False,
           "return_trajectory": False, "label": None, "guidance_scale": None,
           "num_classes": None, "x_init": None, "known": None, "mask": None,
           "inpaint_noise": "fixed", "clip_x0": None, "dynamic_threshold": None}
_GRID_OPTIONS = ("grid", "rho")
_ARRAY_OPTIONS = ("label", "x_init", "known", "mask")


def _resolve(sampler: str, spec: Sampler, options: dict) -> dict:
    accepted = dict(_COMMON, **spec.options)
    if spec.fixed_step:
        accepted.update(grid=None, rho=7.0)  # None: the path's default (conventions.resolve)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"Sampler {sampler!r} got unknown option(s) {unknown}; it takes: "
                         f"{', '.join(sorted(accepted))}")
    opts = dict(accepted, **options)
    if spec.fixed_step and isinstance(opts["grid"], str):
        check_grid(opts["grid"], opts["rho"])
    elif spec.fixed_step and opts["grid"] is None:
        check_grid("uniform", opts["rho"])  # the grid is chosen with the path; rho is checked here
    elif spec.fixed_step:
        ts = jnp.asarray(opts["grid"])
        if ts.ndim != 1 or ts.shape[0] < 1 or not bool(jnp.all(jnp.diff(ts) < 0)):
            raise ValueError("an explicit grid must be a 1-d array of strictly decreasing times "
                             f"(t_max ... t_min), got {ts}")
        if opts["t_min"] is not None or opts["t_max"] is not None:
            raise ValueError("an explicit grid sets t_max and t_min itself; do not pass them")
        opts["t_max"], opts["t_min"] = float(ts[0]), float(ts[-1])
    elif opts["return_trajectory"]:
        raise ValueError(f"Sampler {sampler!r} does not take return_trajectory: its steps are "
                         "chosen at run time")
    spec.check(opts)
    clipping.from_options(opts["clip_x0"], opts["dynamic_threshold"])
    return opts


def _check_guidance_and_editing(sampler: str, spec: Sampler, opts: dict, shape: tuple) -> None:
    if opts["inpaint_noise"] not in ("fixed", "fresh"):
        raise ValueError(f"option inpaint_noise must be 'fixed' or 'fresh', got "
                         f"{opts['inpaint_noise']!r}")
    if opts["guidance_scale"] is not None and opts["label"] is None:
        raise ValueError("guidance_scale needs label (the classes to guide towards)")
    w = 1.0 if opts["guidance_scale"] is None else opts["guidance_scale"]
    if opts["label"] is not None:
        if tuple(jnp.shape(opts["label"])) != tuple(shape[:1]):
            raise ValueError(f"label must have shape {tuple(shape[:1])}, got "
                             f"{jnp.shape(opts['label'])}")
        if w != 1.0 and not isinstance(opts["num_classes"], int):
            raise ValueError("classifier-free guidance (guidance_scale != 1) needs num_classes, "
                             "the null label of the conditional model")
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


def _check_domain(sampler: str, spec: Sampler, path: Path, target: str, opts: dict,
                  t_min: float, t_max: float, denoise: bool) -> None:
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    alpha_max = float(path.alpha(jnp.asarray(t_max)))
    sigma_min = float(path.sigma(jnp.asarray(t_min)))
    if target in ("eps", "score") and not alpha_max > 0:
        raise ValueError(
            f"target {target!r} cannot give x0_hat = (x - sigma eps) / alpha at t_max={t_max}, "
            f"where alpha = 0 on {path.name}: pass t_max < {t_max} (e.g. t_max=0.999) or use a "
            "model with target 'velocity', 'v' or 'x0'")
    if target == "x0" and not sigma_min > 0 and (spec.evaluates_at_t_min or denoise):
        raise ValueError(
            f"target 'x0' cannot give eps_hat = (x - alpha x0) / sigma at t_min={t_min}, where "
            f"sigma = 0 on {path.name}, and {sampler!r} evaluates the model there: pass "
            "t_min > 0")
    needs = ([f"sampler {sampler!r}"] if spec.finite_logsnr else []) + \
        ([f"grid {opts['grid']!r}"] if spec.fixed_step and isinstance(opts["grid"], str)
         and opts["grid"] in LOGSNR_GRIDS else [])
    if needs and not (alpha_max > 0 and sigma_min > 0):
        raise ValueError(
            f"{' and '.join(needs)} {'needs' if len(needs) == 1 else 'need'} a finite log-SNR "
            f"on [t_min, t_max], but on {path.name} "
            f"alpha(t_max={t_max}) = {alpha_max:g} and sigma(t_min={t_min}) = {sigma_min:g}: pass "
            "t_max < 1 (e.g. 0.999) and/or t_min > 0 (e.g. 1e-3)")


def _plan(sampler: str, spec: Sampler, opts: dict, num_steps: int, denoise: int) -> Plan:
    keep = bool(opts["return_trajectory"])
    evals = num_steps - denoise
    if not spec.fixed_step:
        if evals < 7:
            raise ValueError(f"Sampler {sampler!r} needs num_steps >= {7 + denoise}: one "
                             "Dormand-Prince step takes 7 evaluations (6 after the first)")
        return Plan(1, evals, denoise, keep)
    cost = spec.cost(opts)
    num = -(-evals // cost) if spec.split_last else evals // cost
    if num < 1 and evals > 0:
        raise ValueError(f"Sampler {sampler!r} takes {cost} model evaluations per interval"
                         f"{' (+1 for denoise_to_zero)' if denoise else ''}: num_steps={num_steps}"
                         " leaves no interval")
    used = evals if spec.split_last else num * cost
    return Plan(num, used, denoise, keep)


# -- the jitted run -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Static:
    sampler: str
    model_fn: Callable
    path: Path
    target: str
    shape: tuple
    plan: Plan
    options: tuple
    guidance_scale: float
    num_classes: Optional[int]
    inpaint_noise: str
    clip: Optional[clipping.Clip] = None


@functools.partial(jax.jit, static_argnums=0)
def _run(static: _Static, eps0: Array, ts: Array, keys: Optional[Array], arrays: dict):
    """The compiled sampler. ``eps0`` (the starting noise) and ``keys`` are drawn outside."""
    spec, path, dtype = SAMPLERS[static.sampler], static.path, ts.dtype
    if "x_init" in arrays:
        x = guidance.noised(path, arrays["x_init"].astype(dtype), eps0, ts[0])
    else:
        x = jnp.sqrt(path.alpha(ts[0]) ** 2 + path.sigma(ts[0]) ** 2) * eps0

    model = static.model_fn
    if "label" in arrays:
        model = guidance.guided_model(model, arrays["label"], static.guidance_scale,
                                      static.num_classes)

    def denoise(x, t):
        t = jnp.full(x.shape[:1], t, x.dtype)
        x0, eps = targets_lib.to_x0_eps(static.target, path, model(x, t), x, t)
        return clipping.apply(static.clip, path, x0, eps, x, t)

    constrain = lambda x, t, key: x
    if "known" in arrays:
        known = arrays["known"].astype(dtype)
        constrain = guidance.inpainting_constraint(path, known, arrays["mask"], eps0,
                                                   static.inpaint_noise == "fresh")
        x = constrain(x, ts[0], arrays.get("start_key"))

    problem = Problem(path, denoise, constrain)
    x, aux = spec.fn(problem, x, ts, keys, static.plan, **dict(static.options))
    if spec.fixed_step:
        trajectory, nfe, stop = aux, static.plan.evals, None
    else:
        trajectory, nfe, stop = None, aux.nfe, (aux.success, aux.t)
    if static.plan.denoise:
        x = denoise(x, ts[-1])[0]
        nfe = nfe + 1
    if "known" in arrays:
        x = guidance.impose_known(x, known, arrays["mask"])
    return x, trajectory, nfe, stop


class _Prepared(NamedTuple):
    """Everything :func:`sample` decides before running: checked, and the inputs of ``_run``."""

    static: _Static
    ts: Array
    eps0: Array
    keys: Optional[Array]
    arrays: dict
    fixed_step: bool
    return_info: bool


def _prepare(model_fn: Callable, path: Path, shape: tuple, key: Array, *, target: str,
             sampler: str, num_steps: int, **options) -> _Prepared:
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1 (the number of model evaluations), "
                         f"got {num_steps!r}")
    targets_lib.check_target(target)
    spec = SAMPLERS[sampler]
    shape = tuple(int(n) for n in shape)
    opts = _resolve(sampler, spec, options)
    _check_guidance_and_editing(sampler, spec, opts, shape)
    t_min = float(path.t_min if opts["t_min"] is None else opts["t_min"])
    t_max = float(path.t_max if opts["t_max"] is None else opts["t_max"])
    opts = conventions.resolve(sampler, path, opts, t_min, t_max, default_grid=spec.grid,
                               fixed_step=spec.fixed_step, off_grid=spec.off_grid(opts))
    denoise = opts["denoise_to_zero"]
    if denoise is None:
        default = spec.denoise_to_zero
        default = default(opts) if callable(default) else default
        denoise = default and float(path.sigma(jnp.asarray(t_min))) > 0
    _check_domain(sampler, spec, path, target, opts, t_min, t_max, bool(denoise))
    plan = _plan(sampler, spec, opts, num_steps, int(bool(denoise)))

    dtype = jnp.result_type(float)
    if spec.fixed_step and not isinstance(opts["grid"], str):
        ts = jnp.asarray(opts["grid"], dtype)
        if ts.shape[0] != plan.num_intervals + 1:
            raise ValueError(f"the explicit grid has {ts.shape[0]} times, but {sampler!r} with "
                             f"num_steps={num_steps} takes {plan.num_intervals + 1}")
    elif spec.fixed_step:
        ts = time_grid(opts["grid"], path, plan.num_intervals, t_min, t_max, opts["rho"], dtype,
                       final_evaluated=bool(plan.denoise) or spec.evaluates_at_t_min)
    else:
        ts = jnp.asarray([t_max, t_min], dtype)
    arrays = {name: jnp.asarray(opts[name]) for name in _ARRAY_OPTIONS if opts[name] is not None}
    w = 1.0 if opts["guidance_scale"] is None else float(opts["guidance_scale"])
    static = _Static(sampler, model_fn, path, target, shape, plan,
                     tuple(sorted((k, opts[k]) for k in spec.options)), w,
                     opts["num_classes"], opts["inpaint_noise"],
                     clipping.from_options(opts["clip_x0"], opts["dynamic_threshold"]))
    k_prior, k_loop, k_start = jax.random.split(key, 3)
    eps0 = jax.random.normal(k_prior, shape, dtype)
    fresh = opts["known"] is not None and opts["inpaint_noise"] == "fresh"
    keys = None
    if spec.fixed_step and (spec.stochastic(opts) or fresh) and plan.num_intervals > 0:
        keys = jax.random.split(k_loop, (plan.num_intervals, 2))
    if fresh:
        arrays["start_key"] = k_start
    return _Prepared(static, ts, eps0, keys, arrays, spec.fixed_step,
                     bool(opts["return_info"] or opts["return_trajectory"]))


def sample(model_fn: Callable, path: Path, shape: tuple, key: Array, *, target: str,
           sampler: str, num_steps: int, **options):
    """Draws samples ``x: shape`` from the model by the named sampler; see the module docstring.

    Args:
      model_fn: ``f(x [B, ...], t [B]) -> prediction of target`` (``f(x, t, label)`` when
        ``label`` is given).
      path: a :class:`diffjax.paths.Path`.
      shape: ``(B, ...)``.
      key: PRNG key (initial noise, and the noise of stochastic samplers).
      target: the model's parameterisation, ``"eps" | "x0" | "score" | "v" | "velocity"``.
      sampler: a name in :data:`SAMPLERS`.
      num_steps: number of model evaluations (NFE budget; exact per the table above).

    Returns:
      ``x: shape``; or ``(x, SampleInfo)`` with ``return_info`` / ``return_trajectory``.

    Raises:
      ValueError: wrong arguments (before any compute), or ``adaptive`` out of its budget.
    """
    with jax.ensure_compile_time_eval():  # the checks read the path's constants with float()
        prep = _prepare(model_fn, path, shape, key, target=target, sampler=sampler,
                        num_steps=num_steps, **options)
    x, trajectory, nfe, stop = _run(prep.static, prep.eps0, prep.ts, prep.keys, prep.arrays)
    finished = True
    if stop is not None:
        finished, t_reached = stop
        opts = dict(prep.static.options)
        adaptive_lib.check_finished(finished, t_reached, f"Sampler {sampler!r}",
                                    f"num_steps={num_steps}", opts["rtol"], opts["atol"])
    if not prep.return_info:
        return x
    return x, SampleInfo(prep.static.plan.nfe if prep.fixed_step else nfe, prep.ts, trajectory,
                         finished)


__all__ = ["sample", "SAMPLERS", "GRIDS", "Sampler", "SampleInfo", "time_grid"]
