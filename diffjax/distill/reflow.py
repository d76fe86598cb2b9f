"""Reflow (Liu et al. 2022, "Flow straight and fast"): retrain a flow on the (noise, sample)
couplings of a teacher's ODE, which straightens its trajectories.

:func:`couplings` draws ``n`` noises from a seed and solves the teacher's probability-flow ODE
from each (RK4), so the coupling set is a pure function of (teacher, seed, n, steps); a
solved set is kept in ``config.distill.couplings_cache`` under a digest of exactly those
(:func:`cached`), so every student of one teacher (the reflow run, then each k-step
distillation of it) solves the teacher's ODE once. The
``reflow`` task then minimises the recipe's own denoising objective with ``(x0, eps)`` a
coupled pair instead of independent draws; on the ``rectified_flow`` path with a velocity
target that is Liu et al.'s ``|(eps - x0) - v(x_t, t)|^2``. :func:`straightness` is their
``S = int_0^1 E|(x_1 - x_0) - dx_t/dt|^2 dt`` along a model's ODE. As in Liu et al.'s
k-rectified flows, the student starts as its teacher when the teacher is a run with the
student's network (``config.distill.init_from_teacher``, default True): reflow then only has
to straighten a field that already transports noise to data; ``config.distill.init_from``
starts it from another run instead.

A conditional student (class labels, text) gets conditional couplings: each noise is
paired with a condition drawn from the training data (:func:`coupling_conditions`) and
solved under it, by the teacher read under ``config.distill.guidance_scale`` when set
(:mod:`diffjax.distill.teacher`), so the student learns the guided transport and samples
without guidance, one network call a step.

``config.distill.reflow_steps = k >= 1`` is Liu et al.'s k-step distillation: the same loss
on the same couplings, with ``t`` drawn from the ``k`` times at which the ``k``-step Euler
sampler evaluates the model (``uniform`` grid over the path's ``[t_min, t_max]``) instead of
the recipe's continuous distribution. On straight couplings the Euler step from ``x_t`` at
such a time lands on the next grid point of the same line, so the student learns exactly
the jumps its sampler takes; a student fine-tuned this way from a reflowed run
(``init_from``) serves one step count.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
import zipfile
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import atomic, xla_options
from diffjax.distill import ode, settings
from diffjax.distill import teacher as teacher_lib
from diffjax.paths import Path
from diffjax.samplers.grids import time_grid
from diffjax.training import frozen, tasks
from diffjax.training.setup import Setup

Array = jax.Array


@functools.partial(xla_options.jit, static_argnums=(0, 1, 5, 6))
def _solve(path: Path, x0_fn, params, eps: Array, cond, num_steps: int, std: float) -> Array:
    """The teacher ODE's samples from ``std * eps`` at ``t_max`` under ``cond``; ``params``
    and ``cond`` traced."""
    return ode.solve_to_data(path, lambda x, t: x0_fn(params, x, t, cond), std * eps,
                             jnp.full(eps.shape[:1], path.t_max, eps.dtype), num_steps)


def couplings(x0_fn: Callable[..., Array], path: Path, shape: tuple[int, ...],
              seed: int, num_steps: int, batch: int = 1024,
              params: Any = None, cond: Optional[dict] = None,
              noise: Optional[Array] = None,
              progress: Optional[Callable[[int, int], None]] = None) -> tuple[Array, Array]:
    """``(eps, x0)``, each ``[n, ...]`` for ``shape = (n, ...)``: ``eps ~ N(0, I)`` drawn from
    ``seed``, and ``x0`` the teacher ODE's sample from the prior point ``prior_std * eps`` at
    ``t = 1`` (RK4, ``num_steps`` steps; in chunks of ``batch`` rows).

    ``x0_fn(x, t)``, or with ``params`` ``x0_fn(params, x, t)``: the parameters are then a
    traced argument of the compiled solve (DESIGN §6), never its constants, and another set
    of them (another checkpoint of the same network) reuses the compiled program. With
    ``cond`` (a condition pytree of ``[n, ...]`` arrays, one row per coupling) the teacher
    is ``x0_fn(params, x, t, cond)`` and coupling ``i`` is solved under row ``i``. ``noise``
    (``shape``) replaces the seed's draw. ``progress(done, n)`` is called after each chunk.

    Raises:
      ValueError: ``n``, ``num_steps`` or ``batch`` below 1, ``cond`` rows that are not ``n``, or
        ``noise`` not of ``shape``.
    """
    n = shape[0]
    if n < 1 or num_steps < 1 or batch < 1:
        raise ValueError(f"reflow couplings need n, num_steps and batch (config.distill."
                         f"num_couplings, ode_steps, coupling_batch) >= 1, got {n}, "
                         f"{num_steps}, {batch}")
    if cond and any(jnp.shape(v)[0] != n for v in cond.values()):
        raise ValueError(f"reflow couplings: {n} couplings but conditions of rows "
                         f"{ {k: jnp.shape(v)[0] for k, v in cond.items()} }")
    fn = _Teacher(x0_fn, params is not None, bool(cond))
    params = {} if params is None else params
    cond = dict(cond or {})
    if noise is not None and tuple(jnp.shape(noise)) != tuple(shape):
        raise ValueError(f"reflow couplings: noise of shape {jnp.shape(noise)}, not {shape}")
    eps = jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32) if noise is None \
        else jnp.asarray(noise, jnp.float32)
    std = path.prior_std()  # a Python float: computed outside the trace
    chunks = []
    for i in range(0, n, batch):
        chunks.append(_solve(path, fn, params, eps[i:i + batch],
                             {k: jnp.asarray(v[i:i + batch]) for k, v in cond.items()},
                             num_steps, std))
        if progress is not None:
            progress(min(i + batch, n), n)
    return eps, jnp.concatenate(chunks)


@dataclasses.dataclass(frozen=True)
class _Teacher:
    """``x0_fn`` called as ``(params, x, t, cond)`` whatever it takes; equal for an equal
    ``x0_fn``, so a later set of couplings reuses the compiled solve."""

    x0_fn: Callable[..., Array]
    has_params: bool
    has_cond: bool

    def __call__(self, params, x, t, cond):
        args = ((params,) if self.has_params else ()) + (x, t)
        return self.x0_fn(*args, cond) if self.has_cond else self.x0_fn(*args)


def coupling_conditions(setup: Setup, n: int, seed: int) -> dict[str, np.ndarray]:
    """The condition of each of ``n`` couplings of a conditional student (``{}`` for an
    unconditional one): class labels drawn uniformly, a text model's conditions those of
    training captions drawn uniformly from the training split (its ``data_table``), both
    from ``seed``, so the set is as reproducible as the noise.

    Raises:
      ValueError: a condition kind couplings cannot draw (e.g. ``control``).
    """
    kinds = tuple(setup.cond_kinds)
    if not kinds:
        return {}
    rng = np.random.default_rng([seed, 1])   # not the noise's stream
    cond: dict[str, np.ndarray] = {}
    if "label" in kinds:
        cond["label"] = rng.integers(0, setup.data_info.num_classes, n).astype(np.int32)
    if setup.text is not None:
        data = setup.config.data
        table = setup.text.data_table(data.dataset, "train", data.get("data_dir"))
        records = [table.lookup(int(i)) for i in rng.integers(0, len(table.rows), n)]
        for k in setup.text.keys:
            cond[k] = np.stack([r[k] for r in records])
    missing = [k for k in kinds if k not in cond]
    if missing:
        raise ValueError(f"config.task='reflow' draws the couplings' conditions from the "
                         f"training data's labels and captions; it cannot draw {missing} "
                         f"(the network reads {list(kinds)})")
    return cond


def straightness(velocity_fn: Callable[[Array, Array], Array], x1: Array,
                 num_steps: int) -> Array:
    """Liu et al.'s straightness of the ODE ``dx/dt = velocity_fn(x, t)`` from ``x1`` at
    ``t = 1`` to ``t = 0`` (Euler, ``num_steps`` evaluations): mean over rows and over the
    grid of ``|(x_1 - x_0) - v|^2 / dim``. 0 for straight trajectories. ``x1: [B, ...]``."""
    dt = 1.0 / num_steps
    ts = 1.0 - dt * jnp.arange(num_steps)

    def step(x, t):
        v = velocity_fn(x, jnp.full(x.shape[:1], t, x.dtype))
        return x - dt * v, v

    x0, vs = jax.lax.scan(step, x1, ts)
    chord = x1 - x0                                   # (x_1 - x_0) / (1 - 0)
    return jnp.mean((chord[None] - vs) ** 2)


COUPLINGS_KEY = "distill.couplings"
CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Reflow:
    """The denoising objective on coupled pairs: rows drawn from the coupling set.

    The couplings reach the step as data, ``frozen[COUPLINGS_KEY] = {"eps", "x0"}`` plus, for
    a conditional student, ``"cond"`` (each pair's condition; the batch's is then unused)
    (traced arguments, :attr:`frozen_arrays`), never as constants of the compiled step."""

    setup: Setup
    frozen_arrays: dict
    times: Optional[tuple[float, ...]] = None   # k-step distillation's grid; None: reflow

    def sample_t(self, key: Array, n: int) -> Array:
        """``[n]`` training times: the recipe's, or uniform over :attr:`times`."""
        if self.times is None:
            return self.setup.objective.sample_t(key, n)
        times = jnp.asarray(self.times, jnp.float32)
        return times[jax.random.randint(key, (n,), 0, len(self.times))]

    def loss(self, params, batch, key, frozen, rows=None):
        pairs = frozen[COUPLINGS_KEY]  # the teacher was read once, into the couplings
        b = batch["x"].shape[0]
        total = b if rows is None else rows.total
        take = (lambda a: a) if rows is None else rows.take
        k_idx, k_t, k_drop = jax.random.split(key, 3)
        idx = take(jax.random.randint(k_idx, (total,), 0, pairs["eps"].shape[0]))
        t = take(self.sample_t(k_t, total))
        # each pair's own condition (the teacher's sample was solved under it); no dropout:
        # a guided pair is not a sample of the null condition
        cond = {k: v[idx] for k, v in pairs["cond"].items()} if pairs.get("cond") else \
            tasks.condition(self.setup, batch)

        def model(x, s, c):
            return self.setup.denoiser.apply({"params": params}, x, s, c, train=True,
                                             rngs={"dropout": k_drop})

        per = self.setup.objective.per_example(model, pairs["x0"][idx], t, pairs["eps"][idx],
                                               cond)
        return jnp.mean(per), {}


