"""The frozen teacher of a distillation task: another run's EMA model, or the exact mixture.

``config.distill.teacher`` names it (DESIGN §7): a workdir, read by reference through
:mod:`diffjax.training.frozen`, or ``"analytic:<mixture>"`` (``analytic:digits``,
``analytic:ring``) for :class:`diffjax.analytic.GaussianMixture`, the perfect teacher. Either
way a task sees one function, :meth:`Teacher.x0_hat`, the teacher's posterior-mean estimate
under the *student's* path; the probability-flow ODE, DDIM steps and velocities follow from it
(:mod:`diffjax.distill.ode`).

A conditional teacher can be read under classifier-free guidance
(``config.distill.guidance_scale = w``, optionally only inside
``config.distill.guidance_interval = (lo, hi)`` in ``sigma/alpha``): its ``x0_hat`` is then
``x0_u + w (x0_c - x0_u)`` with ``x0_u`` the teacher under the null condition (Ho & Salimans
2022), so a student learns the guided field and samples it with ``w = 1``, one model call per
step instead of guidance's doubled batch (the fixed-``w`` case of Meng et al. 2023, "On
distillation of guided diffusion models"). A row whose condition is already the null one
(the student's condition dropout) gets ``x0_u`` back, the unguided teacher.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections

from diffjax import analytic, conditions, targets
from diffjax.distill import settings
from diffjax.paths import Path
from diffjax.training import frozen, tasks
from diffjax.training.setup import Setup

Array = jax.Array
TEACHER_KEY = "distill.teacher"
INIT_KEY = "distill.init_from"
SCHEME = "analytic"

# name -> mixture constructor; ``analytic:<name>`` in config.distill.teacher.
MIXTURES: dict[str, Callable[[], analytic.GaussianMixture]] = {
    "digits": analytic.GaussianMixture.digits,
    "ring": analytic.GaussianMixture.ring,
}


@dataclasses.dataclass(frozen=True)
class AnalyticReference(frozen.Reference):
    """A :class:`frozen.Reference` whose model is an exact mixture (its params are ``{}``)."""

    mixture: Optional[analytic.GaussianMixture] = None


def load_analytic(key: str, name: str) -> AnalyticReference:
    """``config.<key> = "analytic:<mixture>"`` -> the exact mixture as a reference.

    Raises:
      ValueError: unknown mixture name, naming the valid ones.
    """
    mixture_name = name.split(":", 1)[1]
    if mixture_name not in MIXTURES:
        raise ValueError(f"config.{key}={name!r}: unknown mixture {mixture_name!r}; valid "
                         f"choices: {', '.join(f'{SCHEME}:{m}' for m in MIXTURES)}")
    mixture = MIXTURES[mixture_name]()
    h = hashlib.sha256()
    for a in (mixture.weights, mixture.means, mixture.covs):
        h.update(a.tobytes())
    identity = {"workdir": name, "step": 0, "config_sha256": "", "params_sha256": h.hexdigest()}
    return AnalyticReference(key, None, {}, identity, mixture)


frozen.register_scheme(SCHEME, load_analytic)


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The teacher read under the student's path: ``x0_hat(params, x, t, cond)``.

    ``params`` is the step's ``frozen[TEACHER_KEY]`` (traced, never a constant of the step);
    ``x: [B, ...]``, ``t: [B]``.
    """

    x0_fn: Callable[[Any, Array, Array, Mapping[str, Array]], Array]
    path: Path
    guidance_scale: float = 1.0
    guidance_interval: Optional[tuple[float, float]] = None
    null: Optional[Callable[[Mapping[str, Array]], dict]] = None   # cond -> its null

    def x0_hat(self, params: Any, x: Array, t: Array, cond: Optional[Mapping] = None) -> Array:
        cond = dict(cond or {})
        if self.guidance_scale == 1.0 or not cond:
            return self.x0_fn(params, x, t, cond)
        inside = jnp.ones(t.shape, bool)
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            level = jnp.exp(-0.5 * self.path.logsnr(t))     # sigma / alpha, per row
            inside = (lo <= level) & (level <= hi)

        def guided():   # one call on [x; x] under (cond, null), as the samplers guide
            both = self.x0_fn(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                              conditions.concat(cond, self.null(cond)))
            x0_c, x0_u = jnp.split(both, 2)
            w = jnp.where(inside, self.guidance_scale, 1.0).astype(x.dtype)
            return x0_u + w.reshape((-1,) + (1,) * (x.ndim - 1)) * (x0_c - x0_u)

        if self.guidance_interval is None:
            return guided()
        # no row inside the interval (a coupling solve's whole batch shares t): the
        # conditional call alone, not the doubled batch (a lax.cond runs one branch)
        return jax.lax.cond(jnp.any(inside), guided,
                            lambda: self.x0_fn(params, x, t, cond).astype(x.dtype))