def _check_steps(k, zero: bool = True) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < (0 if zero else 1):
        raise ValueError(f"config.distill.reflow_steps={k!r}: an int, 0 (reflow at the recipe's "
                         "times) or k >= 1 (k-step distillation at the k-step Euler grid)")


def euler_times(path: Path, k: int) -> tuple[float, ...]:
    """The ``k`` times at which ``k`` Euler steps on the ``uniform`` grid of ``path``'s
    ``[t_min, t_max]`` evaluate the model (the sampler's default grid), from ``t_max`` down.

    Raises:
      ValueError: ``k`` not an int >= 1.
    """
    _check_steps(k, zero=False)
    ts = time_grid("uniform", path, k, float(path.t_min), float(path.t_max))
    return tuple(float(t) for t in ts[:-1])


def build(setup: Setup, references) -> Reflow:
    """Generates the couplings once (the teacher's ODE), before the first step."""
    config = setup.config
    k = settings.get(config, "reflow_steps")
    _check_steps(k)
    times = euler_times(setup.denoiser.path, k) if k else None
    teacher = teacher_lib.teacher_of(setup, references)
    reference = references[teacher_lib.TEACHER_KEY]
    shape = (int(settings.get(config, "num_couplings")),) + tuple(setup.data_info.shape)
    seed, steps = int(settings.get(config, "coupling_seed")), int(settings.get(config, "ode_steps"))
    cond = coupling_conditions(setup, shape[0], seed)
    t0 = time.perf_counter()

    def report(done, n):
        if jax.process_index() == 0:
            print(f"reflow couplings: {done}/{n} teacher ODE solves "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)

    solve = lambda: couplings(  # noqa: E731
        teacher.x0_hat, setup.denoiser.path, shape, seed, steps,
        batch=int(settings.get(config, "coupling_batch")), params=reference.params,
        cond=cond or None, progress=report)
    digest = reference.identity.get("params_sha256")
    spec = {"teacher": [digest, reference.identity.get("config_sha256")],
            "path": repr(setup.denoiser.path), "shape": list(shape), "seed": seed,
            "ode_steps": steps}
    if cond:   # (an unconditional set keeps its old name)
        spec.update(cond_sha256=frozen.params_digest(cond),
                    guidance=[teacher.guidance_scale, teacher.guidance_interval])
    eps, x0 = cached(settings.get(config, "couplings_cache") if digest else "off", spec, solve)
    pairs = {"eps": eps, "x0": x0}
    if cond:
        pairs["cond"] = {k: jnp.asarray(v) for k, v in cond.items()}
    return Reflow(setup, {COUPLINGS_KEY: pairs}, times)