def guidance_of(config: ml_collections.ConfigDict) -> tuple[float, Optional[tuple]]:
    """``(config.distill.guidance_scale, config.distill.guidance_interval)``, checked.

    Raises:
      ValueError: a scale that is not a number, an interval that is not ``(lo, hi)`` with
        ``0 <= lo <= hi``, or an interval without guidance.
    """
    w, interval = settings.get(config, "guidance_scale"), settings.get(config, "guidance_interval")
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise ValueError(f"config.distill.guidance_scale={w!r}: a number (1.0: the teacher "
                         "unguided)")
    if interval is None:
        return float(w), None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        lo = hi = -1.0
    if not 0.0 <= lo <= hi:
        raise ValueError(f"config.distill.guidance_interval={interval!r}: (lo, hi) in the "
                         "path's sigma/alpha with 0 <= lo <= hi, or None (guide everywhere)")
    if float(w) == 1.0:
        raise ValueError(f"config.distill.guidance_interval={interval!r} needs guidance: set "
                         "config.distill.guidance_scale != 1")
    return float(w), (lo, hi)


def teacher_key(config: ml_collections.ConfigDict) -> dict[str, str]:
    """``TaskSpec.references`` of a task that needs a teacher.

    Raises:
      ValueError: ``config.distill.teacher`` unset.
    """
    teacher = config.get("distill", {}).get("teacher")
    guidance_of(config)   # (its errors before anything is read)
    if not teacher:
        raise ValueError(f"config.task={config.task!r} needs config.distill.teacher: a trained "
                         "run's workdir or 'analytic:<mixture>' (choices: "
                         f"{', '.join(f'{SCHEME}:{m}' for m in MIXTURES)})")
    return {TEACHER_KEY: str(teacher)}


def teacher_and_start_keys(config: ml_collections.ConfigDict) -> dict[str, str]:
    """:func:`teacher_key` plus ``config.distill.init_from`` when set: the references of a
    student that starts from a run (:func:`start_from_teacher`)."""
    keys = teacher_key(config)
    start = settings.get(config, "init_from")
    if start and str(start).startswith(SCHEME + ":"):
        raise ValueError(f"config.distill.init_from={start!r} is an exact mixture, which has no "
                         "network: name a run of the student's")
    return {**keys, INIT_KEY: str(start)} if start else keys


def optional_teacher_key(config: ml_collections.ConfigDict) -> dict[str, str]:
    """As :func:`teacher_key`, ``{}`` when no teacher is set (a method that can train alone)."""
    teacher = config.get("distill", {}).get("teacher")
    guidance_of(config)
    return {TEACHER_KEY: str(teacher)} if teacher else {}


def from_reference(setup: Setup, reference: frozen.Reference) -> Teacher:
    """The teacher of ``reference`` read under ``setup``'s path.

    A run teacher must share the student's data shape and path (its ``x0_hat`` is a
    statement about that path's marginals); the exact mixture works under any path.

    Raises:
      ValueError: the teacher's data shape or path differs from the student's.
    """
    path = setup.denoiser.path
    if isinstance(reference, AnalyticReference):
        mixture = reference.mixture
        if tuple(mixture.event_shape) != tuple(setup.data_info.shape):
            raise ValueError(f"config.distill.teacher={reference.identity['workdir']!r} has data "
                             f"shape {mixture.event_shape}, the student's data has "
                             f"{tuple(setup.data_info.shape)}")

        def x0_mixture(params, x, t, cond):
            del params
            label = cond.get("label")
            return mixture.x0_hat(path, x, t, label).astype(x.dtype)

        return _guided(setup, Teacher(x0_mixture, path), ("label",), setup.nulls)
    tsetup = reference.setup
    where = reference.identity["workdir"]
    if tuple(tsetup.data_info.shape) != tuple(setup.data_info.shape):
        raise ValueError(f"config.distill.teacher={where} was trained on data of shape "
                         f"{tuple(tsetup.data_info.shape)}; the student's is "
                         f"{tuple(setup.data_info.shape)}")
    if repr(tsetup.denoiser.path) != repr(path):
        raise ValueError(f"config.distill.teacher={where} was trained on path "
                         f"{tsetup.denoiser.path!r}; the student's is {path!r}: use the same "
                         "config.path")
    den = tsetup.denoiser
    kinds = tsetup.cond_kinds
    missing = [k for k in kinds if k not in setup.cond_kinds]
    if missing:
        raise ValueError(f"config.distill.teacher={where} reads condition(s) {missing} that the "
                         f"student's network does not ({list(setup.cond_kinds)}): give the "
                         "student the teacher's conditioning (e.g. the same config.model."
                         "text_encoder or class_conditional)")

    def x0_run(params, x, t, cond):
        out = den.apply({"params": params}, x, t, {k: cond[k] for k in kinds if k in cond})
        return targets.to_x0_eps(den.target, path, out, x, t)[0]

    guided = _guided(setup, Teacher(x0_run, path), kinds, tsetup.nulls)
    theirs = (tsetup.config.get("distill") if tsetup.config is not None else None) or {}
    own = theirs.get("guidance_scale", 1.0) if theirs.get("teacher") else 1.0
    if guided.guidance_scale != 1.0 and own != 1.0:
        raise ValueError(f"config.distill.teacher={where} is a student of a teacher guided at "
                         f"{own} already; guiding it again at config.distill.guidance_scale="
                         f"{guided.guidance_scale} compounds the two: set "
                         "config.distill.guidance_scale=1 (e.g. for round 2 of progressive "
                         "distillation)")
    return guided


def _guided(setup: Setup, teacher: Teacher, kinds, nulls: conditions.Nulls) -> Teacher:
    """``teacher`` under the student's ``config.distill`` guidance (see the module).

    Raises:
      ValueError: guidance of a teacher that reads no condition the student has.
    """
    w, interval = guidance_of(setup.config)
    if w == 1.0:
        return teacher
    kinds = [k for k in kinds if k in setup.cond_kinds]
    if not kinds:
        raise ValueError(f"config.distill.guidance_scale={w}: guidance needs a conditional "
                         "teacher and student; the teacher reads none of the student's "
                         f"conditions {list(setup.cond_kinds)}")

    def null(cond):   # the teacher's kinds nulled; others (e.g. a student's "r") as given
        return {**cond, **nulls.null({k: v for k, v in cond.items() if k in kinds})}

    def x0_fn(params, x, t, cond):   # both halves read only the teacher's kinds
        return teacher.x0_fn(params, x, t, {k: v for k, v in cond.items() if k in kinds})

    return Teacher(x0_fn, teacher.path, w, interval, null)


def teacher_of(setup: Setup, references: Mapping[str, frozen.Reference]) -> Teacher:
    return from_reference(setup, references[TEACHER_KEY])


def start_from_teacher(state: Any, references: Mapping[str, frozen.Reference]) -> Any:
    """``TaskSpec.initialize`` of a student that starts as its teacher (progressive
    distillation's rounds, Salimans & Ho 2022; reflow's k-rectified flow from the (k-1)-th,
    Liu et al. 2022): the teacher run's parameters, when they have the student's tree and
    shapes; a fresh state otherwise (the exact mixture, another network).
    ``config.distill.init_from = DIR`` starts from that run instead (its network must be the
    student's); ``config.distill.init_from_teacher = False`` keeps the fresh state
    (:func:`_no_init`).

    Raises:
      ValueError: ``config.distill.init_from`` names a run of another network.
    """
    explicit = INIT_KEY in references
    ref = references[INIT_KEY if explicit else TEACHER_KEY]
    if isinstance(ref, AnalyticReference):
        return state
    same = (jax.tree_util.tree_structure(ref.params) == jax.tree_util.tree_structure(state.params)
            and all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(ref.params),
                                                       jax.tree_util.tree_leaves(state.params))))
    if not same:
        if explicit:
            raise ValueError(f"config.distill.init_from={ref.identity['workdir']} has another "
                             "network (parameter tree or shapes) than the student: name a run "
                             "of the student's config.model")
        if jax.process_index() == 0:
            print(f"the teacher {ref.identity['workdir']} has another network than the student: "
                  "the student starts from its seed", flush=True)
        return state
    # Copies: the run's own buffers are also the step's frozen argument, and the step
    # donates the state's.
    params = jax.tree_util.tree_map(lambda p, s: jax.device_put(jnp.copy(p), s.sharding),
                                    ref.params, state.params)
    return state.replace(params=params, ema_params=jax.tree_util.tree_map(jnp.copy, params))


def _no_init(config: ml_collections.ConfigDict, spec):
    """The :data:`tasks.WRAPPERS` entry of ``config.distill.init_from_teacher``."""
    value = settings.get(config, "init_from_teacher")
    if not isinstance(value, bool):
        raise ValueError(f"config.distill.init_from_teacher={value!r}: must be True or False")
    base = tasks.TASKS.get(str(config.get("task", "denoise")))
    start = settings.get(config, "init_from")
    if start and (base is None or base.initialize is not start_from_teacher):
        starts = ", ".join(k for k, v in tasks.TASKS.items()
                           if v.initialize is start_from_teacher)
        raise ValueError(f"config.distill.init_from={start!r}: config.task="
                         f"{config.get('task', 'denoise')!r} does not start from a run; the "
                         f"tasks that do: {starts}")
    if start and not value:
        raise ValueError(f"config.distill.init_from={start!r} with "
                         "config.distill.init_from_teacher=False: unset one of them")
    if value or base is None or base.initialize is not start_from_teacher:
        return spec   # (spec may be wrapped already, e.g. on latents: its start is the base's)
    return dataclasses.replace(spec, initialize=lambda state, references: state)


tasks.WRAPPERS.append(_no_init)


def frozen_params(frozen_tree: Any) -> Any:
    """The teacher's parameters in the step's ``frozen`` argument."""
    return (frozen_tree or {}).get(TEACHER_KEY, {})