def cached(folder: Optional[str], spec: dict, solve: Callable[[], tuple]) -> tuple:
    """``solve()``'s ``(eps, x0)``, kept in ``folder`` under a name that digests ``spec`` (what
    determines the couplings) and the backend; read back by any later run with the same spec
    instead of solving the teacher's ODE again. Written to a temporary file and renamed, so
    an interrupted or concurrent write leaves no partial set; an unreadable file is solved
    and written again, and a failed write (a full disk) only logs a warning. ``folder`` None
    or ``"off"``: ``solve()``."""
    if not folder or str(folder) == "off":
        return solve()
    blob = json.dumps({"format": CACHE_FORMAT, "backend": jax.default_backend(), **spec},
                      sort_keys=True)
    folder = os.path.expanduser(str(folder))
    name = os.path.join(folder, f"couplings_{hashlib.sha256(blob.encode()).hexdigest()[:20]}.npz")
    try:
        with np.load(name) as stored:
            if str(stored["spec"]) == blob:
                return jnp.asarray(stored["eps"]), jnp.asarray(stored["x0"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass   # absent or unreadable: solve it
    eps, x0 = solve()
    try:
        os.makedirs(folder, exist_ok=True)
        atomic.write_npz(name, eps=np.asarray(eps), x0=np.asarray(x0), spec=np.asarray(blob))
    except OSError as e:   # a full or read-only disk costs the next run a solve, not this run
        logging.warning("reflow couplings not cached in %s: %s", folder, e)
    return eps, x0


def references(config) -> dict[str, str]:
    """The teacher (and ``init_from``); checks ``reflow_steps`` before anything is read."""
    _check_steps(settings.get(config, "reflow_steps"))
    return teacher_lib.teacher_and_start_keys(config)


tasks.register("reflow", tasks.TaskSpec(build, references,
                                        teacher_lib.start_from_teacher))
